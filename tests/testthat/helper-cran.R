# The slow, process-heavy suites call skip_on_cran(): they skip under R CMD
# check (unless NOT_CRAN=true) and run everywhere else, including a test file
# run by hand, tools/test.sh and CI.
if (!nzchar(Sys.getenv("NOT_CRAN")) && !nzchar(Sys.getenv("_R_CHECK_PACKAGE_NAME_"))) {
  Sys.setenv(NOT_CRAN = "true")
}
