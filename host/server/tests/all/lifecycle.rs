//! The plugin lifecycle on a running host: hot swaps, side-by-side rebuilds, rollback, pause,
//! resume, remove and restart, while events arrive; and every way a deploy is refused.
//!
//! The fixtures: `tally` counts the events it applied per topic and key in state (an event
//! applied twice shows as a count above the truth) and writes one `seen` row per event naming
//! the version (`tag` parameter) that applied it (an event never applied shows as a missing
//! row); `tally-wide` is its version 0.2.0 with a wider table; `relay` re-emits every event to
//! `relayed`, which `tally` also counts.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::{WeirProcess, wasm, write_config};

const KEYS: usize = 40;

pub(crate) fn serve(config: &std::path::Path) -> WeirProcess {
    WeirProcess::start(&[OsStr::new("serve"), OsStr::new("--config"), config.as_os_str()])
}

/// Event `i` on topic `events`, as a JSON line.
pub(crate) fn event_line(i: usize) -> String {
    format!(r#"{{"type": "Tick", "id": "e-{i}", "key": "k{}", "data": {{"n": {i}}}}}"#, i % KEYS)
}

/// Events per key among the first `n`, as the `tally` table must count them for `topic`.
pub(crate) fn truth(topic: &str, n: usize) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        *counts.entry(format!("{topic}:k{}", i % KEYS)).or_insert(0) += 1;
    }
    counts
}

/// Produces events `from..to` in chunks of `chunk`.
pub(crate) fn produce(weir: &WeirProcess, from: usize, to: usize, chunk: usize) {
    let mut i = from;
    while i < to {
        let end = (i + chunk).min(to);
        let body: String = (i..end).map(|n| event_line(n) + "\n").collect();
        let (code, text) = weir.post("/v1/topics/events/events", body.as_bytes());
        assert_eq!(code, 200, "{text}");
        i = end;
    }
}

/// A producer on its own thread, writing until told to stop; returns how many it wrote.
pub(crate) struct Producer {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl Producer {
    pub(crate) fn start(http: &str, token: &str, from: usize) -> Producer {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(from));
        let (url, auth) = (format!("http://{http}/v1/topics/events/events"), format!("Bearer {token}"));
        let (thread_stop, thread_sent) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            while !thread_stop.load(Ordering::Relaxed) {
                let i = thread_sent.load(Ordering::Relaxed);
                let body: String = (i..i + 50).map(|n| event_line(n) + "\n").collect();
                let response = agent
                    .post(&url)
                    .header("authorization", &auth)
                    .header("content-type", "application/x-ndjson")
                    .send(body.as_bytes())
                    .expect("produce");
                assert_eq!(response.status().as_u16(), 200);
                thread_sent.store(i + 50, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Producer { stop, sent, thread }
    }

    pub(crate) fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("producer");
        self.sent.load(Ordering::Relaxed)
    }
}

/// `SELECT key, events FROM tally WHERE key LIKE 'topic:%'` as a map.
pub(crate) fn tally(weir: &WeirProcess, topic: &str) -> BTreeMap<String, i64> {
    let csv = weir.sql_csv(&format!("SELECT key, events FROM tally WHERE key LIKE '{topic}:%' ORDER BY key"));
    csv.lines()
        .skip(1)
        .map(|line| {
            let (key, events) = line.split_once(',').expect("two columns");
            (key.to_string(), events.parse().expect("a count"))
        })
        .collect()
}

/// One number a query answers.
pub(crate) fn number(weir: &WeirProcess, sql: &str) -> i64 {
    let csv = weir.sql_csv(sql);
    csv.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("{sql}: {csv}"))
}

pub(crate) fn deploy(weir: &WeirProcess, fixture: &str, query: &str) -> serde_json::Value {
    let bytes = std::fs::read(wasm(fixture)).expect("fixture wasm");
    weir.admin("POST", &format!("/v1/plugins?{query}"), Some(&bytes))
}

/// Wait until `GET /v1/plugins/{name}` satisfies `done`; panics after two minutes.
pub(crate) fn wait_plugin(
    weir: &WeirProcess,
    name: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let detail = weir.admin("GET", &format!("/v1/plugins/{name}"), None);
        if done(&detail) {
            return detail;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{name} never {what}: {detail:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until the status reports all `sent` events of `events` written and every plugin at the
/// end of every partition with nothing left to emit.
pub(crate) fn wait_applied(weir: &WeirProcess, sent: usize) {
    let started = Instant::now();
    loop {
        let status = weir.status();
        let lag = status["lag"].as_array().cloned().unwrap_or_default();
        let written: u64 = lag
            .iter()
            .filter(|l| l["topic"] == "events" && l["plugin"].as_str().is_some_and(|p| p.starts_with("tally@")))
            .map(|l| l["end"].as_u64().unwrap())
            .sum();
        if written == sent as u64 && lag.iter().all(|l| l["lag"] == 0) && status["emitted_pending"] == 0 {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "never applied {sent} events: {status:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every event on `events` applied exactly once by `tally`, and every relayed one too.
pub(crate) fn assert_exactly_once(weir: &WeirProcess, sent: usize) {
    wait_applied(weir, sent);
    assert_eq!(tally(weir, "events"), truth("events", sent), "tally of `events` differs from the truth");
    assert_eq!(tally(weir, "relayed"), truth("relayed", sent), "tally of `relayed` differs from the truth");
    assert_eq!(number(weir, "SELECT count(*) FROM seen WHERE id LIKE 'events:%'"), sent as i64);
    assert_eq!(number(weir, "SELECT count(*) FROM seen WHERE id LIKE 'relayed:%'"), sent as i64);
}

#[test]
fn deploys_swap_rebuild_roll_back_and_survive_a_restart_without_losing_or_doubling_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        write_config(dir.path(), &[("tally", "tag = \"v1\""), ("relay", "tag = \"v1\"")], "[log]\npartitions = 3\n");
    let weir = serve(&config);
    produce(&weir, 0, 1_000, 250);

    // 1. A handler's new version swaps in at a batch boundary while events arrive.
    let producer = Producer::start(&weir.http, &weir.token, 1_000);
    std::thread::sleep(Duration::from_millis(300));
    let outcome = deploy(&weir, "relay", "param=tag%3Dv2");
    assert_eq!(outcome["action"], "swapped", "{outcome}");
    assert_eq!(outcome["deploy"], 2);

    // 2. A projection's new version with take_over continues from the old one's state.
    std::thread::sleep(Duration::from_millis(300));
    let outcome = deploy(&weir, "tally", "param=tag%3Dv2&take_over=true");
    assert_eq!(outcome["action"], "swapped", "{outcome}");
    std::thread::sleep(Duration::from_millis(300));
    let sent = producer.stop();
    assert_exactly_once(&weir, sent);
    // Per partition, v1 applied a prefix and v2 the rest: never one event by both.
    let overlap = weir.sql_csv(
        "SELECT partition FROM seen WHERE id LIKE 'events:%' GROUP BY partition \
         HAVING max(CASE WHEN tag = 'v1' THEN \"offset\" END) >= min(CASE WHEN tag = 'v2' THEN \"offset\" END)",
    );
    assert_eq!(overlap.lines().count(), 1, "v1 and v2 overlap on a partition: {overlap}");
    assert!(number(&weir, "SELECT count(*) FROM seen WHERE tag = 'v2'") > 0, "v2 applied nothing");

    // 3. A version with other tables rebuilds side by side; queries never see it half built.
    let producer = Producer::start(&weir.http, &weir.token, sent);
    let outcome = deploy(&weir, "tally-wide", "param=tag%3Dv3");
    assert_eq!(outcome["action"], "rebuilding", "{outcome}");
    let mut last_applied = 0;
    let mut queries = 0;
    let started = Instant::now();
    loop {
        let csv = weir.sql_csv(
            "SELECT (SELECT sum(events) FROM tally WHERE key LIKE 'events:%') AS applied, \
             (SELECT count(*) FROM seen WHERE id LIKE 'events:%') AS seen, \
             (SELECT count(DISTINCT tag) FROM seen) AS tags",
        );
        let values: Vec<i64> = csv.lines().nth(1).unwrap().split(',').map(|v| v.parse().unwrap()).collect();
        assert_eq!(values[0], values[1], "a query saw applied counts and seen rows disagree: {csv}");
        assert!(
            values[0] >= last_applied,
            "a query saw fewer events applied ({}) than before ({last_applied})",
            values[0]
        );
        assert!(values[2] <= 2, "{csv}");
        last_applied = values[0];
        queries += 1;
        let detail = weir.admin("GET", "/v1/plugins/tally", None);
        if detail["rebuild"].is_null() && detail["deploy"] == 3 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the rebuild never finished: {detail:#}");
    }
    assert!(queries > 1);
    let sent = producer.stop();
    assert_exactly_once(&weir, sent);
    assert_eq!(number(&weir, "SELECT count(*) FROM seen WHERE tag <> 'v3'"), 0, "the rebuild kept rows of v2");
    assert_eq!(number(&weir, "SELECT count(*) FROM tally WHERE last_type = 'Tick'"), (2 * KEYS) as i64);

    // 4. Rollback returns to v2 (narrow tables: rebuilt side by side again).
    let outcome = weir.admin("POST", "/v1/plugins/tally/rollback", Some(b""));
    assert_eq!(outcome["action"], "rebuilding", "{outcome}");
    assert_eq!(outcome["deploy"], 2);
    wait_plugin(&weir, "tally", "rolled back", |d| d["rebuild"].is_null() && d["deploy"] == 2);
    assert_exactly_once(&weir, sent);
    assert_eq!(
        number(&weir, "SELECT count(*) FROM seen WHERE tag <> 'v2'"),
        0,
        "rollback did not restore v2's behaviour"
    );
    let versions = weir.admin("GET", "/v1/plugins/tally/versions", None);
    let current: Vec<_> = versions.as_array().unwrap().iter().filter(|v| v["current"] == true).collect();
    assert_eq!((versions.as_array().unwrap().len(), current[0]["deploy"].clone()), (3, 2.into()), "{versions:#}");

    // 5. The plugin's log lines are kept per plugin.
    let logs = weir.admin("GET", "/v1/plugins/relay/logs", None);
    assert!(
        logs.as_array().unwrap().iter().any(|l| l["message"].as_str().unwrap_or("").contains("relayed by v1")),
        "{logs:#}"
    );

    // 6. Pause: position and tables kept while its lag grows; a restart keeps the pause.
    let outcome = weir.admin("POST", "/v1/plugins/relay/pause", Some(b""));
    assert_eq!(outcome["action"], "paused");
    produce(&weir, sent, sent + 600, 200);
    let sent = sent + 600;
    wait_plugin(&weir, "relay", "lagged", |d| {
        d["state"] == "paused"
            && d["lag"].as_array().unwrap().iter().map(|l| l["lag"].as_u64().unwrap()).sum::<u64>() == 600
    });
    assert!(weir.terminate().success());
    let weir = serve(&config);
    let relay = weir.admin("GET", "/v1/plugins/relay", None);
    assert_eq!((relay["state"].clone(), relay["deploy"].clone()), ("paused".into(), 2.into()), "{relay:#}");
    let tally_detail = weir.admin("GET", "/v1/plugins/tally", None);
    assert_eq!(tally_detail["deploy"], 2, "the restart lost the rollback: {tally_detail:#}");
    let outcome = weir.admin("POST", "/v1/plugins/relay/resume", Some(b""));
    assert_eq!(outcome["action"], "resumed");
    assert_exactly_once(&weir, sent);
    assert_eq!(weir.status()["events_read"], 600, "the restart re-read events it had checkpointed");

    // 7. Remove drops the plugin and its tables; a restart does not bring it back.
    let outcome = weir.admin("DELETE", "/v1/plugins/tally", None);
    assert_eq!(outcome["action"], "removed");
    let (code, _) = weir.request("GET", "/v1/plugins/tally", None, &[]);
    assert_eq!(code, 404);
    assert!(!weir.get("/v1/tables").1.contains("\"seen\""));
    assert!(weir.terminate().success());
    let weir = serve(&config);
    let plugins = weir.admin("GET", "/v1/plugins", None);
    let names: Vec<_> = plugins.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["relay"]);
}

#[test]
fn a_new_plugin_deployed_into_a_running_host_reads_history_then_keeps_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("relay", "tag = \"r\"")], "[log]\npartitions = 2\n");
    let weir = serve(&config);
    produce(&weir, 0, 800, 200);
    let producer = Producer::start(&weir.http, &weir.token, 800);
    let outcome = deploy(&weir, "tally", "param=tag%3Dt&from=earliest");
    assert_eq!(outcome["action"], "deployed", "{outcome}");
    std::thread::sleep(Duration::from_millis(500));
    let sent = producer.stop();
    assert_exactly_once(&weir, sent);

    // Deployed from `latest`, a second copy under another name sees only what comes after.
    let outcome = deploy(&weir, "relay", "name=relay-late&from=latest&param=tag%3Dlate");
    assert_eq!(outcome["action"], "deployed", "{outcome}");
    produce(&weir, sent, sent + 100, 100);
    weir.wait_caught_up(sent as u64 + 100);
    let late = weir.admin("GET", "/v1/plugins/relay-late", None);
    assert_eq!(late["events_ok"], 100, "{late:#}");
}

#[test]
fn bad_deploys_and_unauthorised_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("tally", "tag = \"v1\"")], "");
    let weir = serve(&config);
    produce(&weir, 0, 100, 100);
    let auth = format!("Bearer {}", weir.token);
    let post = |path: &str, body: &[u8], headers: &[(&str, &str)]| weir.request("POST", path, Some(body), headers);
    let with_token = [("authorization", auth.as_str())];
    let read = |fixture: &str| std::fs::read(wasm(fixture)).unwrap();

    let refusals: Vec<(&str, (u16, String), u16, &str)> = vec![
        ("not wasm", post("/v1/plugins", b"hello", &with_token), 400, "not a WebAssembly"),
        ("empty body", post("/v1/plugins", b"", &with_token), 400, "it is empty"),
        ("wrong world", post("/v1/plugins", &read("wrong-world"), &with_token), 400, "world"),
        (
            "incompatible tables with take_over",
            post("/v1/plugins?take_over=true&param=tag%3Dv2", &read("tally-wide"), &with_token),
            409,
            "--take-over needs the same tables",
        ),
        (
            "a handler over a projection",
            post("/v1/plugins?name=tally", &read("relay"), &with_token),
            409,
            "keeps its kind",
        ),
        ("a bad name", post("/v1/plugins?name=Bad%20Name", &read("relay"), &with_token), 400, "not a plugin name"),
        ("a bad start", post("/v1/plugins?from=yesterday", &read("relay"), &with_token), 400, "from:"),
        ("no token", post("/v1/plugins", &read("relay"), &[]), 401, "needs the admin token"),
        (
            "a wrong token",
            post("/v1/plugins", &read("relay"), &[("authorization", "Bearer 0000000000000000000000")]),
            401,
            "not this host's admin token",
        ),
        (
            "a cross-origin page",
            post("/v1/plugins", &read("relay"), &[with_token[0], ("origin", "http://evil.example")]),
            403,
            "another origin",
        ),
        ("producing without the token", post("/v1/topics/events/events", event_line(1).as_bytes(), &[]), 401, "token"),
        (
            "pausing an unknown plugin",
            post("/v1/plugins/nope/pause", b"", &with_token),
            404,
            "no plugin named \"nope\"",
        ),
        (
            "rolling back with no older version",
            post("/v1/plugins/tally/rollback", b"", &with_token),
            409,
            "no version older",
        ),
        ("removing without the token", weir.request("DELETE", "/v1/plugins/tally", None, &[]), 401, "token"),
    ];
    for (what, (code, body), want_code, want_text) in refusals {
        assert_eq!(code, want_code, "{what}: {body}");
        let error: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: not JSON: {body}"));
        let message = error["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(want_text), "{what}: {message}");
    }
    // Reads on loopback need no token; nothing changed.
    let detail = weir.request("GET", "/v1/plugins/tally", None, &[]);
    assert_eq!(detail.0, 200);
    let detail: serde_json::Value = serde_json::from_str(&detail.1).unwrap();
    assert_eq!((detail["deploy"].clone(), detail["state"].clone()), (1.into(), "running".into()), "{detail:#}");
    assert_eq!(weir.admin("GET", "/v1/plugins/tally/versions", None).as_array().unwrap().len(), 1);
    assert_eq!(weir.admin("GET", "/v1/plugins", None).as_array().unwrap().len(), 1);
    weir.wait_caught_up(100);
    assert_eq!(number(&weir, "SELECT count(*) FROM seen"), 100);
    // The same component and parameters again is no new version.
    let outcome = deploy(&weir, "tally", "param=tag%3Dv1");
    assert_eq!(outcome["action"], "unchanged", "{outcome}");
}

/// Copy directory `from` to `to`, recursively (no `target/`).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "target" {
                copy_dir(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

pub(crate) fn succeed(out: std::process::Output, what: &str) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what} failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

#[test]
fn plugin_new_builds_outside_the_repository_and_the_cli_deploys_watches_and_operates_it() {
    let dir = tempfile::tempdir().unwrap();
    // A copy of the SDK and the WIT contract, as a user outside this repository would have.
    let copy = dir.path().join("weir-copy");
    copy_dir(&crate::support::repo().join("sdk"), &copy.join("sdk"));
    copy_dir(&crate::support::repo().join("wit"), &copy.join("wit"));
    let crate_dir = dir.path().join("shop-stats");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["plugin", "new", "shop-stats", "--kind", "projection"])
        .arg(&crate_dir)
        .arg("--sdk")
        .arg(copy.join("sdk"))
        .output()
        .unwrap();
    succeed(out, "weir plugin new");
    assert!(std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap().contains("weir-copy/sdk"));

    let config = write_config(dir.path(), &[], "[log]\npartitions = 2\n");
    let weir = serve(&config);
    let orders = weir_host::sample::OrderStream::take_events(3, 40, 400);
    let placed = orders.iter().filter(|e| e.event_type == "OrderPlaced").count() as i64;
    let file = dir.path().join("orders.jsonl");
    std::fs::write(&file, crate::support::envelope_lines(&orders)).unwrap();
    crate::support::produce_file(&format!("http://{}", weir.http), "orders", &file);

    // `weir dev` runs the crate's native tests, builds it and deploys it; then redeploys on save.
    let mut dev = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("dev")
        .arg(&crate_dir)
        .args(["--url", &format!("http://{}", weir.http)])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("dev.stderr")).unwrap())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = dev.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let wait_line = |want: &str| {
        let started = Instant::now();
        let mut seen = String::new();
        while started.elapsed() < Duration::from_secs(600) {
            if let Ok(line) = lines.recv_timeout(Duration::from_secs(1)) {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(want) {
                    return;
                }
            }
        }
        let errors = std::fs::read_to_string(dir.path().join("dev.stderr")).unwrap_or_default();
        let tail: Vec<&str> = errors.lines().rev().take(40).collect();
        panic!("weir dev never said {want:?}; it said:\n{seen}\nstderr, last lines:\n{}", tail.join("\n"));
    };
    wait_line("deployed (deploy 1)");
    let sum = |weir: &WeirProcess| number(weir, "SELECT coalesce(sum(orders), 0) FROM shop_stats_counts");
    let started = Instant::now();
    while sum(&weir) != placed {
        assert!(started.elapsed() < Duration::from_secs(60), "shop_stats_counts never counted {placed} orders");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A save: a new version, rebuilt beside the first and switched to.
    let lib = crate_dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(&lib, source.replace("Orders placed and their amount, per customer", "Orders per customer (v2)"))
        .unwrap();
    wait_line("(deploy 2)");
    let _ = dev.kill();
    let _ = dev.wait();
    wait_plugin(&weir, "shop-stats", "switched to deploy 2", |d| d["deploy"] == 2 && d["rebuild"].is_null());
    assert_eq!(sum(&weir), placed);

    // The CLI's verbs, for people and for scripts.
    let list = succeed(weir.cli(&["plugin", "list", "--json"]), "weir plugin list");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["name"], "shop-stats");
    let table = succeed(weir.cli(&["plugin", "list"]), "weir plugin list");
    assert!(table.contains("shop-stats") && table.contains("running"), "{table}");
    let versions = succeed(weir.cli(&["plugin", "versions", "shop-stats"]), "weir plugin versions");
    assert_eq!(versions.lines().filter(|l| l.contains("api")).count(), 2, "{versions}");
    succeed(weir.cli(&["plugin", "pause", "shop-stats"]), "weir plugin pause");
    let status = succeed(weir.cli(&["plugin", "status", "shop-stats"]), "weir plugin status");
    assert!(status.contains("paused"), "{status}");
    succeed(weir.cli(&["plugin", "resume", "shop-stats"]), "weir plugin resume");
    let rebuilt = succeed(weir.cli(&["plugin", "rebuild", "shop-stats", "--wait"]), "weir plugin rebuild --wait");
    assert!(rebuilt.contains("switched to shop-stats@"), "{rebuilt}");
    assert_eq!(sum(&weir), placed);
    let refused = weir.cli(&["plugin", "pause", "no-such-plugin"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no plugin named \"no-such-plugin\""));
    let wrong = weir.cli(&["plugin", "remove", "shop-stats", "--token", "0000000000000000000000"]);
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("WEIR_TOKEN"), "{wrong:?}");
    succeed(weir.cli(&["plugin", "remove", "shop-stats"]), "weir plugin remove");
}

#[test]
fn a_rebuild_cut_by_kill_9_starts_again_while_the_old_tables_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        write_config(dir.path(), &[("tally", "tag = \"v1\""), ("relay", "tag = \"v1\"")], "[log]\npartitions = 2\n");
    let weir = serve(&config);
    let sent = 12_000;
    produce(&weir, 0, sent, 2_000);
    assert_exactly_once(&weir, sent);
    // A checkpoint (every 150 ms) holds all of it before the kill.
    std::thread::sleep(Duration::from_millis(600));
    let outcome = deploy(&weir, "tally-wide", "param=tag%3Dv2");
    assert_eq!(outcome["action"], "rebuilding", "{outcome}");
    std::thread::sleep(Duration::from_millis(50));
    weir.kill9();

    let weir = serve(&config);
    // Whatever instant the kill hit, the tables serve whole: v1's, or v2's once it has caught up.
    let applied = number(&weir, "SELECT sum(events) FROM tally WHERE key LIKE 'events:%'");
    assert_eq!(applied, number(&weir, "SELECT count(*) FROM seen WHERE id LIKE 'events:%'"));
    assert_eq!(applied, sent as i64, "a restart served a half-built table");
    wait_plugin(&weir, "tally", "finished the rebuild", |d| d["deploy"] == 2 && d["rebuild"].is_null());
    assert_exactly_once(&weir, sent);
    assert_eq!(number(&weir, "SELECT count(*) FROM seen WHERE tag <> 'v2'"), 0);
}

/// `weir demo --data-dir X` empties X first; it must not do so under a running host.
#[test]
fn demo_refuses_a_data_directory_a_running_host_holds_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("relay", "")], "");
    let weir = serve(&config);
    produce(&weir, 0, 10, 10);
    let data = dir.path().join("data");
    let before: Vec<_> = std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name()).collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["demo", "--no-serve", "--events", "100", "--pg", "off", "--flight", "off", "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the demo ran in a data directory a host holds");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another weir process is using data directory"), "{stderr}");
    let after: Vec<_> = std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after, "the demo deleted files of a running host");
    assert!(weir.admin("GET", "/v1/plugins/relay", None)["events_ok"].as_u64().is_some());
}

/// Run `weir serve` expecting it to refuse to start: its standard error (fails after 60 s).
fn serve_refused(config: &std::path::Path) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--config"])
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("weir serve started where it must refuse to");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    stderr
}

/// A log that lost its tail after the checkpoint (fsync = "never" and a power cut) leaves
/// plugins' positions past its end; starting anyway would skip the events written there next.
#[test]
fn positions_past_the_end_of_the_log_are_refused_at_start_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("tally", "tag = \"v1\"")], "[log]\npartitions = 1\n");
    let weir = serve(&config);
    produce(&weir, 0, 100, 100);
    wait_applied(&weir, 100);
    assert!(weir.terminate().success());
    // The last 40 events' bytes never reached the disk.
    let segment = dir.path().join("data/log/events/0/00000000000000000000.log");
    let log = weir_log::EmbeddedLog::open(&dir.path().join("data/log"), weir_log::LogConfig::default()).unwrap();
    let cut = log.read("events", 0, 60, 1).unwrap()[0].position.offset;
    drop(log);
    let bytes = std::fs::read(&segment).unwrap();
    let keep = (0..bytes.len())
        .rev()
        .find(|&n| {
            std::fs::write(&segment, &bytes[..n]).unwrap();
            weir_log::EmbeddedLog::open(&dir.path().join("data/log"), weir_log::LogConfig::default())
                .map(|l| l.ranges("events").unwrap()[0].end == cut)
                .unwrap_or(false)
        })
        .unwrap();
    std::fs::write(&segment, &bytes[..keep]).unwrap();
    let stderr = serve_refused(&config);
    assert!(stderr.contains("tally@0.1.0 is at events/0@100 but the embedded log's events/0 ends at 60"), "{stderr}");
}

/// Retention must not delete what a plugin still needs: a paused plugin's events stay in the
/// log however far the others (and the size limit) have moved on.
#[test]
fn retention_keeps_what_a_paused_plugin_still_needs() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &[("tally", "tag = \"v1\""), ("relay", "tag = \"v1\"")],
        "[log]\npartitions = 1\nsegment_bytes = 4096\nretention_bytes = 16384\n",
    );
    let weir = serve(&config);
    produce(&weir, 0, 100, 100);
    assert_exactly_once(&weir, 100);
    assert_eq!(weir.admin("POST", "/v1/plugins/relay/pause", Some(b""))["action"], "paused");
    // Far more than retention keeps.
    produce(&weir, 100, 2_000, 100);
    let outcome = weir.admin("POST", "/v1/plugins/relay/resume", Some(b""));
    assert_eq!(outcome["action"], "resumed");
    assert_exactly_once(&weir, 2_000);
}
