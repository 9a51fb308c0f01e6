#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks (R and Debian's r-cran-* packages,
# when run as root), then builds asyncjobs into target/Rlib. Sourced by
# tools/test.sh and tools/demo.sh. With ASYNCJOBS_RELEASE=1 (tools/release.sh)
# it installs what R CMD build and R CMD check --as-cran need as well, and
# builds nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:$HOME/.cargo/bin"

pkgs=(testthat withr ps callr processx curl jsonlite plumber ${ASYNCJOBS_EXTRA_PKGS:-})
# Commands a release needs, each with the Debian packages that bring it: the
# vignette (with knitr and rmarkdown), the check's look at the scripts, at the
# HTML help and at PDFs, and LaTeX for the PDF manual.
tools=()
if [ "${ASYNCJOBS_RELEASE:-0}" = 1 ]; then
  pkgs+=(knitr rmarkdown digest) # the check wants every package DESCRIPTION suggests
  tools=(pandoc:pandoc checkbashisms:devscripts tidy:tidy qpdf:qpdf
    "pdflatex:texlive-latex-base texlive-latex-recommended texlive-fonts-recommended")
fi
need=()
if ! command -v Rscript >/dev/null 2>&1; then
  need=(r-base-dev)
  for p in "${pkgs[@]}"; do need+=("r-cran-$p"); done
else
  for p in "${pkgs[@]}"; do
    Rscript -e "quit(status = !requireNamespace('$p', quietly = TRUE))" >/dev/null 2>&1 || need+=("r-cran-$p")
  done
fi
command -v curl >/dev/null 2>&1 || need+=(curl) # the demo's client
command -v python3 >/dev/null 2>&1 || need+=(python3) # the store suites' TCP proxy
for t in "${tools[@]}"; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need+=(${t#*:})
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "asyncjobs: missing ${need[*]}; run this as root, or install them with apt-get." >&2
    exit 1
  fi
  echo "asyncjobs: installing ${need[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "asyncjobs: cargo is required (https://rustup.rs)" >&2; exit 1; }
[ "${ASYNCJOBS_RELEASE:-0}" != 1 ] || return 0 2>/dev/null || exit 0

mkdir -p target/Rlib
R CMD INSTALL --no-multiarch --library=target/Rlib . >target/install.log 2>&1 || { cat target/install.log; exit 1; }
export R_LIBS="$PWD/target/Rlib${R_LIBS:+:$R_LIBS}"
