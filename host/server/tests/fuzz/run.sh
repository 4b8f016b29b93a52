#!/usr/bin/env bash
# Run every fuzz target of host/server/tests/all/fuzz.rs for SECONDS each (default 60), one at a
# time. An input that panics a decoder is written into that target's corpus directory here
# (crash-<hash>) and the run fails naming it; commit the file with the fix, so every later run
# (./test.sh included) replays it.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
export WEIR_FUZZ_SECONDS="${1:-60}"
cargo test -p weir-host --test all fuzz_ -- --test-threads=1 --nocapture 2>&1 | grep -E "^fuzz target|panicked|test result"
