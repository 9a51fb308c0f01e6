// Forward routine registration to Rust; the call also keeps the linker from
// dropping the static library.
void R_init_asyncjobs_extendr(void *dll);
void register_extendr_panic_hook(void);

void R_init_asyncjobs(void *dll) {
  register_extendr_panic_hook();
  R_init_asyncjobs_extendr(dll);
}
