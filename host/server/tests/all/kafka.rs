//! weir on a real Kafka-protocol broker (tansu, started per test on a free loopback port):
//! events produced with rdkafka and CloudEvents headers, consumed by real `weir` processes.
//!
//! tansu's high watermark is the last batch's base offset + 1, so it under-reports the end of a
//! partition written in multi-record batches; these tests therefore wait on the read models' own
//! answers, never on reported lag.

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use weir_core::event::Event;
use weir_host::sample::OrderStream;

use crate::ingest::{ORDERS_CSV, REVENUE_CSV, truth};
use crate::support::{Tansu, WeirProcess, wasm};

pub(crate) fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let results = runtime
        .block_on(
            admin.create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new()),
        )
        .expect("create_topics");
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("creating topic {name}: {code}"));
    }
}

/// Produce with the CloudEvents Kafka binding: key = aggregate id, ce_* headers, raw JSON payload.
fn produce(brokers: &str, topic: &str, events: &[Event]) {
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "20").create().expect("producer");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for chunk in events.chunks(5_000) {
        let mut deliveries = Vec::new();
        for e in chunk {
            let time = chrono::DateTime::from_timestamp_micros(e.time_us).unwrap().to_rfc3339();
            let headers = OwnedHeaders::new()
                .insert(Header { key: "ce_specversion", value: Some("1.0") })
                .insert(Header { key: "ce_id", value: Some(e.id.as_str()) })
                .insert(Header { key: "ce_type", value: Some(e.event_type.as_str()) })
                .insert(Header { key: "ce_source", value: Some("weir-tests") })
                .insert(Header { key: "ce_time", value: Some(time.as_str()) })
                .insert(Header { key: "content-type", value: Some("application/json") });
            let record =
                FutureRecord::to(topic).key(e.key.as_deref().unwrap_or_default()).payload(&e.payload).headers(headers);
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e).expect("enqueue"));
        }
        for d in deliveries {
            runtime.block_on(d).expect("delivery").expect("delivered");
        }
    }
}

fn config(dir: &std::path::Path, brokers: &str, group: &str) -> std::path::PathBuf {
    let text = format!(
        "[server]\nhttp = \"127.0.0.1:0\"\npg = \"127.0.0.1:0\"\nflight = \"127.0.0.1:0\"\ndata_dir = \"data\"\nbatch_size = 512\n\n[checkpoint]\ninterval_ms = 200\n\n\
         [kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"{group}\"\nsession_timeout_ms = 6000\n\n[[plugin]]\npath = {:?}\n",
        wasm("orders")
    );
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn serve(config: &std::path::Path) -> WeirProcess {
    WeirProcess::start(&[OsStr::new("serve"), OsStr::new("--config"), config.as_os_str()])
}

/// Poll until `check` holds; panics with the last value after `secs`.
fn eventually<T: std::fmt::Debug>(secs: u64, mut probe: impl FnMut() -> T, check: impl Fn(&T) -> bool) -> T {
    let started = Instant::now();
    loop {
        let value = probe();
        if check(&value) {
            return value;
        }
        assert!(started.elapsed() < Duration::from_secs(secs), "still not there after {secs} s: {value:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn events_read(weir: &WeirProcess) -> u64 {
    weir.status()["events_read"].as_u64().unwrap_or(0)
}

#[test]
fn cloudevents_from_kafka_reach_sql_exactly_once_across_kill_9_and_restart() {
    let tansu = Tansu::start();
    create_topic(&tansu.brokers, "orders", 3);
    let events = OrderStream::take_events(21, 500, 100_000);
    let (orders_truth, revenue_truth) = truth(&events);
    produce(&tansu.brokers, "orders", &events[..60_000]);

    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &tansu.brokers, "weir-test");
    let weir = serve(&config);
    // Pull the plug mid-stream, after checkpoints but before the end.
    eventually(120, || events_read(&weir), |n| *n >= 25_000);
    weir.kill9();

    let weir = serve(&config);
    produce(&tansu.brokers, "orders", &events[60_000..]);
    eventually(180, || weir.sql_csv(REVENUE_CSV), |csv| *csv == revenue_truth);
    assert_eq!(weir.sql_csv(ORDERS_CSV), orders_truth, "orders differ from a crash-free run");
    let status = weir.status();
    assert!(
        status["source"].as_str().unwrap().starts_with(&format!("kafka {} group weir-test", tansu.brokers)),
        "{status:#}"
    );

    // A clean stop checkpoints and commits to the group; a restart reads nothing again.
    assert!(weir.terminate().success());
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &tansu.brokers).set("group.id", "weir-test").create().unwrap();
    let mut partitions = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        partitions.add_partition("orders", p);
    }
    let committed = consumer.committed_offsets(partitions, Duration::from_secs(10)).expect("committed offsets");
    let total: i64 = committed.elements().iter().map(|e| e.offset().to_raw().unwrap_or(0)).sum();
    assert_eq!(total, 100_000, "the group's committed offsets do not cover every event: {committed:?}");
    drop(consumer);

    let weir = serve(&config);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(events_read(&weir), 0, "a restart after a clean stop re-read events");
    assert_eq!(weir.sql_csv(ORDERS_CSV), orders_truth);
}

#[test]
fn two_processes_in_one_group_split_the_partitions_and_apply_each_event_once() {
    let tansu = Tansu::start();
    create_topic(&tansu.brokers, "orders", 4);
    let dir = tempfile::tempdir().unwrap();
    let a = serve(&config(&dir.path().join("a"), &tansu.brokers, "pair"));
    let b = serve(&config(&dir.path().join("b"), &tansu.brokers, "pair"));
    let assigned = |w: &WeirProcess| {
        let source = w.status()["source"].as_str().unwrap_or("").to_string();
        source.split('(').nth(1).and_then(|s| s.split(' ').next()).and_then(|n| n.parse::<u32>().ok()).unwrap_or(0)
    };
    // Both members joined: the group's four partitions split between them.
    eventually(60, || (assigned(&a), assigned(&b)), |(x, y)| *x > 0 && *y > 0 && x + y == 4);

    let events = OrderStream::take_events(33, 400, 30_000);
    let (orders_truth, _) = truth(&events);
    produce(&tansu.brokers, "orders", &events);
    let rows = |w: &WeirProcess| {
        w.sql_csv("SELECT count(*) AS n FROM orders").lines().nth(1).unwrap().parse::<usize>().unwrap()
    };
    let expected = orders_truth.lines().count() - 1;
    eventually(180, || (rows(&a), rows(&b)), |(x, y)| x + y >= expected);
    // Every order is in exactly one of the two read models, exactly as a single process has it.
    let mut union: Vec<String> = [&a, &b]
        .iter()
        .flat_map(|w| w.sql_csv(ORDERS_CSV).lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .collect();
    union.sort();
    let mut want: Vec<String> = orders_truth.lines().skip(1).map(str::to_string).collect();
    want.sort();
    assert_eq!(union.len(), want.len(), "orders applied twice or lost between the two members");
    assert_eq!(union, want);
}

/// Events the orders plugin processed (successfully or not) in one process.
fn events_processed(weir: &WeirProcess) -> u64 {
    let status = weir.status();
    status["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "orders")
        .map(|p| p["events_ok"].as_u64().unwrap() + p["events_failed"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_member_joining_mid_stream_gets_partitions_only_after_the_first_checkpointed_them() {
    let tansu = Tansu::start();
    create_topic(&tansu.brokers, "orders", 4);
    let events = OrderStream::take_events(66, 500, 80_000);
    let dir = tempfile::tempdir().unwrap();
    // Checkpoints far apart: only the hand-over's own checkpoint can make the positions exact.
    let slow_checkpoints = |name: &str| {
        let path = config(&dir.path().join(name), &tansu.brokers, "handover");
        let text = std::fs::read_to_string(&path).unwrap().replace("interval_ms = 200", "interval_ms = 60000");
        std::fs::write(&path, text).unwrap();
        path
    };
    let a = serve(&slow_checkpoints("a"));
    produce(&tansu.brokers, "orders", &events[..20_000]);
    eventually(120, || events_processed(&a), |n| *n >= 5_000);

    // Events keep flowing while a second member joins and the group rebalances: whatever `a`
    // processed from a partition before giving it away must not be processed again by `b`.
    let brokers = tansu.brokers.clone();
    let rest = events[20_000..].to_vec();
    let producer = std::thread::spawn(move || {
        for chunk in rest.chunks(2_000) {
            produce(&brokers, "orders", chunk);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let b = serve(&slow_checkpoints("b"));
    producer.join().unwrap();
    let total = eventually(180, || events_processed(&a) + events_processed(&b), |n| *n >= 80_000);
    std::thread::sleep(Duration::from_secs(3));
    let (from_a, from_b) = (events_processed(&a), events_processed(&b));
    assert!(from_b > 0, "the second member never got a partition (a: {from_a})");
    assert_eq!(
        from_a + from_b,
        80_000,
        "events processed twice across the hand-over (a: {from_a}, b: {from_b}, first seen {total})"
    );
}

#[test]
fn a_plugin_starting_at_a_time_reads_only_records_from_then_on() {
    let tansu = Tansu::start();
    create_topic(&tansu.brokers, "orders", 2);
    let before = OrderStream::take_events(81, 100, 3_000);
    let after = OrderStream::take_events(82, 100, 3_000);
    produce(&tansu.brokers, "orders", &before);
    std::thread::sleep(Duration::from_millis(1_500));
    let start = chrono::Utc::now().to_rfc3339();
    std::thread::sleep(Duration::from_millis(500));
    produce(&tansu.brokers, "orders", &after);

    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), &tansu.brokers, "from-time");
    let text = std::fs::read_to_string(&path).unwrap() + &format!("start = {start:?}\n");
    std::fs::write(&path, text).unwrap();
    let weir = serve(&path);
    let (orders_truth, revenue_truth) = truth(&after);
    eventually(120, || weir.sql_csv(REVENUE_CSV), |csv| *csv == revenue_truth);
    assert_eq!(weir.sql_csv(ORDERS_CSV), orders_truth, "records from before {start} were applied");
}

#[test]
fn a_broker_missing_at_start_and_lost_mid_stream_costs_no_event() {
    // weir starts first, pointed at a broker that is not there yet: it keeps retrying.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let brokers = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let weir = serve(&config(dir.path(), &brokers, "outage"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(events_read(&weir), 0);

    let tansu = Tansu::start_on(port);
    create_topic(&tansu.brokers, "orders", 2);
    let events = OrderStream::take_events(44, 200, 40_000);
    let (orders_truth, revenue_truth) = truth(&events);
    produce(&tansu.brokers, "orders", &events[..20_000]);
    eventually(120, || events_read(&weir), |n| *n >= 5_000);
    // The broker goes silent mid-stream for longer than the session timeout, then comes back.
    tansu.signal("-STOP");
    std::thread::sleep(Duration::from_secs(8));
    tansu.signal("-CONT");
    produce(&tansu.brokers, "orders", &events[20_000..]);
    eventually(180, || weir.sql_csv(REVENUE_CSV), |csv| *csv == revenue_truth);
    assert_eq!(weir.sql_csv(ORDERS_CSV), orders_truth, "orders differ after the broker outage");
}

#[test]
fn a_broker_restarted_mid_stream_costs_no_event() {
    // Records and group offsets in S3 (moto), so the restarted broker is the same broker.
    let mut tansu = Tansu::start_persistent();
    create_topic(&tansu.brokers, "orders", 2);
    let events = OrderStream::take_events(91, 200, 20_000);
    let (orders_truth, revenue_truth) = truth(&events);
    produce(&tansu.brokers, "orders", &events[..10_000]);
    let dir = tempfile::tempdir().unwrap();
    let weir = serve(&config(dir.path(), &tansu.brokers, "restart"));
    eventually(120, || events_read(&weir), |n| *n >= 2_000);
    // Mid-stream: the broker process goes away and a new one takes over its storage and port.
    tansu.restart();
    produce(&tansu.brokers, "orders", &events[10_000..]);
    eventually(180, || weir.sql_csv(REVENUE_CSV), |csv| *csv == revenue_truth);
    assert_eq!(weir.sql_csv(ORDERS_CSV), orders_truth, "orders differ after the broker restart");
}

#[test]
fn weir_produce_writes_to_kafka_with_cloudevents_headers() {
    let tansu = Tansu::start();
    create_topic(&tansu.brokers, "orders", 2);
    let dir = tempfile::tempdir().unwrap();
    let weir = serve(&config(dir.path(), &tansu.brokers, "produce"));
    let events = OrderStream::take_events(55, 50, 3_000);
    let (orders_truth, _) = truth(&events);
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, crate::support::envelope_lines(&events)).unwrap();
    let text = crate::support::produce_file(&format!("http://{}", weir.http), "orders", &file);
    assert!(text.starts_with("wrote 3000 events to orders\n"), "{text}");
    // Through the broker and back: the same tables as a direct run.
    eventually(120, || weir.sql_csv(ORDERS_CSV), |csv| *csv == orders_truth);

    // Another consumer sees the CloudEvents binding on the wire.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &tansu.brokers)
        .set("group.id", "inspect")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["orders"]).unwrap();
    let message = eventually(
        60,
        || consumer.poll(Duration::from_secs(1)).and_then(Result::ok).map(|m| m.detach()),
        Option::is_some,
    )
    .unwrap();
    use rdkafka::message::{Headers, Message};
    let headers: Vec<(String, String)> = message
        .headers()
        .unwrap()
        .iter()
        .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
        .collect();
    let sent =
        events.iter().find(|e| headers.contains(&("ce_id".to_string(), e.id.clone()))).expect("a produced ce_id");
    assert!(headers.contains(&("ce_type".to_string(), sent.event_type.clone())), "{headers:?}");
    assert_eq!(message.key(), sent.key.as_deref().map(str::as_bytes));
}

/// Every record of `topic` as (ce_id, key, payload), read from the start until the broker has
/// nothing more for three seconds (tansu's high watermark cannot be trusted to say where the end is).
pub(crate) fn read_all(brokers: &str, topic: &str, partitions: i32) -> Vec<(String, String, Vec<u8>)> {
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "weir-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, rdkafka::Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    while let Some(message) = consumer.poll(Duration::from_secs(3)) {
        let message = message.expect("reading");
        let id = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "ce_id").and_then(|h| h.value))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let key = message.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
        records.push((id, key, message.payload().unwrap_or_default().to_vec()));
    }
    records
}

#[test]
fn a_handler_on_kafka_writes_each_emitted_event_once_across_kill_9() {
    let tansu = Tansu::start();
    create_topic(&tansu.brokers, "events", 3);
    create_topic(&tansu.brokers, "relayed", 3);
    let n = 20_000;
    let events: Vec<Event> = (0..n)
        .map(|i| Event {
            id: format!("e-{i}"),
            event_type: "Tick".into(),
            key: Some(format!("k{}", i % 40)),
            payload: format!("{{\"n\": {i}}}").into_bytes(),
            time_us: 1_700_000_000_000_000 + i as i64,
            ..Event::default()
        })
        .collect();
    produce(&tansu.brokers, "events", &events);

    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &tansu.brokers, "weir-relay");
    let text = std::fs::read_to_string(&config).unwrap().replace("interval_ms = 200", "interval_ms = 1000").replace(
        &format!("path = {:?}\n", wasm("orders")),
        &format!("path = {:?}\n\n[[plugin]]\npath = {:?}\n", wasm("relay"), wasm("tally")),
    );
    std::fs::write(&config, text).unwrap();
    let weir = serve(&config);
    // Kill between emits and the checkpoint after them, twice.
    eventually(120, || events_read(&weir), |read| *read >= 4_000);
    weir.kill9();
    let weir = serve(&config);
    eventually(120, || events_read(&weir), |read| *read >= 2_000);
    weir.kill9();
    let weir = serve(&config);
    let count = |sql: &str| weir.sql_csv(sql).lines().nth(1).and_then(|l| l.parse::<usize>().ok()).unwrap_or(0);
    eventually(240, || count("SELECT count(*) FROM seen WHERE id LIKE 'relayed:%'"), |c| *c == n);
    assert_eq!(count("SELECT sum(events) FROM tally WHERE key LIKE 'relayed:%'"), n, "a relayed event applied twice");
    assert!(weir.terminate().success());

    let relayed = read_all(&tansu.brokers, "relayed", 3);
    let ids: std::collections::BTreeSet<&str> = relayed.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids.len(), relayed.len(), "an emitted id is in the output topic twice");
    assert_eq!(relayed.len(), n, "emitted events lost or doubled");
    let mut counters: std::collections::BTreeMap<&str, Vec<u64>> = std::collections::BTreeMap::new();
    for (_, key, payload) in &relayed {
        let payload: serde_json::Value = serde_json::from_slice(payload).unwrap();
        counters.entry(key.as_str()).or_default().push(payload["relayed"].as_u64().unwrap());
    }
    for (key, mut seen) in counters {
        seen.sort_unstable();
        assert_eq!(
            seen,
            (1..=seen.len() as u64).collect::<Vec<_>>(),
            "key {key}: output differs from a crash-free run"
        );
    }
}

#[test]
fn the_order_saga_settles_on_kafka_with_declines_a_crashing_gateway_and_timeouts() {
    let tansu = Tansu::start();
    for topic in
        ["orders", "inventory-commands", "inventory-events", "payment-commands", "payment-events", "saga-events"]
    {
        create_topic(&tansu.brokers, topic, 2);
    }
    create_topic(&tansu.brokers, "weir.ticks", 1);
    let events = OrderStream::take_events(9, 200, 3_000);
    let placed = events.iter().filter(|e| e.event_type == "OrderPlaced").count();
    produce(&tansu.brokers, "orders", &events);

    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &tansu.brokers, "weir-saga");
    let plugins = [
        ("order-saga", "timeout_ms = \"6000\""),
        ("inventory-service", ""),
        ("payment-service", "decline_over = \"3000\""),
        ("saga-view", ""),
    ];
    let mut text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&format!("[[plugin]]\npath = {:?}\n", wasm("orders")), "")
        .replace("batch_size = 512\n", "batch_size = 512\ntick_ms = 200\n");
    for (name, params) in plugins {
        text.push_str(&format!("\n[[plugin]]\npath = {:?}\nparams = {{ {params} }}\n", wasm(name)));
    }
    std::fs::write(&config, text).unwrap();
    let weir = serve(&config);
    crate::handlers::assert_sagas_settled(&weir, placed);
    assert!(weir.terminate().success());
}
