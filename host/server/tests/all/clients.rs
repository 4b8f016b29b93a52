//! Real SQL clients from the registries against a running host (issue 16): `psql`, psycopg 3 in
//! its default transactional mode, SQLAlchemy Core, asyncpg and the ADBC Flight SQL driver, each
//! answer compared with what `POST /v1/sql` answers for the same query, and every write refused
//! with the same message on every surface. The clients live in a virtualenv that `test.sh`
//! installs (`WEIR_CLIENTS_PYTHON`); the checks are `tests/clients/check.py`.

use std::ffi::OsStr;

use weir_host::sample::OrderStream;

use crate::support::{WeirProcess, clients_python, envelope_lines, repo, write_config};

/// Rows of `typed` at the edges of each type: extreme integers, the shortest and longest floats,
/// negative zero, timestamps before 1970 and in year 9999, every byte value, text that needs
/// quoting in every format; with and without nulls.
fn typed_events() -> Vec<u8> {
    let rows = [
        serde_json::json!({"id": "a-zero", "n": 0, "x": 0.0, "flag": false, "at": 0, "raw": [], "nulls": false}),
        serde_json::json!({"id": "b-max", "n": i64::MAX, "x": 0.1 + 0.2, "flag": true, "at": 1_764_547_200_123_456i64,
            "raw": [0, 1, 127, 128, 255], "nulls": false}),
        serde_json::json!({"id": "c-min ü ∑ 'q' \"dq\", comma\nnewline\ttab\\", "n": i64::MIN, "x": -1.5e300,
            "flag": false, "at": -86_400_000_001i64, "raw": b"\\x00'\"".to_vec(), "nulls": true}),
        serde_json::json!({"id": "d-tiny", "n": -1, "x": 5e-324, "flag": true, "at": 253_402_300_799_999_999i64,
            "raw": (0..1024).map(|i| i % 256).collect::<Vec<u32>>(), "nulls": false}),
        serde_json::json!({"id": "e-negzero", "n": 42, "x": -0.0, "flag": true, "at": 1, "raw": [7], "nulls": true}),
    ];
    let mut out = Vec::new();
    for row in rows {
        let event = serde_json::json!({"type": "Typed", "key": row["id"], "data": row});
        out.extend(serde_json::to_vec(&event).unwrap());
        out.push(b'\n');
    }
    out
}

#[test]
fn every_sql_client_answers_what_http_answers() {
    let python = clients_python();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("orders", ""), ("typed-columns", "")], "");
    let weir = WeirProcess::start(&[OsStr::new("serve"), OsStr::new("--config"), config.as_os_str()]);
    let orders = OrderStream::take_events(16, 40, 3_000);
    let (code, body) = weir.post("/v1/topics/orders/events", &envelope_lines(&orders));
    assert_eq!(code, 200, "{body}");
    let (code, body) = weir.post("/v1/topics/typed/events", &typed_events());
    assert_eq!(code, 200, "{body}");
    weir.wait_caught_up(3_000);

    let out = std::process::Command::new(&python)
        .arg(repo().join("host/server/tests/clients/check.py"))
        .args(["--http", &weir.http])
        .env("WEIR_TOKEN", &weir.token)
        .args(["--pg", &weir.pg_port.expect("the host announced no Postgres listener").to_string()])
        .args(["--flight", &weir.flight_port.expect("the host announced no Flight SQL listener").to_string()])
        .output()
        .expect("running tests/clients/check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the clients disagree:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all clients agree with POST /v1/sql"), "{stdout}");
}
