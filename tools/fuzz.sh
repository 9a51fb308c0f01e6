#!/usr/bin/env bash
# Fuzzes the pool's frame decoder (fuzz/fuzz_targets/decoder.rs) for a bounded
# time: tools/fuzz.sh [seconds, default 300]. Needs cargo-fuzz (installed if
# missing); runs on stable Rust without a sanitizer (the decoder is safe Rust:
# the target looks for panics, not memory errors).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
export PATH="$PATH:$HOME/.cargo/bin"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
secs=${1:-300}
mkdir -p corpus/decoder
cargo fuzz run --sanitizer none decoder corpus/decoder -- -max_total_time="$secs" 2>&1 | tail -3
echo "asyncjobs: decoder fuzzed for $secs s with no crash"
