#!/usr/bin/env bash
# The README's release steps, from a fresh Debian machine: installs what they
# need (tools/setup.sh with ASYNCJOBS_RELEASE=1, as root), vendors the crates
# (tools/vendor.sh), builds the tarball (R CMD build) and checks it
# (R CMD check --as-cran). Leaves asyncjobs_<version>.tar.gz and
# asyncjobs.Rcheck/ in the repository root, ends with the check's status,
# and fails when the check found an ERROR or a WARNING.
set -euo pipefail
export ASYNCJOBS_RELEASE=1
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" # from the repository root
version=$(sed -n 's/^Version: *//p' DESCRIPTION)
tarball=asyncjobs_$version.tar.gz

# The tarball carries src/vendor.tar.xz; in the checkout it would make every
# later install a full offline build, so it goes at the end.
trap 'rm -f src/vendor.tar.xz' EXIT
bash tools/vendor.sh
rm -rf "$tarball" asyncjobs.Rcheck
R CMD build .

# The manual's monospace font is inconsolata, in Debian's texlive-fonts-extra
# (500 MB); without it the check makes the manual in Times and LaTeX's own
# monospace font instead of failing on it.
if [ -z "$(kpsewhich zi4.sty inconsolata.sty 2>/dev/null)" ]; then
  export R_RD4PDF=${R_RD4PDF:-times,hyper}
fi
R CMD check --as-cran "$tarball" || true
log=asyncjobs.Rcheck/00check.log
status=$(grep -s '^Status:' "$log" || true)
[ -n "$status" ] || { echo "tools/release.sh: the check did not finish (see above)" >&2; exit 1; }
echo "tools/release.sh: made $tarball; the check's log is $log:"
grep -E '^\* .*(NOTE|WARNING|ERROR)$' "$log" || true
echo "$status"
case $status in *ERROR* | *WARNING*) exit 1 ;; esac
