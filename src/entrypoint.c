// The package's entry point: install extendr's panic hook, then register
// every native routine (src/r/register.rs). The call also keeps the linker
// from dropping the static library.
void R_init_asyncjobs_rust(void *dll);
void register_extendr_panic_hook(void);

void R_init_asyncjobs(void *dll) {
  register_extendr_panic_hook();
  R_init_asyncjobs_rust(dll);
}
