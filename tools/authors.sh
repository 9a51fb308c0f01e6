#!/usr/bin/env bash
# Writes inst/AUTHORS: every Rust crate an asyncjobs build uses on Linux, with
# its authors and licence, from cargo metadata (so from Cargo.lock).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:$HOME/.cargo/bin"
cargo metadata --format-version 1 --locked --offline --all-features \
  --filter-platform x86_64-unknown-linux-gnu |
python3 -c '
import json, sys
m = json.load(sys.stdin)
pkgs = {p["id"]: p for p in m["packages"]}
used = [pkgs[n["id"]] for n in m["resolve"]["nodes"]]
used = sorted((p for p in used if p["name"] != "asyncjobs"), key=lambda p: (p["name"], p["version"]))
print("The asyncjobs package is written by the asyncjobs authors. Its shared library")
print("is built with the following Rust crates (libraries, build scripts and")
print("macros), from the crates.io sources pinned in Cargo.lock and vendored in")
print("release tarballs. Each crate is copyright its authors, under the licence")
print("shown. libsqlite3-sys bundles the SQLite library, which is in the public")
print("domain.")
print()
for p in used:
    authors = ", ".join(a.split(" <")[0] for a in p["authors"]) or "the " + p["name"] + " developers"
    print("- {} {} ({}): {}".format(p["name"], p["version"], p.get("license") or "see the crate", authors))
' >inst/AUTHORS
echo "tools/authors.sh: inst/AUTHORS lists $(grep -c '^- ' inst/AUTHORS) crates"
