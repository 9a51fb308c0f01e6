#!/usr/bin/env bash
# Makes src/vendor.tar.xz: every crate Cargo.lock names, so that the release
# tarball installs with no network (configure finds the archive and the
# build runs cargo --offline --locked). Crates no Linux target needs (Windows,
# macOS, wasm) are kept as empty stubs, which keeps the archive small.
# Run at release time, before R CMD build; the archive is ignored by git.
# Also writes inst/AUTHORS, the crates and their authors.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:$HOME/.cargo/bin"
command -v python3 >/dev/null 2>&1 || { echo "tools/vendor.sh: python3 is required" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cargo vendor --quiet --locked --versioned-dirs "$tmp/vendor" >/dev/null

# The packages a Linux build can use, with every feature on (name-version).
for t in x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu; do
  cargo metadata --format-version 1 --locked --all-features --filter-platform "$t" >"$tmp/meta-$t.json"
done

python3 - "$tmp" <<'PY'
import glob, json, os, shutil, sys
tmp = sys.argv[1]
keep = set()
for f in glob.glob(os.path.join(tmp, "meta-*.json")):
    m = json.load(open(f))
    pkgs = {p["id"]: p for p in m["packages"]}
    for node in m["resolve"]["nodes"]:
        p = pkgs[node["id"]]
        keep.add(f'{p["name"]}-{p["version"]}')
# What no build reads: tests, benchmarks, examples, and libsqlite3-sys's
# SQLCipher copy (asyncjobs uses the bundled SQLite). Their checksums go too.
def trim(path):
    checksum_file = os.path.join(path, ".cargo-checksum.json")
    checksum = json.load(open(checksum_file))
    drop = ["tests", "benches", "examples", "test-macros"]
    if os.path.basename(path).startswith("libsqlite3-sys-"):
        drop.append("sqlcipher")
    drop = [d for d in drop if os.path.isdir(os.path.join(path, d))]
    for d in drop:
        shutil.rmtree(os.path.join(path, d))
    checksum["files"] = {f: h for f, h in checksum["files"].items()
                         if not any(f.startswith(d + "/") for d in drop)}
    json.dump(checksum, open(checksum_file, "w"))

stubbed = []
for d in sorted(os.listdir(os.path.join(tmp, "vendor"))):
    if d in keep:
        trim(os.path.join(tmp, "vendor", d))
        continue
    path = os.path.join(tmp, "vendor", d)
    manifest = open(os.path.join(path, "Cargo.toml")).read()
    checksum = json.load(open(os.path.join(path, ".cargo-checksum.json")))
    for entry in os.listdir(path):
        if entry not in ("Cargo.toml", ".cargo-checksum.json"):
            full = os.path.join(path, entry)
            shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)
    # An empty crate: cargo reads its manifest to resolve the lock, never builds it.
    os.makedirs(os.path.join(path, "src"))
    open(os.path.join(path, "src", "lib.rs"), "w").close()
    # Targets the manifest names explicitly must exist as files.
    for line in manifest.splitlines():
        key, _, value = line.partition("=")
        value = value.strip().strip('"')
        if key.strip() in ("build", "path") and value.endswith(".rs"):
            os.makedirs(os.path.dirname(os.path.join(path, value)), exist_ok=True)
            with open(os.path.join(path, value), "w") as f:
                f.write("fn main() {}\n" if key.strip() == "build" else "")
    json.dump({"files": {}, "package": checksum.get("package")},
              open(os.path.join(path, ".cargo-checksum.json"), "w"))
    stubbed.append(d)
print(f"tools/vendor.sh: {len(keep)} crates for Linux, {len(stubbed)} others stubbed")
PY

tar -C "$tmp" -cf - vendor | xz -9 -T2 >src/vendor.tar.xz
echo "tools/vendor.sh: wrote src/vendor.tar.xz ($(du -h src/vendor.tar.xz | cut -f1))"
bash tools/authors.sh
