#!/usr/bin/env bash
# Builds, loads and tries asyncjobs with the Rust a distribution ships: in a
# Debian 13 (trixie) root made with debootstrap, with Debian's own rustc,
# cargo and r-base-dev, so that Cargo.toml's rust-version is tested, not
# assumed. Run as root, before a release and after a change to Cargo.toml
# or Cargo.lock. Prints the rustc it used; ends with "check-msrv: OK".
#
# The root is made once (a few minutes) and kept for the next run, with the
# crates cargo fetched and its build directory:
#   ASYNCJOBS_MSRV_ROOT    where (default ${XDG_CACHE_HOME:-$HOME/.cache}/asyncjobs/msrv-root);
#                          delete it to start from nothing
#   ASYNCJOBS_MSRV_MIRROR  the Debian archive (default http://deb.debian.org/debian)
# The checkout's files (tracked and new, as git lists them) are copied into
# the root and installed as `R CMD INSTALL .` would from a checkout: Debian's
# cargo fetches the crates from crates.io, --locked to Cargo.lock.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
suite=trixie
root=${ASYNCJOBS_MSRV_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/asyncjobs/msrv-root}
mirror=${ASYNCJOBS_MSRV_MIRROR:-http://deb.debian.org/debian}
# What the root needs beyond minbase (inst/deploy/Dockerfile installs the
# same toolchain), and Debian's r-cran-* of each package DESCRIPTION imports
# (R's own packages come with r-base-dev).
pkgs=(rustc cargo r-base-dev ca-certificates xz-utils)
for p in $(awk '/^Imports:/ { on = 1; sub(/^Imports:/, "") } on && /^[A-Za-z]/ && !/^Imports:/ { on = 0 } on' DESCRIPTION |
  tr ',' '\n' | sed 's/(.*)//; s/[[:space:]]//g'); do
  case " base compiler datasets grDevices graphics grid methods parallel splines stats stats4 tcltk tools utils " in
    *" $p "*) ;;
    *) pkgs+=("r-cran-$(echo "$p" | tr '[:upper:]' '[:lower:]')") ;;
  esac
done
started=$SECONDS

say() { echo "check-msrv: $*"; }
fail() { echo "check-msrv: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] ||
  fail "run this as root: debootstrap, mount and chroot need it (sudo bash tools/check-msrv.sh)."
command -v git >/dev/null 2>&1 && git -C "$repo" rev-parse --git-dir >/dev/null 2>&1 ||
  fail "this needs a git checkout of asyncjobs (it copies the files git lists) and git."
case "$root" in
  /*) ;;
  *) fail "ASYNCJOBS_MSRV_ROOT must be an absolute path, not '$root'." ;;
esac
[ "$root" != / ] || fail "ASYNCJOBS_MSRV_ROOT must not be /."
if ! command -v debootstrap >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 ||
    fail "debootstrap is required and there is no apt-get to install it: install debootstrap with your system's packages."
  say "installing debootstrap"
  apt-get -q update >/dev/null &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null ||
    fail "debootstrap could not be installed with apt-get; install it, then run this again."
fi

# Mounts made here, unmounted on any exit (lazily when still busy).
mounts=()
unmount_all() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" 2>/dev/null || true
  done
  mounts=()
}
# Mounts under the root left by a run that was killed before its cleanup.
unmount_stale() {
  local m
  awk -v r="$root/" 'index($2, r) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
}
child= # the command running in the root, if any
cleanup() {
  if [ -n "$child" ]; then
    kill -TERM -- "-$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  unmount_all
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_root() {
  mount -t proc proc "$root/proc" || fail "could not mount /proc in $root (a container may forbid mounts)."
  mounts+=("$root/proc")
  mount --bind /dev "$root/dev" || fail "could not bind-mount /dev in $root."
  mounts+=("$root/dev")
  # Name resolution for apt and cargo.
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
}

# This run's log, next to the root.
log="$root.log"
mkdir -p "$(dirname "$root")"
: >"$log"
# in_root COMMAND...: runs COMMAND in the root with a clean environment (but
# the host's proxy settings, if any).
in_root() {
  local v proxies=()
  for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [ -z "${!v:-}" ] || proxies+=("$v=${!v}")
  done
  # In a session of its own, so that an interrupted run ends it and all it started.
  setsid chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive "${proxies[@]}" "$@" &
  child=$!
  local rc=0
  wait "$child" || rc=$?
  child=
  return "$rc"
}
# logged WHAT COMMAND...: runs COMMAND in the root, output to the log; on
# failure shows the log's end and stops.
logged() {
  local what=$1
  shift
  echo "== $what" >>"$log"
  in_root "$@" >>"$log" 2>&1 || {
    tail -n 40 "$log" >&2
    fail "$what failed (log: $log)."
  }
}

unmount_stale
# The root is ready when its marker names the packages this script wants.
marker="$root/etc/asyncjobs-msrv"
if [ ! -f "$marker" ] || [ "$(cat "$marker")" != "${pkgs[*]}" ]; then
  if [ ! -x "$root/usr/bin/apt-get" ] || [ ! -f "$root/etc/debian_version" ]; then
    # Nothing usable there, or a debootstrap that was cut short: start over,
    # but never empty a directory that is not such a root.
    if [ -n "$(ls -A "$root" 2>/dev/null)" ] && [ ! -d "$root/debootstrap" ] && [ ! -f "$root/etc/debian_version" ]; then
      fail "$root is not empty and is not a Debian root made here; set ASYNCJOBS_MSRV_ROOT to another directory."
    fi
    rm -rf --one-file-system "$root"
    mkdir -p "$root"
    say "making a Debian $suite root in $root (debootstrap from $mirror, a few minutes)"
    debootstrap --variant=minbase "$suite" "$root" "$mirror" >>"$log" 2>&1 || {
      tail -n 20 "$log" >&2
      fail "debootstrap failed (log: $log); check the network and ASYNCJOBS_MSRV_MIRROR, then run this again."
    }
  fi
  mount_root
  # No service starts inside the root.
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  say "installing ${pkgs[*]} from Debian $suite"
  logged "apt-get update" apt-get -q update
  logged "apt-get -f install" apt-get -q -y -f install
  logged "apt-get install" apt-get -q -y --no-install-recommends install "${pkgs[@]}"
  in_root apt-get clean
  echo "${pkgs[*]}" >"$marker"
else
  mount_root
fi

# The host's own CAs (as behind a proxy that inspects TLS), for cargo.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  logged "update-ca-certificates" update-ca-certificates
fi

say "using $(in_root rustc --version) and $(in_root cargo --version) from Debian $suite ($(cat "$root/etc/debian_version")), $(in_root R --version | head -n 1)"

# The checkout as git sees it (tracked files and new ones, not the ignored),
# over the last copy; target/ stays, so the crates are not rebuilt.
src="$root/build/asyncjobs"
mkdir -p "$src"
find "$src" -mindepth 1 -maxdepth 1 ! -name target -exec rm -rf {} +
git -C "$repo" ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
  tar -C "$repo" --null -T - -cf - | tar -C "$src" -xf -

say "fetching the crates of Cargo.lock with Debian's cargo (--locked: the lock must do as it is)"
logged "cargo fetch" sh -c 'cd /build/asyncjobs && cargo fetch --locked'
say "building and installing asyncjobs (R CMD INSTALL, cargo build --release)"
rm -rf "$root/build/lib" # a fresh library: only this run's install, no lock an interrupted one left
mkdir -p "$root/build/lib"
logged "R CMD INSTALL" sh -c 'cd /build/asyncjobs && R CMD INSTALL --no-multiarch --library=/build/lib .'
grep -h '^asyncjobs: using' "$log" | tail -n 1 | sed 's/^/check-msrv: configure said: /'

say "smoke test: a job on the memory store, then one on a SQLite store"
cat >"$root/build/smoke.R" <<'R'
library(asyncjobs, lib.loc = "/build/lib")
register_job("smoke", function(p) p$x * 7)
run <- function(store, submit) {
  where <- if (is.null(store)) "memory" else "SQLite"
  start_workers(n = 1, wait = TRUE, store = store)
  on.exit(stop_workers())
  job <- submit()
  if (is.null(job$job_id)) stop("the job on the ", where, " store was refused: ", job$message)
  status <- wait_for_job(job$job_id, timeout_ms = 60000)
  if (!identical(status$status, "completed") || !isTRUE(status$result == 42))
    stop("the job on the ", where, " store ended ", status$status, ": ", format(status$error$message))
  cat("check-msrv: job", job$job_id, "on the", where, "store: completed, result", status$result, "\n")
}
# A closure, as an API submits it; then a registered job by name, which a
# shared store takes without a key.
run(NULL, function() create_job("closure", 6, function(x) x * 7))
db <- tempfile(fileext = ".db")
run(paste0("sqlite://", db), function() create_job("smoke", list(x = 6)))
unlink(paste0(db, c("", "-wal", "-shm")))
R
in_root Rscript /build/smoke.R 2>&1 || fail "the smoke test failed (above)."
say "OK in $((SECONDS - started)) s (root: $root)"
