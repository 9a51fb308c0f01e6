#!/usr/bin/env bash
# Builds the benchmark peers that Debian does not package, nanonext and then mirai,
# from source checkouts you name into a private R library outside the repository.
#
#   bash tools/build-peers.sh NANONEXT_SRC MIRAI_SRC
#   NANONEXT_SRC=... MIRAI_SRC=... bash tools/build-peers.sh
#
# Each source is a package directory (with DESCRIPTION), built as it is, or a
# git directory (a clone or a bare mirror of github.com/r-lib/nanonext and
# github.com/r-lib/mirai), from which PEERS_REF_NANONEXT / PEERS_REF_MIRAI is
# exported (default: the newest v* tag, i.e. the latest release, else HEAD).
# The library is $ASYNCJOBS_PEERS_LIB (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/asyncjobs/peers); tools/bench.sh and
# bench/bench.R read the same variable. As root, installs libnng-dev,
# libmbedtls-dev and cmake when missing.
# nanonext's configure uses the system libnng/libmbedtls only when new enough
# (libnng >= 1.12, mbedtls >= 3): on Debian 12 it compiles its bundled copies.
set -euo pipefail

lib="${ASYNCJOBS_PEERS_LIB:-${XDG_CACHE_HOME:-$HOME/.cache}/asyncjobs/peers}"
nanonext_src="${1:-${NANONEXT_SRC:-}}"
mirai_src="${2:-${MIRAI_SRC:-}}"
if [ -z "$nanonext_src" ] || [ -z "$mirai_src" ]; then
  echo "usage: bash tools/build-peers.sh NANONEXT_SRC MIRAI_SRC (or set NANONEXT_SRC and MIRAI_SRC):" >&2
  echo "  each a package directory or a git clone of github.com/r-lib/nanonext and github.com/r-lib/mirai" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "$(realpath -m "$lib")/" in
  "$here"/*) echo "build-peers: the peers library must be outside the repository: $lib" >&2; exit 1 ;;
esac

need=()
for p in libnng-dev libmbedtls-dev cmake; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "build-peers: installing ${need[*]}"
    apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
      --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "build-peers: ${need[*]} missing and not root; nanonext will compile its bundled copies" >&2
  fi
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$lib"

# Puts the package source of $2 (named $1) in $tmp/$1 and prints what was taken.
unpack() {
  local name="$1" src="$2" ref_var="PEERS_REF_${1^^}" gitdir ref
  mkdir -p "$tmp/$name"
  if [ -f "$src/DESCRIPTION" ]; then # a package directory (a work tree): as it is
    cp -a "$src/." "$tmp/$name/"
    echo "$name: directory $src" >&2
    return
  fi
  gitdir="$(git -C "$src" rev-parse --absolute-git-dir 2>/dev/null || echo "$src")"
  ref="${!ref_var:-$(git --git-dir="$gitdir" tag --list 'v[0-9]*' --sort=-v:refname | head -n 1)}"
  ref="${ref:-HEAD}"
  git --git-dir="$gitdir" archive --format=tar "$ref" | tar -x -C "$tmp/$name"
  echo "$name: $gitdir at $ref ($(git --git-dir="$gitdir" rev-parse "$ref^{commit}"))" >&2
}

for pkg in nanonext mirai; do
  src_var="${pkg}_src"
  unpack "$pkg" "${!src_var}"
  echo "build-peers: R CMD INSTALL $pkg into $lib"
  # nanonext needs no other package; mirai imports only nanonext, found in $lib.
  R_LIBS="$lib${R_LIBS:+:$R_LIBS}" R CMD INSTALL --no-multiarch --no-docs --library="$lib" "$tmp/$pkg" \
    >"$tmp/$pkg.log" 2>&1 || { cat "$tmp/$pkg.log"; exit 1; }
  grep -E "libnng|libmbedtls|bundled|NANONEXT" "$tmp/$pkg.log" || true
done

R_LIBS="$lib" Rscript -e 'for (p in c("nanonext", "mirai")) cat(p, format(packageVersion(p, lib.loc = .libPaths()[1])), "\n")'
