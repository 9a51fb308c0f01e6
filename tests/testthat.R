library(testthat)
library(asyncjobs)
test_check("asyncjobs")
