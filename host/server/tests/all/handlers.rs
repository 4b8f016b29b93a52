//! Handlers you can trust: what a handler emits is in its output topic exactly once across
//! `kill -9`s (same ids, same content), downstream plugins apply it once; an event a plugin fails
//! on goes to its dead-letter topic with why and where, the stream goes on, and a fixed version
//! drains the dead letters; the `stop` policy holds the plugin at the event instead; an emitted
//! event the sink would refuse is dead-lettered, not retried.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use weir_log::{EmbeddedLog, LogConfig};

use crate::lifecycle::{Producer, assert_exactly_once, deploy, number, produce, serve, succeed, wait_plugin};
use crate::support::{WeirProcess, wasm, write_config};

/// Every event of `topic` in the embedded log under `data`, partition by partition.
pub(crate) fn read_topic(data: &std::path::Path, topic: &str) -> Vec<weir_core::event::Event> {
    let log = EmbeddedLog::open(&data.join("log"), LogConfig::default()).unwrap();
    let mut events = Vec::new();
    for range in log.ranges(topic).unwrap_or_default() {
        let mut next = range.start;
        loop {
            let batch = log.read(topic, range.partition, next, 1 << 20).unwrap();
            let Some(last) = batch.last() else { break };
            next = last.position.offset + 1;
            events.extend(batch);
        }
    }
    events
}

#[test]
fn emitted_events_exist_once_with_the_same_content_after_kill_9_at_any_instant() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("relay", ""), ("tally", "")], "[log]\npartitions = 3\n");
    // Checkpoints a second apart: most kills land between an emit and the checkpoint after it,
    // the first ones before any checkpoint at all.
    let text = std::fs::read_to_string(&config).unwrap().replace("interval_ms = 150", "interval_ms = 1000");
    std::fs::write(&config, text).unwrap();
    let mut weir = serve(&config);
    let mut sent = 0;
    for round in 0..7 {
        produce(&weir, sent, sent + 3_000, 500);
        sent += 3_000;
        std::thread::sleep(Duration::from_millis(30 + 160 * (round % 4)));
        weir.kill9();
        weir = serve(&config);
    }
    assert_exactly_once(&weir, sent);
    assert!(weir.terminate().success());

    // The output topic itself: each id once, and the content a crash-free run gives: per key,
    // the relay's counter runs 1, 2, ... n with no repeat and no gap.
    let relayed = read_topic(&dir.path().join("data"), "relayed");
    let ids: BTreeSet<&str> = relayed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), relayed.len(), "an emitted id is in the output topic twice");
    assert_eq!(relayed.len(), sent, "emitted events lost or doubled");
    let mut counters: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in &relayed {
        let payload: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        counters.entry(event.key.clone().unwrap()).or_default().push(payload["relayed"].as_u64().unwrap());
        let causation = event.causation_id.as_deref().unwrap();
        assert!(event.id.starts_with("relay/events/"), "{}", event.id);
        assert!(causation.starts_with("e-"), "causation id {causation}");
    }
    for (key, mut seen) in counters {
        seen.sort_unstable();
        let expected: Vec<u64> = (1..=seen.len() as u64).collect();
        assert_eq!(seen, expected, "key {key}: the relay's output differs from a crash-free run");
    }
}

/// `count` events on topic `fixtures`, of type `Misbehave` at the offsets in `bad` and `Fine`
/// elsewhere, keyed so they all land on one partition.
fn produce_fixtures(weir: &WeirProcess, from: usize, count: usize, bad: &[usize]) {
    let body: String = (from..from + count)
        .map(|i| {
            let kind = if bad.contains(&i) { "Misbehave" } else { "Fine" };
            format!("{{\"type\": \"{kind}\", \"id\": \"f-{i}\", \"key\": \"k\", \"data\": {{\"i\": {i}}}}}\n")
        })
        .collect();
    let (code, text) = weir.post("/v1/topics/fixtures/events", body.as_bytes());
    assert_eq!(code, 200, "{text}");
}

fn plugin_detail(weir: &WeirProcess, name: &str) -> serde_json::Value {
    weir.admin("GET", &format!("/v1/plugins/{name}"), None)
}

#[test]
fn a_poison_event_is_dead_lettered_the_stream_goes_on_and_a_fixed_version_drains_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("panic", "")], "[log]\npartitions = 1\n");
    let mut weir = serve(&config);
    let bad = [3, 7, 12];
    produce_fixtures(&weir, 0, 20, &bad);
    wait_plugin(&weir, "panic", "dead-lettered 3 events", |d| d["dead_letters"] == 3 && d["events_ok"] == 17);
    // The events after each poison one went through, each once.
    assert_eq!(number(&weir, "SELECT count(*) FROM seen"), 17);
    assert_eq!(number(&weir, "SELECT max(count) FROM seen"), 17);

    let letters = weir.admin("GET", "/v1/plugins/panic/dlq", None);
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 3, "{letters:#?}");
    for (letter, offset) in letters.iter().zip(bad) {
        assert_eq!(letter["origin"], format!("fixtures/0@{offset}"));
        assert_eq!(letter["id"], format!("f-{offset}"));
        assert_eq!(letter["event_type"], "Misbehave");
        assert_eq!(letter["plugin"], "panic@0.1.0");
        assert_eq!(letter["kind"], "trapped");
        assert_eq!(letter["attempts"], 1, "a plugin's own failure is not tried again");
        let error = letter["error"].as_str().unwrap();
        assert!(error.contains(&format!("fixture panic on event at offset {offset}")), "{error}");
    }
    let at = format!("{}/{}", letters[1]["partition"], letters[1]["offset"]);
    let shown = succeed(weir.cli(&["dlq", "show", "panic", &at]), "weir dlq show");
    assert!(shown.contains("\"payload\": \"{\\\"i\\\":7}\"") || shown.contains("{\\\"i\\\":7}"), "{shown}");
    let listed = succeed(weir.cli(&["dlq", "list", "panic"]), "weir dlq list");
    assert!(listed.contains("fixtures/0@12") && listed.contains("fixture panic"), "{listed}");
    let status = succeed(weir.cli(&["status"]), "weir status");
    assert!(status.contains("dead letters"), "{status}");

    // The headers in the dead-letter topic itself (checked after a restart: nothing lost).
    assert!(weir.terminate().success());
    let raw = read_topic(&dir.path().join("data"), "weir.dlq.panic");
    assert_eq!(raw.len(), 3);
    let header = |e: &weir_core::event::Event, name: &str| {
        e.headers.iter().find(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header(&raw[0], "weir-dlq-topic").as_deref(), Some("fixtures"));
    assert_eq!(header(&raw[0], "weir-dlq-offset").as_deref(), Some("3"));
    assert_eq!(header(&raw[0], "weir-dlq-plugin").as_deref(), Some("panic@0.1.0"));
    assert_eq!(header(&raw[0], "weir-dlq-attempts").as_deref(), Some("1"));
    assert!(header(&raw[0], "weir-dlq-error").unwrap().contains("fixture panic"));
    weir = serve(&config);
    wait_plugin(&weir, "panic", "restored", |d| d["dead_letters"] == 3);

    // A fixed version takes over; replaying runs the dead letters through it, once each.
    let swapped = deploy(&weir, "panic", "take_over=true&param=fixed%3D1");
    assert_eq!(swapped["action"], "swapped", "{swapped:#}");
    let replayed = succeed(weir.cli(&["dlq", "replay", "panic"]), "weir dlq replay");
    assert!(replayed.contains("3 dead letters of panic ran through panic@0.1.0: 3 succeeded"), "{replayed}");
    assert_eq!(weir.admin("GET", "/v1/plugins/panic/dlq", None), serde_json::json!([]));
    assert_eq!(plugin_detail(&weir, "panic")["dead_letters"], 0);
    assert_eq!(number(&weir, "SELECT count(*) FROM seen"), 20);
    assert_eq!(number(&weir, "SELECT max(count) FROM seen"), 20);
    // Replaying again finds nothing; a restart keeps them resolved.
    let again = succeed(weir.cli(&["dlq", "replay", "panic"]), "weir dlq replay");
    assert!(again.contains("0 dead letters"), "{again}");
    assert!(weir.terminate().success());
    let weir = serve(&config);
    wait_plugin(&weir, "panic", "restored", |d| d["dead_letters"] == 0);
    assert_eq!(number(&weir, "SELECT max(count) FROM seen"), 20);
}

#[test]
fn the_stop_policy_holds_a_plugin_at_the_failed_event_until_a_fixed_version_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[], "[log]\npartitions = 1\n");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("[[plugin]]\npath = {:?}\non_error = \"stop\"\n", wasm("panic")));
    std::fs::write(&config, text).unwrap();
    let weir = serve(&config);
    produce_fixtures(&weir, 0, 10, &[5]);
    let detail = wait_plugin(&weir, "panic", "stopped", |d| d["state"] == "failed");
    assert!(detail["stopped"].as_str().unwrap().contains("fixtures/0@5"), "{detail:#}");
    assert_eq!(detail["on_error"], "stop");
    assert_eq!(detail["dead_letters"], 0, "under `stop` nothing is dead-lettered");
    assert_eq!(number(&weir, "SELECT count(*) FROM seen"), 5, "it went past the event it failed on");
    assert_eq!(detail["lag"][0]["position"], 5, "{detail:#}");

    let swapped = deploy(&weir, "panic", "take_over=true&param=fixed%3D1&on_error=stop");
    assert_eq!(swapped["action"], "swapped", "{swapped:#}");
    succeed(weir.cli(&["plugin", "resume", "panic"]), "weir plugin resume");
    wait_plugin(&weir, "panic", "caught up", |d| d["state"] == "running" && d["lag"][0]["lag"] == 0);
    assert_eq!(number(&weir, "SELECT count(*) FROM seen"), 10);
    assert_eq!(number(&weir, "SELECT max(count) FROM seen"), 10);
}

#[test]
fn an_emitted_event_over_the_record_limit_is_dead_lettered_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    // The per-event output cap raised past the log's 16 MiB record limit, so the sink's limit
    // is the one that refuses.
    let config = write_config(
        dir.path(),
        &[("relay", "pad_type = \"Big\", pad_bytes = \"17000000\"")],
        "[log]\npartitions = 1\n[limits]\nmax_output_bytes_per_event = 67108864\nmemory_bytes = 268435456\n",
    );
    let weir = serve(&config);
    let body: String = (0..10)
        .map(|i| {
            let kind = if i == 4 { "Big" } else { "Tick" };
            format!("{{\"type\": \"{kind}\", \"id\": \"e-{i}\", \"key\": \"k\", \"data\": {{\"n\": {i}}}}}\n")
        })
        .collect();
    assert_eq!(weir.post("/v1/topics/events/events", body.as_bytes()).0, 200);
    let detail = wait_plugin(&weir, "relay", "dead-lettered the big one", |d| {
        d["dead_letters"] == 1 && d["events_ok"] == 9 && d["lag"][0]["lag"] == 0
    });
    assert_eq!(detail["events_failed"], 1, "{detail:#}");
    let letters = weir.admin("GET", "/v1/plugins/relay/dlq", None);
    assert_eq!(letters[0]["kind"], "output_refused", "{letters:#}");
    assert_eq!(letters[0]["origin"], "events/0@4");
    assert!(
        letters[0]["error"].as_str().unwrap().contains("over the embedded log's limit of 16777216 bytes"),
        "{letters:#}"
    );
    assert_eq!(weir.status()["emitted_pending"], 0, "the refused event is not waiting to be retried");
    assert!(weir.terminate().success());
    let relayed = read_topic(&dir.path().join("data"), "relayed");
    assert_eq!(relayed.len(), 9);
}

/// The order saga's four plugins with test parameters (steps time out after 3 s; payments over
/// 3,000 are declined), ticks every 200 ms, checkpoints every second.
fn saga_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let config = write_config(
        dir,
        &[
            ("order-saga", "timeout_ms = \"3000\""),
            ("inventory-service", ""),
            ("payment-service", "decline_over = \"3000\""),
            ("saga-view", ""),
        ],
        extra,
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("batch_size = 256\n", "batch_size = 256\ntick_ms = 200\n")
        .replace("interval_ms = 150", "interval_ms = 1000");
    std::fs::write(&config, text).unwrap();
    config
}

/// Every saga ended, none stuck, no money or stock held that should not be, each kind of failure
/// seen; `placed` orders in all.
pub(crate) fn assert_sagas_settled(weir: &WeirProcess, placed: usize) {
    let started = std::time::Instant::now();
    loop {
        let all = number(weir, "SELECT count(*) FROM sagas");
        let running = number(weir, "SELECT count(*) FROM sagas WHERE status = 'running'");
        if all == placed as i64 && running == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "{all} of {placed} sagas, {running} still running");
        std::thread::sleep(Duration::from_millis(200));
    }
    let none = |what: &str, sql: &str| {
        let found = number(weir, sql);
        if found > 0 {
            let example = weir.sql_csv(
                &(sql
                    .replace("SELECT count(*) FROM sagas", "SELECT * FROM sagas")
                    .replace("SELECT count(*) FROM sagas s", "SELECT s.* FROM sagas s")
                    + " LIMIT 3"),
            );
            let flow = example.lines().nth(1).and_then(|l| l.split(',').nth(8)).map(|c| {
                weir.sql_csv(&format!("SELECT seq, topic, event_type, event_id, causation_id FROM saga_events WHERE correlation_id = '{c}' ORDER BY seq"))
            });
            panic!("{what}: {found} sagas ({sql}), for example\n{example}\nits flow:\n{}", flow.unwrap_or_default());
        }
    };
    none(
        "confirmed without exactly one charge",
        "SELECT count(*) FROM sagas WHERE status = 'confirmed' AND (charges <> 1 OR refunds <> 0)",
    );
    none("cancelled holding money", "SELECT count(*) FROM sagas WHERE status = 'cancelled' AND charges <> refunds");
    none("charged twice", "SELECT count(*) FROM sagas WHERE charges > 1");
    none("ended in neither state", "SELECT count(*) FROM sagas WHERE status NOT IN ('confirmed', 'cancelled')");
    none(
        "cancelled holding stock",
        "SELECT count(*) FROM sagas s WHERE s.status = 'cancelled' \
         AND EXISTS (SELECT 1 FROM saga_events e WHERE e.order_id = s.order_id AND e.event_type = 'InventoryReserved') \
         AND NOT EXISTS (SELECT 1 FROM saga_events e WHERE e.order_id = s.order_id AND e.event_type = 'InventoryReleased')",
    );
    for reason in ["payment declined", "inventory rejected", "payment did not answer in time"] {
        let n = number(weir, &format!("SELECT count(*) FROM sagas WHERE reason LIKE '{reason}%'"));
        let reasons = weir.sql_csv("SELECT reason, count(*) FROM sagas GROUP BY reason ORDER BY reason");
        assert!(n > 0, "no saga was cancelled for {reason:?}; the reasons:\n{reasons}");
    }
    assert!(number(weir, "SELECT count(*) FROM sagas WHERE status = 'confirmed'") > placed as i64 / 2);
}

#[test]
fn every_order_saga_ends_confirmed_or_compensated_through_kill_9_and_nothing_is_emitted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let config = saga_config(dir.path(), "[log]\npartitions = 2\n");
    let events = weir_host::sample::OrderStream::take_events(7, 300, 6_000);
    let placed = events.iter().filter(|e| e.event_type == "OrderPlaced").count();
    let mut weir = serve(&config);
    for (round, chunk) in events.chunks(1_500).enumerate() {
        let (code, body) = weir.post("/v1/topics/orders/events", &crate::support::envelope_lines(chunk));
        assert_eq!(code, 200, "{body}");
        // Mid-saga: during emits, between an emit and the checkpoint after it, during one.
        std::thread::sleep(Duration::from_millis(200 + 350 * round as u64));
        weir.kill9();
        weir = serve(&config);
    }
    assert_sagas_settled(&weir, placed);
    let trapped = plugin_detail(&weir, "payment-service");
    assert!(trapped["dead_letters"].as_u64().unwrap() > 0, "the gateway's crashes were not dead-lettered: {trapped:#}");

    // A flow can be followed by its correlation id: the order's own id, carried by every step.
    let flow = weir.sql_csv(
        "SELECT event_type FROM saga_events WHERE correlation_id = (SELECT min(correlation_id) FROM sagas WHERE status = 'confirmed') ORDER BY seq",
    );
    for step in ["ReserveInventory", "InventoryReserved", "ChargePayment", "PaymentCharged"] {
        assert!(flow.contains(step), "{flow}");
    }
    assert!(weir.terminate().success());
    for topic in ["inventory-commands", "inventory-events", "payment-commands", "payment-events", "saga-events"] {
        let written = read_topic(&dir.path().join("data"), topic);
        let ids: BTreeSet<&str> = written.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), written.len(), "{topic} holds an emitted id twice");
    }
}

#[test]
fn a_handler_whose_parameters_change_in_the_config_continues_and_does_not_emit_its_history_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("relay", "tag = \"v1\""), ("tally", "")], "[log]\npartitions = 2\n");
    let weir = serve(&config);
    produce(&weir, 0, 300, 100);
    crate::lifecycle::wait_applied(&weir, 300);
    assert!(weir.terminate().success());

    let text = std::fs::read_to_string(&config).unwrap().replace("tag = \"v1\"", "tag = \"v2\"");
    std::fs::write(&config, text).unwrap();
    let weir = serve(&config);
    produce(&weir, 300, 500, 100);
    assert_exactly_once(&weir, 500);
    let detail = plugin_detail(&weir, "relay");
    assert_eq!(detail["params"]["tag"], "v2", "{detail:#}");
    assert_eq!(detail["deploy"], 2, "{detail:#}");
    assert!(weir.terminate().success());
    let relayed = read_topic(&dir.path().join("data"), "relayed");
    let tags: Vec<String> = relayed
        .iter()
        .map(|e| serde_json::from_slice::<serde_json::Value>(&e.payload).unwrap()["tag"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(relayed.len(), 500, "the new version emitted history again");
    assert_eq!(tags.iter().filter(|t| *t == "v2").count(), 200, "{tags:?}");
}

/// `config` with ticks every `tick_ms`.
fn with_ticks(config: &std::path::Path, tick_ms: u64) {
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("batch_size = 256\n", &format!("batch_size = 256\ntick_ms = {tick_ms}\n"));
    std::fs::write(config, text).unwrap();
}

/// Issue 32: a tick the loop queued was replaced by the output of the batch processed in the
/// same turn, so while events arrived without pause timers fired late or never. `alarm` arms a
/// timer due 1 s later while a producer keeps `events` busy; it must fire on one of the first
/// two ticks at or after its time.
#[test]
fn a_timer_fires_within_two_ticks_of_its_time_while_events_arrive_without_pause() {
    const TICK_MS: i64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("alarm", ""), ("tally", "")], "[log]\npartitions = 1\n");
    with_ticks(&config, TICK_MS as u64);
    let weir = serve(&config);
    let arm = br#"{"type": "Arm", "id": "arm-1", "key": "a", "data": {"after_ms": 1000}}"#;
    let (code, text) = weir.post("/v1/topics/alarms/events", arm);
    assert_eq!(code, 200, "{text}");
    // A backlog written as fast as the API takes it, then a producer: every poll finds events.
    produce(&weir, 0, 60_000, 2_000);
    let producer = Producer::start(&weir.http, &weir.token, 60_000);
    std::thread::sleep(Duration::from_secs(3));
    let sent = producer.stop();
    assert!(weir.terminate().success());
    let data = dir.path().join("data");
    assert!(read_topic(&data, "events").len() >= sent.min(1), "the producer wrote nothing");
    let rang = read_topic(&data, "rang");
    assert_eq!(rang.len(), 1, "the timer fired {} times while {sent} events arrived, not once", rang.len());
    let due = rang[0].time_us;
    let cause =
        weir_host::output::header(&rang[0], weir_host::output::CAUSE).expect("the tick that fired it").to_string();
    let ticks = read_topic(&data, "weir.ticks");
    let tick = ticks.iter().find(|t| t.position.to_string() == cause).unwrap_or_else(|| panic!("no tick at {cause}"));
    let late_ms = (tick.time_us - due) / 1000;
    assert!(late_ms >= 0, "fired by a tick {late_ms} ms before its time");
    assert!(late_ms <= 2 * TICK_MS, "fired {late_ms} ms after its time, more than two ticks of {TICK_MS} ms");
}

/// Issue 32: what a handler's `dlq replay` emitted was replaced by the output of the batch
/// processed in the same turn. `relay` dead-letters events of type `Big` (their output is over
/// the sink's record limit); a version without the padding replays them while a producer keeps
/// `events` busy: every replayed event's output must be written.
#[test]
fn a_handlers_dead_letter_replay_writes_every_output_while_events_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let padded = "tag = \"v1\", pad_type = \"Big\", pad_bytes = \"17000000\"";
    let config = write_config(dir.path(), &[("relay", padded)], "[log]\npartitions = 1\n");
    let weir = serve(&config);
    let big: String = (0..20)
        .map(|i| format!("{{\"type\": \"Big\", \"id\": \"big-{i}\", \"key\": \"b{i}\", \"data\": {{}}}}\n"))
        .collect();
    let (code, text) = weir.post("/v1/topics/events/events", big.as_bytes());
    assert_eq!(code, 200, "{text}");
    wait_plugin(&weir, "relay", "dead-lettered the 20 big events", |d| d["dead_letters"] == 20);
    let producer = Producer::start(&weir.http, &weir.token, 0);
    let outcome = deploy(&weir, "relay", "param=tag%3Dv2");
    assert_eq!(outcome["action"], "swapped", "{outcome}");
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(200));
        let replayed = weir.admin("POST", "/v1/plugins/relay/dlq/replay", None);
        assert!(replayed["message"].as_str().is_some(), "{replayed}");
    }
    let sent = producer.stop();
    wait_plugin(&weir, "relay", "resolved every dead letter", |d| d["dead_letters"] == 0);
    let status = weir.status();
    assert_eq!(status["emitted_pending"], 0, "{status:#}");
    assert!(weir.terminate().success());
    let relayed = read_topic(&dir.path().join("data"), "relayed");
    let bigs: BTreeSet<String> =
        relayed.iter().filter(|e| e.event_type == "Big").map(|e| e.key.clone().unwrap()).collect();
    let expected: BTreeSet<String> = (0..20).map(|i| format!("b{i}")).collect();
    assert_eq!(bigs, expected, "replayed dead letters whose output was not written ({sent} events produced meanwhile)");
}
