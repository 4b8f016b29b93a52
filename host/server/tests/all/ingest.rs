//! The whole host as a process: events produced over HTTP into the embedded log, read by the
//! ingest loop through real plugins into read models, checkpointed, killed with SIGKILL at
//! arbitrary instants and restarted; the Postgres listener asked by the real `psql`.

use std::ffi::OsStr;
use std::sync::Arc;

use weir_core::event::Event;
use weir_host::pipeline::Pipeline;
use weir_host::sample::OrderStream;
use weir_log::{EmbeddedLog, LogConfig};
use weir_sql::query::{Catalog, QueryLimits, SqlEngine};

use crate::support::{WeirProcess, envelope_lines, load, produce_file, runtime, write_config};

pub const ORDERS_CSV: &str = "SELECT * FROM orders ORDER BY order_id";
// Revenue is a float sum whose order of additions depends on partitioning: compare it rounded.
pub const REVENUE_CSV: &str =
    "SELECT customer_id, round(revenue, 2) AS revenue, orders_paid FROM customer_revenue ORDER BY customer_id";

/// The tables as they are when every event is applied exactly once, without any crash:
/// the same events through the same plugin, in process, one pass.
pub fn truth(events: &[Event]) -> (String, String) {
    let runtime = runtime();
    let catalog = Arc::new(Catalog::default());
    let engine = SqlEngine::new(catalog.clone(), QueryLimits::default()).unwrap();
    let mut pipeline = Pipeline::new(catalog);
    pipeline.add(load(&runtime, "orders")).unwrap();
    for batch in events.chunks(500) {
        assert!(pipeline.process(batch).failures.is_empty());
    }
    pipeline.publish().unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let csv = |sql: &str| {
        let answer = tokio.block_on(engine.query(sql)).unwrap();
        String::from_utf8(weir_sql::query::to_csv(&answer).unwrap()).unwrap()
    };
    (csv(ORDERS_CSV), csv(REVENUE_CSV))
}

fn serve(config: &std::path::Path) -> WeirProcess {
    WeirProcess::start(&[OsStr::new("serve"), OsStr::new("--config"), config.as_os_str()])
}

#[test]
fn kill_9_at_any_instant_neither_loses_nor_doubles_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("orders", "")], "[log]\npartitions = 3\n");
    let events = OrderStream::take_events(11, 300, 24_000);
    let (orders_truth, revenue_truth) = truth(&events);

    let chunks: Vec<&[Event]> = events.chunks(1_500).collect();
    let mut weir = serve(&config);
    let mut kills = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        let (code, body) = weir.post("/v1/topics/orders/events", &envelope_lines(chunk));
        assert_eq!(code, 200, "{body}");
        if i % 3 == 2 {
            // Let ingest and a checkpoint get going, then pull the plug at a different instant each time.
            std::thread::sleep(std::time::Duration::from_millis(40 + 70 * (i as u64 % 5)));
            weir.kill9();
            kills += 1;
            weir = serve(&config);
        }
    }
    assert!(kills >= 5);
    weir.wait_caught_up(events.len() as u64);
    assert_eq!(weir.sql_csv(ORDERS_CSV), orders_truth, "orders differ from a crash-free run");
    assert_eq!(weir.sql_csv(REVENUE_CSV), revenue_truth, "customer_revenue differs from a crash-free run");

    // A clean stop writes a final checkpoint; the next start restores it and reads nothing again.
    assert!(weir.terminate().success());
    let weir = serve(&config);
    weir.wait_caught_up(events.len() as u64);
    assert_eq!(weir.status()["events_read"], 0, "a restart after a clean stop re-read events");
    assert_eq!(weir.sql_csv(ORDERS_CSV), orders_truth);
}

#[test]
fn the_embedded_log_keeps_every_acknowledged_event_through_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[], "[log]\npartitions = 2\nsegment_bytes = 65536\n");
    let events = OrderStream::take_events(5, 100, 40_000);
    let mut acknowledged: Vec<(Event, u64, u64)> = Vec::new();
    let mut sent = 0;
    for round in 0..4 {
        let weir = serve(&config);
        let url = format!("http://{}/v1/topics/orders/events", weir.http);
        let auth = format!("Bearer {}", weir.token);
        // Appends race the kill: some requests are cut off mid-write.
        let batch: Vec<Event> = events[sent..sent + 10_000].to_vec();
        sent += 10_000;
        let writer = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for chunk in batch.chunks(250) {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                let Ok(mut response) = agent
                    .post(&url)
                    .header("authorization", &auth)
                    .header("content-type", "application/x-ndjson")
                    .send(&envelope_lines(chunk)[..])
                else {
                    break;
                };
                if response.status() != 200 {
                    break;
                }
                let body: serde_json::Value =
                    serde_json::from_str(&response.body_mut().read_to_string().unwrap_or_default()).unwrap_or_default();
                let Some(positions) = body["positions"].as_array() else {
                    break;
                };
                for (event, p) in chunk.iter().zip(positions) {
                    acks.push((event.clone(), p["partition"].as_u64().unwrap(), p["offset"].as_u64().unwrap()));
                }
            }
            acks
        });
        std::thread::sleep(std::time::Duration::from_millis(150 + 100 * round));
        weir.kill9();
        acknowledged.extend(writer.join().unwrap());
    }
    assert!(acknowledged.len() > 1_000, "only {} acknowledged", acknowledged.len());

    let log = EmbeddedLog::open(&dir.path().join("data/log"), LogConfig::default()).unwrap();
    let produced: std::collections::HashMap<&str, &Event> = events.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut stored = std::collections::HashMap::new();
    for range in log.ranges("orders").unwrap() {
        let mut next = range.start;
        loop {
            let batch = log.read("orders", range.partition, next, 1 << 20).unwrap();
            let Some(last) = batch.last() else { break };
            next = last.position.offset + 1;
            for e in batch {
                // Nothing invented: every stored event is one that was sent (the payload as JSON:
                // the produce endpoint re-encodes it).
                let sent = produced.get(e.id.as_str()).unwrap_or_else(|| panic!("invented event {e:?}"));
                let json = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).unwrap();
                assert_eq!((&e.event_type, &e.key, e.time_us), (&sent.event_type, &sent.key, sent.time_us));
                assert_eq!(json(&e.payload), json(&sent.payload));
                stored.insert((e.position.partition as u64, e.position.offset), e.id.clone());
            }
        }
    }
    for (event, partition, offset) in &acknowledged {
        assert_eq!(
            stored.get(&(*partition, *offset)),
            Some(&event.id),
            "acknowledged event lost at {partition}@{offset}"
        );
    }
}

/// Poll `probe` every 100 ms until it returns `want`; panics with the last answer after a minute.
fn wait_for(want: &str, probe: impl Fn() -> String) {
    let started = std::time::Instant::now();
    loop {
        let got = probe();
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "still not there after 60 s:\n{got}\nwant:\n{want}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_plugin_starts_at_a_time_or_at_the_latest_event_and_keeps_that_start_across_kill_9() {
    // Two self-contained streams already in the log when the plugin first starts: one from
    // January, one from June.
    let stamp = |mut events: Vec<Event>, time: &str| {
        let us = chrono::DateTime::parse_from_rfc3339(time).unwrap().timestamp_micros();
        for (i, e) in events.iter_mut().enumerate() {
            e.time_us = us + i as i64;
        }
        events
    };
    let january = stamp(OrderStream::take_events(71, 100, 2_000), "2026-01-15T00:00:00Z");
    let june = stamp(OrderStream::take_events(72, 100, 2_000), "2026-06-15T00:00:00Z");
    let later = OrderStream::take_events(73, 100, 2_000);
    let dir = tempfile::tempdir().unwrap();
    let empty = write_config(dir.path(), &[], "[log]\npartitions = 3\n");
    let weir = serve(&empty);
    for part in [&january, &june] {
        let (code, body) = weir.post("/v1/topics/orders/events", &envelope_lines(part));
        assert_eq!(code, 200, "{body}");
    }
    assert!(weir.terminate().success());
    let copy = tempfile::tempdir().unwrap();
    assert!(
        std::process::Command::new("cp")
            .arg("-r")
            .arg(dir.path().join("data"))
            .arg(copy.path())
            .status()
            .unwrap()
            .success()
    );

    // From a time: only June's events reach the table.
    let with_start = |dir: &std::path::Path, start: &str| {
        let path = write_config(dir, &[("orders", "")], "[log]\npartitions = 3\n");
        let text = std::fs::read_to_string(&path).unwrap() + &format!("start = {start:?}\n");
        std::fs::write(&path, text).unwrap();
        path
    };
    let weir = serve(&with_start(dir.path(), "2026-03-01T00:00:00Z"));
    let (june_orders, june_revenue) = truth(&june);
    wait_for(&june_orders, || weir.sql_csv(ORDERS_CSV));
    assert_eq!(weir.sql_csv(REVENUE_CSV), june_revenue);
    drop(weir);

    // From the latest event: nothing already there, everything after; a crash right after keeps
    // the start where it was first found.
    let weir = serve(&with_start(copy.path(), "latest"));
    let (later_orders, later_revenue) = truth(&later);
    let (code, body) = weir.post("/v1/topics/orders/events", &envelope_lines(&later));
    assert_eq!(code, 200, "{body}");
    weir.kill9();
    let weir = serve(&with_start(copy.path(), "latest"));
    wait_for(&later_orders, || weir.sql_csv(ORDERS_CSV));
    assert_eq!(weir.sql_csv(REVENUE_CSV), later_revenue);
    let lag = weir.status()["lag"].clone();
    assert!(lag.as_array().unwrap().iter().all(|l| l["lag"] == 0), "{lag:#}");
}

#[test]
fn produce_status_and_bad_input_over_http_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("orders", ""), ("high-value-orders", "threshold = \"10\"")], "");
    let weir = serve(&config);
    let url = format!("http://{}", weir.http);
    let events = OrderStream::take_events(3, 20, 500);
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, envelope_lines(&events)).unwrap();
    let text = produce_file(&url, "orders", &file);
    assert!(text.starts_with("wrote 500 events to orders\n  orders/0: "), "{text}");

    // A bad line refuses the whole batch, naming the line.
    let mut bad = envelope_lines(&events[..3]);
    bad.extend_from_slice(b"{\"type\": \"OrderPlaced\", \"data\": {}\n");
    let (code, body) = weir.post("/v1/topics/orders/events", &bad);
    assert_eq!(code, 400);
    assert!(body.contains("orders: line 4: not JSON"), "{body}");
    assert!(body.contains("nothing was written"), "{body}");
    let (code, body) = weir.post("/v1/topics/..%2Fetc/events", b"{\"type\":\"A\",\"data\":1}");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("invalid topic name"), "{body}");
    // Bare payloads with a key field, from stdin.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["produce", "orders", "--url", &url, "--type", "OrderPlaced", "--key", "order_id"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"{\"order_id\":\"o-x1\",\"customer_id\":\"c-x\",\"amount\":12.5}\n",
    )
    .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());

    weir.wait_caught_up(501);
    assert_eq!(weir.sql_csv("SELECT status FROM orders WHERE order_id = 'o-x1'"), "status\nplaced\n");
    let status = weir.status();
    assert_eq!(status["source"], "embedded log");
    let lag = status["lag"].as_array().unwrap();
    // Two plugins × four partitions of `orders`, every one caught up to the partition's end.
    assert_eq!(lag.len(), 8, "{status:#}");
    let ends: u64 = lag.iter().filter(|l| l["plugin"] == "orders@0.1.0").map(|l| l["end"].as_u64().unwrap()).sum();
    assert_eq!(ends, 501);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir")).args(["status", "--url", &url]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("source: embedded log") && text.contains("| orders/0 "), "{text}");
    assert!(text.contains(" orders@0.1.0            | projection |"), "{text}");
    assert!(text.contains(" high-value-orders@0.1.0 | handler    |"), "{text}");

    // The handler's events went to their topic in the log.
    let (code, body) = weir.get("/v1/tables");
    assert_eq!(code, 200);
    assert!(body.contains("\"customer_revenue\""), "{body}");
    drop(weir);
    let log = EmbeddedLog::open(&dir.path().join("data/log"), LogConfig::default()).unwrap();
    let alerts: u64 = log.ranges("order-alerts").unwrap().iter().map(|r| r.end).sum();
    assert!(alerts > 0, "no alerts were emitted");
}

/// `weir serve` with the orders projection on a fresh data directory, holding 2,000 generated
/// events (from `seed`) applied and published.
fn serve_orders_with_events(seed: u64) -> (tempfile::TempDir, WeirProcess) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("orders", "")], "");
    let weir = serve(&config);
    let events = OrderStream::take_events(seed, 50, 2_000);
    assert_eq!(weir.post("/v1/topics/orders/events", &envelope_lines(&events)).0, 200);
    weir.wait_caught_up(2_000);
    (dir, weir)
}

#[test]
fn psql_asks_the_postgres_listener_and_is_refused_writes() {
    let (_dir, weir) = serve_orders_with_events(9);
    let port = weir.pg_port.expect("the Postgres listener was not announced").to_string();
    let psql = |sql: &str| {
        std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "weir", "-d", "weir", "-X", "-A", "-t", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql (Debian's postgresql-client) must be installed; test.sh installs it")
    };
    let out = psql("SELECT count(*) FROM orders");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let http = weir.sql_csv("SELECT count(*) AS n FROM orders");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), http.lines().nth(1).unwrap());

    let out = psql("SELECT customer_id, orders_paid FROM orders.customer_revenue ORDER BY customer_id LIMIT 2");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);

    for write in ["DROP TABLE orders", "DELETE FROM orders", "CREATE TABLE t (a int)"] {
        let out = psql(write);
        assert!(!out.status.success(), "{write} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("ERROR:  weir's SQL is read-only"), "{write}: {err}");
    }
    let out = psql("SELECT nope FROM orders");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ERROR:"), "bad SQL gave no error");
}

#[test]
fn a_driver_on_the_extended_protocol_binds_parameters_and_gets_typed_rows() {
    let (_dir, weir) = serve_orders_with_events(19);
    let port = weir.pg_port.expect("the Postgres listener was not announced");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=weir dbname=weir"),
            tokio_postgres::NoTls,
        )
        .await
        .expect("tokio-postgres connects");
        tokio::spawn(connection);

        // Parameters bound by the driver, answers in binary with their Postgres types.
        let customer: String = client
            .query_one("SELECT customer_id FROM customer_revenue ORDER BY customer_id LIMIT 1", &[])
            .await
            .unwrap()
            .get(0);
        let row = client
            .query_one(
                "SELECT customer_id, orders_placed, revenue FROM customer_revenue WHERE customer_id = $1",
                &[&customer],
            )
            .await
            .unwrap();
        let (id, placed, revenue): (String, i64, f64) = (row.get(0), row.get(1), row.get(2));
        let http = weir.sql_csv(&format!(
            "SELECT customer_id, orders_placed, revenue FROM customer_revenue WHERE customer_id = '{customer}'"
        ));
        assert_eq!(format!("customer_id,orders_placed,revenue\n{id},{placed},{revenue}\n"), http);

        let statement =
            client.prepare("SELECT count(*) AS n FROM orders WHERE status = $1 AND amount > $2").await.unwrap();
        assert_eq!(statement.params(), &[tokio_postgres::types::Type::TEXT, tokio_postgres::types::Type::FLOAT8]);
        let paid: i64 = client.query_one(&statement, &[&"paid", &0.0f64]).await.unwrap().get(0);
        let http = weir.sql_csv("SELECT count(*) AS n FROM orders WHERE status = 'paid' AND amount > 0.0");
        assert_eq!(paid.to_string(), http.lines().nth(1).unwrap());

        // Refused and wrong statements fail at prepare, with the engine's reason.
        let err = client.prepare("DELETE FROM orders").await.unwrap_err();
        let db = err.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "25006", "{db:?}");
        assert!(db.message().contains("weir's SQL is read-only"), "{db:?}");
        let err = client.prepare("SELECT nope FROM orders").await.unwrap_err();
        assert!(err.as_db_error().is_some_and(|e| e.message().contains("nope")), "{err:?}");
        // A placeholder number past the protocol's limit is refused, not allocated for.
        let err = client.prepare("SELECT $4000000000").await.unwrap_err();
        assert!(err.as_db_error().is_some_and(|e| e.message().contains("past the 65535 parameters")), "{err:?}");
        let n: i64 = client.query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0);
        assert!(n > 0, "the listener stopped answering after a refused statement");
    });
}

#[test]
fn a_corrupt_latest_checkpoint_is_set_aside_and_the_previous_one_restored() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("orders", "")], "");
    let events = OrderStream::take_events(12, 200, 6_000);
    let (orders_truth, revenue_truth) = truth(&events);
    let (first, second) = events.split_at(3_000);

    // Two runs, each ending with a final checkpoint: the latest holds every event.
    let weir = serve(&config);
    assert_eq!(weir.post("/v1/topics/orders/events", &envelope_lines(first)).0, 200);
    weir.wait_caught_up(first.len() as u64);
    assert!(weir.terminate().success());
    let weir = serve(&config);
    assert_eq!(weir.post("/v1/topics/orders/events", &envelope_lines(second)).0, 200);
    weir.wait_caught_up(events.len() as u64);
    assert!(weir.terminate().success());

    // A disk that lied: the latest checkpoint's table file is garbage.
    let checkpoints = dir.path().join("data/checkpoints");
    let mut complete: Vec<_> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    complete.sort();
    assert!(complete.len() >= 2, "want two checkpoints, have {complete:?}");
    let latest = complete.last().unwrap().clone();
    std::fs::write(latest.join("orders/orders.arrow"), b"not an arrow file").unwrap();

    // The host starts from the previous checkpoint, re-reads what came after it, and ends with
    // the same tables; the corrupt one is kept aside for a human to look at.
    let weir = serve(&config);
    weir.wait_caught_up(events.len() as u64);
    assert_eq!(weir.sql_csv(ORDERS_CSV), orders_truth, "orders differ after falling back");
    assert_eq!(weir.sql_csv(REVENUE_CSV), revenue_truth, "customer_revenue differs after falling back");
    assert!(weir.status()["events_read"].as_u64().unwrap() > 0, "nothing was re-read: the corrupt checkpoint was used");
    assert!(
        latest.with_extension("corrupt").join("manifest.json").is_file(),
        "the corrupt checkpoint was not set aside"
    );
}

/// 150 topics of 4 partitions in the embedded log of a host started with the usual soft limit of
/// open files lowered to 256: before, every segment of every partition held a file open for
/// reading beside its writer, and past the limit appends and checkpoints failed. Past
/// `[log] max_topics`, a new topic is refused with a message naming the setting.
#[test]
fn many_topics_do_not_exhaust_open_files_and_topic_creation_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("orders", "")], "[log]\nmax_topics = 151\n");
    let weir =
        WeirProcess::start_with_open_files(256, &[OsStr::new("serve"), OsStr::new("--config"), config.as_os_str()]);
    let events = OrderStream::take_events(3, 10, 40);
    for n in 0..150 {
        let (code, body) = weir.post(&format!("/v1/topics/t{n}/events"), &envelope_lines(&events[..1]));
        assert_eq!(code, 200, "topic t{n}: {body}");
    }
    let (code, body) = weir.post("/v1/topics/one-too-many/events", &envelope_lines(&events[..1]));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("[log] max_topics") && body.contains("151"), "{body}");
    // The host still works: events flow and checkpoints are written.
    assert_eq!(weir.post("/v1/topics/orders/events", &envelope_lines(&events)).0, 200);
    weir.wait_caught_up(40);
    let before = weir.status()["checkpoint"]["seq"].as_u64().unwrap_or(0);
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(weir.post("/v1/topics/orders/events", &envelope_lines(&events)).0, 200);
    weir.wait_caught_up(80);
    let started = std::time::Instant::now();
    while weir.status()["checkpoint"]["seq"].as_u64().unwrap_or(0) <= before {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "no checkpoint was written");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(weir.terminate().success());
}

/// Plugins side by side on worker threads, and a projection's calls overlapped with applying its
/// row changes, produce exactly what one plugin after another on one thread produces: the same
/// tables, the same emitted events and dead letters in the same order, the same failures.
#[test]
fn plugins_on_worker_threads_produce_what_one_thread_produces() {
    let mut events = OrderStream::take_events(11, 200, 6_000);
    // Refused by orders (an unknown order is paid): a dead letter in the middle of a batch.
    let mut poison = events[1234].clone();
    poison.event_type = "OrderPaid".into();
    poison.payload = br#"{"order_id":"o-999999999"}"#.to_vec();
    events[1234] = poison;
    let run = |threads: usize| {
        let runtime = runtime();
        let catalog = Arc::new(Catalog::default());
        let engine = SqlEngine::new(catalog.clone(), QueryLimits::default()).unwrap();
        let mut pipeline = Pipeline::new(catalog);
        pipeline.set_threads(threads).unwrap();
        pipeline.add(load(&runtime, "orders")).unwrap();
        pipeline.add(load(&runtime, "high-value-orders")).unwrap();
        let (mut emitted, mut failures) = (Vec::new(), Vec::new());
        for batch in events.chunks(700) {
            let outcome = pipeline.process(batch);
            emitted.extend(
                outcome.outgoing.into_iter().map(|r| r.into_event()).map(|e| (e.position.topic, e.id, e.payload)),
            );
            failures.extend(outcome.failures.into_iter().map(|f| f.to_string()));
        }
        pipeline.publish().unwrap();
        let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let csv = |sql: &str| {
            let answer = tokio.block_on(engine.query(sql)).unwrap();
            String::from_utf8(weir_sql::query::to_csv(&answer).unwrap()).unwrap()
        };
        (csv(ORDERS_CSV), csv(REVENUE_CSV), emitted, failures)
    };
    let one = run(1);
    assert_eq!(one.3.len(), 1, "the poison event fails once: {:?}", one.3);
    assert!(one.2.iter().any(|(topic, _, _)| topic == "order-alerts"), "high-value orders were flagged");
    assert!(one.2.iter().any(|(topic, _, _)| topic == "weir.dlq.orders"), "the poison event was dead-lettered");
    let two = run(2);
    assert_eq!(one.0, two.0, "orders table");
    assert_eq!(one.1, two.1, "customer_revenue table");
    assert_eq!(one.2, two.2, "emitted events and dead letters, in order");
    assert_eq!(one.3, two.3, "failures");
}
