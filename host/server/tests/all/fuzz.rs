//! Fuzzing the decoders that take outside bytes (issue 14): event JSON lines and their headers
//! (`POST /v1/topics/{t}/events`, `weir produce`), config files, log segments on disk,
//! checkpoints on disk (manifest, plugin state, Arrow table files), and the two listeners of a
//! host served in this process: raw HTTP requests to its API (request line, headers, bodies of
//! every route that reads one: SQL, produce, deploy, admin actions) and raw Postgres wire
//! messages (startup, simple and extended query, SSL and cancel requests). Each target mutates the seeds
//! in its corpus directory (`tests/fuzz/<target>/`, kept in the repository) and inputs it builds
//! itself from real files, and checks that the decoder answers with a value or an error and never
//! panics. An input that panics is written into the corpus (`crash-<hash>`), so every later run
//! replays it; the test names the file. An input that aborts the process (a failed allocation)
//! is left in `$TMPDIR/weir-fuzz-<target>.input`.
//!
//! Budget: `WEIR_FUZZ_SECONDS` per target (default 2, what `./test.sh` runs);
//! `host/server/tests/fuzz/run.sh SECONDS` runs every target for longer.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_core::event::{Event, ProduceOptions, parse_events};
use weir_host::api::ApiState;
use weir_host::checkpoint::CheckpointStore;
use weir_host::config::Config;
use weir_host::pipeline::Pipeline;
use weir_host::sample::OrderStream;
use weir_host::server::Host;
use weir_log::{EmbeddedLog, LogConfig};

use crate::support::{Rng, envelope_lines, load, repo, runtime, write_config};
use weir_sql::flight::probe;

/// A deterministic mutator.
struct Mutator(Rng);

impl Mutator {
    fn below(&mut self, n: usize) -> usize {
        self.0.below(n)
    }

    /// Bytes the decoders care about.
    fn interesting(&mut self) -> Vec<u8> {
        const TOKENS: &[&[u8]] = &[
            b"\"",
            b"{",
            b"}",
            b"[",
            b"]",
            b":",
            b",",
            b"\n",
            b"\\",
            b"\\u",
            b"\xff",
            b"\x00",
            b"\xc3",
            b"\xe2\x82",
            b"-1",
            b"0",
            b"1e999",
            b"18446744073709551615",
            b"9223372036854775808",
            b"null",
            b"true",
            b"=",
            b"[[",
            b"\"\"\"",
            b"'",
            b"#",
            b"\xf0\x9f\x98",
            b"\x7f\xff\xff\xff",
            b"\xff\xff\xff\xff\xff\xff\xff\xff",
        ];
        TOKENS[self.below(TOKENS.len())].to_vec()
    }

    /// `seed` changed in one to four places: bytes flipped, set, inserted, deleted, duplicated,
    /// or the input cut short.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut out = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(out.len() + 1);
            match self.below(7) {
                0 if at < out.len() => out[at] ^= 1 << self.below(8),
                1 if at < out.len() => out[at] = self.below(256) as u8,
                2 => {
                    let token = self.interesting();
                    out.splice(at..at, token);
                }
                3 if at < out.len() => {
                    let end = (at + 1 + self.below(16)).min(out.len());
                    out.drain(at..end);
                }
                4 if at < out.len() => {
                    let end = (at + 1 + self.below(64)).min(out.len());
                    let copy = out[at..end].to_vec();
                    out.splice(at..at, copy);
                }
                5 => out.truncate(at),
                _ => {
                    let n = 1 + self.below(8);
                    let junk: Vec<u8> = (0..n).map(|_| self.below(256) as u8).collect();
                    out.splice(at..at, junk);
                }
            }
        }
        out
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    repo().join("host/server/tests/fuzz").join(target)
}

/// Run `check` on mutations of `seeds` and the corpus of `target` for the budget; every corpus
/// file is also run as it is first.
fn fuzz(target: &str, mut seeds: Vec<Vec<u8>>, check: impl Fn(&[u8])) {
    let budget = std::env::var("WEIR_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let dir = corpus_dir(target);
    let mut corpus: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .flatten()
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect();
    corpus.sort();
    // An input that aborts the process (an allocation that fails) cannot be caught: the one
    // being checked is kept here until the next.
    let current = std::env::temp_dir().join(format!("weir-fuzz-{target}.input"));
    let run = |input: &[u8], origin: &str| {
        let _ = std::fs::write(&current, input);
        CHECKING.with(|c| c.set(true));
        let outcome = catch_unwind(AssertUnwindSafe(|| check(input)));
        CHECKING.with(|c| c.set(false));
        if outcome.is_err() {
            let name = format!("crash-{:016x}", fxhash(input));
            let path = dir.join(&name);
            std::fs::write(&path, input).unwrap();
            let said = LAST_PANIC.with(|last| last.borrow().clone());
            panic!("fuzz target {target}: {origin} panicked the decoder ({said}); the input is in {}", path.display());
        }
    };
    for (path, bytes) in &corpus {
        run(bytes, &format!("corpus file {}", path.display()));
    }
    seeds.extend(corpus.into_iter().map(|(_, bytes)| bytes));
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut mutator = Mutator(Rng(seed));
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < Duration::from_secs_f64(budget) {
        let pick = mutator.below(seeds.len());
        let input = mutator.mutate(&seeds[pick]);
        run(&input, "a mutated input");
        runs += 1;
    }
    eprintln!("fuzz target {target}: {runs} inputs in {budget} s, no panic (mutator seed {seed})");
}

fn fxhash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

thread_local! {
    /// Inside a decoder call: a panic is the fuzzer's finding, reported by it, not printed.
    static CHECKING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// What the last panic in a decoder call said.
    static LAST_PANIC: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// What the last panic on a served host's threads said (taken by the target that served it).
static SERVER_PANIC: Mutex<Option<String>> = Mutex::new(None);
/// The name of a served host's runtime threads.
const SERVER_THREADS: &str = "weir-fuzz-server";

fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CHECKING.with(std::cell::Cell::get) {
                LAST_PANIC.with(|last| *last.borrow_mut() = info.to_string());
            } else if std::thread::current().name().is_some_and(|n| n.starts_with(SERVER_THREADS)) {
                *SERVER_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.to_string());
            } else {
                default(info);
            }
        }));
    });
}

#[test]
fn fuzz_event_lines() {
    quiet_panics();
    let seeds = vec![
        br#"{"type": "OrderPlaced", "key": "o-1", "id": "e-1", "time": "2026-11-01T10:00:00Z", "data": {"amount": 12.5}}"#
            .to_vec(),
        b"{\"type\": \"T\", \"data\": {}, \"headers\": {\"a\": \"b\"}, \"correlation_id\": \"c\", \"causation_id\": \"d\"}\n{\"type\": \"U\", \"data\": [1, 2]}\n".to_vec(),
        b"[{\"type\": \"T\", \"data\": 1}, {\"type\": \"T\", \"data\": \"x\", \"time\": \"2026-13-45T99:00:00+25:00\"}]".to_vec(),
    ];
    let bare = ProduceOptions { event_type: Some("Bare".into()), key: Some("id".into()) };
    fuzz("event-lines", seeds, |input| {
        for options in [ProduceOptions::default(), bare.clone()] {
            if let Err(e) = parse_events("orders", input, &options) {
                assert!(e.line >= 1, "an error names no line: {e}");
            }
        }
    });
}

#[test]
fn fuzz_config_files() {
    quiet_panics();
    let seeds = vec![
        std::fs::read(repo().join("config/weir.toml")).unwrap(),
        std::fs::read(repo().join("config/redpanda.toml")).unwrap(),
    ];
    let path = Path::new("/weir/fuzz.toml");
    fuzz("config", seeds, |input| {
        let text = String::from_utf8_lossy(input);
        let _ = Config::parse(path, &text);
    });
}

/// Events for a log or a checkpoint to hold.
fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event {
            id: format!("e-{i}"),
            event_type: "Tick".into(),
            key: Some(format!("k{}", i % 5)),
            payload: format!("{{\"n\": {i}, \"text\": \"{}\"}}", "é".repeat(i % 7)).into_bytes(),
            content_type: "application/json".into(),
            time_us: 1_700_000_000_000_000 + i as i64,
            headers: vec![("h".into(), vec![i as u8])],
            ..Event::default()
        })
        .collect()
}

/// Every event in every partition of `topic`.
fn read_everything(log: &EmbeddedLog, topic: &str) {
    for range in log.ranges(topic).unwrap_or_default() {
        let mut next = range.start;
        while let Ok(batch) = log.read(topic, range.partition, next, 1 << 16) {
            let Some(last) = batch.last() else { break };
            next = last.position.offset + 1;
        }
    }
}

#[test]
fn fuzz_log_segments() {
    quiet_panics();
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { partitions: 1, ..LogConfig::default() };
    let log_dir = dir.path().join("log");
    {
        let log = EmbeddedLog::open(&log_dir, config.clone()).unwrap();
        log.append("events", events(40)).unwrap();
    }
    let segment =
        find_files(&log_dir).into_iter().max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).unwrap();
    let original = std::fs::read(&segment).unwrap();
    let counter = std::sync::atomic::AtomicU64::new(0);
    fuzz("log-segment", vec![original], |input| {
        // A copy of the log with this segment; opening it either refuses, naming the file, or
        // gives a log every event of which can be read.
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let copy = dir.path().join(format!("copy-{n}"));
        copy_dir(&log_dir, &copy);
        let relative = segment.strip_prefix(&log_dir).unwrap();
        std::fs::write(copy.join(relative), input).unwrap();
        match EmbeddedLog::open(&copy, config.clone()) {
            Ok(log) => read_everything(&log, "events"),
            Err(e) => assert!(e.to_string().contains("events") || e.to_string().contains('/'), "{e}"),
        }
        let _ = std::fs::remove_dir_all(&copy);
    });
}

#[test]
fn fuzz_checkpoint_files() {
    quiet_panics();
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    {
        let store = CheckpointStore::open(&checkpoints, 2).unwrap();
        let mut pipeline = Pipeline::new(std::sync::Arc::default());
        pipeline.add(load(&runtime, "tally")).unwrap();
        let batch: Vec<Event> = events(30)
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| {
                e.position = weir_core::event::Position { topic: "events".into(), partition: 0, offset: i as u64 };
                e
            })
            .collect();
        pipeline.process(&batch);
        let captures = pipeline.capture().unwrap();
        let seq = store.next_seq().unwrap();
        store.write(seq, &captures, &Default::default()).unwrap();
    }
    let files = find_files(&checkpoints);
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let counter = std::sync::atomic::AtomicU64::new(0);
    let plugin = std::sync::Mutex::new(Some(load(&runtime, "tally")));
    fuzz("checkpoint", seeds, |input| {
        // The input replaces one of the checkpoint's files (the one its seed most likely came
        // from: the same first byte, else any); restoring either works, sets the checkpoint aside
        // as corrupt, or fails naming what, and never panics.
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let copy = dir.path().join(format!("copy-{n}"));
        copy_dir(&checkpoints, &copy);
        let target = files
            .iter()
            .find(|f| std::fs::read(f).ok().and_then(|b| b.first().copied()) == input.first().copied())
            .unwrap_or(&files[n as usize % files.len()]);
        std::fs::write(copy.join(target.strip_prefix(&checkpoints).unwrap()), input).unwrap();
        let store = CheckpointStore::open(&copy, 2).unwrap();
        let mut pipeline = Pipeline::new(std::sync::Arc::default());
        let taken = plugin.lock().unwrap().take().unwrap_or_else(|| load(&runtime, "tally"));
        pipeline.add(taken).unwrap();
        let _ = store.restore(&mut pipeline);
        if let Some(slot) = pipeline.remove("tally") {
            *plugin.lock().unwrap() = Some(slot);
        }
        let _ = std::fs::remove_dir_all(&copy);
    });
}

fn find_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(find_files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A host served in this process for the listener targets: `orders` over the embedded log with
/// 300 orders in it, queries cut off after 250 ms, its HTTP API (no token: the admin routes are
/// reachable) and its Postgres listener on loopback ports, on a runtime whose threads' panics the
/// hook records.
struct Served {
    http: SocketAddr,
    pg: weir_sql::Listener,
    flight: weir_sql::Listener,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: tokio::runtime::Runtime,
    _host: Host,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &[("orders", "")], "[query]\ntimeout_ms = 250\n");
        let host = Host::start(&weir_host::config::Config::load(&config).unwrap()).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(SERVER_THREADS)
            .enable_all()
            .build()
            .unwrap();
        let full = host.api_state("127.0.0.1:0".parse().unwrap());
        let state = Arc::new(ApiState {
            status: full.status.clone(),
            sql: full.sql.clone(),
            sink: full.sink.clone(),
            token: None,
            reads_need_token: false,
            admin: full.admin.clone(),
            hosts: weir_host::api::AllowedHosts::loopback(),
        });
        let (bound, address) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(weir_host::api::serve(
            "127.0.0.1:0".parse().unwrap(),
            state,
            move |addr| bound.send(addr).unwrap(),
            async move {
                let _ = stopped.await;
            },
        ));
        let http = address.recv_timeout(Duration::from_secs(10)).unwrap();
        let pg = runtime.block_on(weir_sql::postgres::start("127.0.0.1:0".parse().unwrap(), host.sql.clone())).unwrap();
        let flight =
            runtime.block_on(weir_sql::flight::start("127.0.0.1:0".parse().unwrap(), host.sql.clone())).unwrap();
        let served = Served { http, pg, flight, stop: Some(stop), runtime, _host: host, _dir: dir };
        let orders = envelope_lines(&OrderStream::take_events(7, 30, 300));
        let answer = exchange_http(served.http, &http_request("POST", "/v1/topics/orders/events", &orders));
        assert!(answer.starts_with(b"HTTP/1.1 2"), "{}", String::from_utf8_lossy(&answer));
        served
    }

    /// Fail the input just run if it panicked a thread of the host; check the host still answers.
    fn check(&self, answer: &[u8]) {
        if let Some(said) = SERVER_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take() {
            panic!("the served host panicked: {said} (it answered {} bytes)", answer.len());
        }
    }

    /// After a run: both listeners still answer a real query.
    fn still_answers(&self) {
        let answer = exchange_http(
            self.http,
            &http_request("POST", "/v1/sql", br#"{"sql": "SELECT count(*) AS n FROM orders"}"#),
        );
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
        let port = self.pg.addr().port();
        let rows = self.runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(
                &format!("host=127.0.0.1 port={port} user=weir dbname=weir"),
                tokio_postgres::NoTls,
            )
            .await
            .unwrap();
            tokio::spawn(connection);
            client.simple_query("SELECT count(*) FROM orders").await.unwrap()
        });
        assert!(!rows.is_empty());
        let handle = probe::handle("SELECT count(*) AS n FROM orders WHERE amount > $1", &probe::parameters(0));
        let answer = self.runtime.block_on(probe::send(self.flight.addr(), "prepared-handle", &handle));
        assert!(answer.is_ok(), "Flight SQL no longer answers: {answer:?}");
    }

    /// Send `bytes` to the Flight SQL listener in `place` and check no thread panicked.
    fn probe_flight(&self, place: &str, bytes: &[u8]) -> Result<String, String> {
        let answer = self.runtime.block_on(probe::send(self.flight.addr(), place, bytes));
        self.check(answer.as_ref().map_or(b"".as_slice(), |a| a.as_bytes()));
        answer
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Send `input` on a new connection and read the answer until the server closes the connection.
/// The sending side is closed after `quiet` without an answer (at once with none: hyper drops a
/// request whose client closed its side, so HTTP gets a moment first); reading gives up 5 s after
/// that (a query may run to its time limit).
fn exchange(addr: SocketAddr, input: &[u8], quiet: Option<Duration>) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("the listener on {addr} is gone: {e}"));
    stream.set_read_timeout(Some(quiet.unwrap_or(Duration::from_millis(200)))).unwrap();
    let _ = stream.write_all(input);
    if quiet.is_none() {
        let _ = stream.shutdown(Shutdown::Write);
    }
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1 << 16];
    let mut closed_at: Option<Instant> = quiet.is_none().then(Instant::now);
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                match closed_at {
                    None => {
                        let _ = stream.shutdown(Shutdown::Write);
                        closed_at = Some(Instant::now());
                    }
                    Some(at) if at.elapsed() > Duration::from_secs(5) => break,
                    Some(_) => {}
                }
            }
            Err(_) => break,
        }
    }
    answer
}

fn exchange_http(addr: SocketAddr, input: &[u8]) -> Vec<u8> {
    exchange(addr, input, Some(Duration::from_millis(100)))
}

fn http_request(method: &str, target: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

#[test]
fn fuzz_http_requests() {
    quiet_panics();
    let served = Served::start();
    let orders = envelope_lines(&OrderStream::take_events(9, 5, 3));
    let mut chunked =
        b"POST /v1/topics/orders/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    chunked.extend_from_slice(format!("{:x}\r\n", orders.len()).as_bytes());
    chunked.extend_from_slice(&orders);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let seeds = vec![
        http_request("POST", "/v1/sql", br#"{"sql": "SELECT customer, count(*), sum(amount) FROM orders GROUP BY customer ORDER BY 2 DESC LIMIT 3"}"#),
        http_request("POST", "/v1/sql", br#"{"sql": "SELECT * FROM orders WHERE status = 'placed' AND amount > 10.5 LIMIT 5"}"#),
        http_request("POST", "/v1/topics/orders/events", &orders),
        http_request("POST", "/v1/topics/orders/events?type=OrderPlaced&key=order_id", br#"{"order_id": "o-1", "customer": "c", "amount": 3}"#),
        chunked,
        http_request("POST", "/v1/plugins?name=fuzzed&from=latest&take_over=false&param.x=1", b"\0asm\x0d\0\x01\0"),
        http_request("POST", "/v1/plugins/orders/pause", b""),
        http_request("POST", "/v1/plugins/orders/resume", b""),
        http_request("POST", "/v1/plugins/orders/dlq/replay", b""),
        http_request("GET", "/v1/plugins/orders/dlq/0/3", b""),
        http_request("GET", "/v1/plugins/orders/logs?after=2", b""),
        http_request("GET", "/v1/plugins/orders/versions", b""),
        http_request("GET", "/v1/status", b""),
    ];
    fuzz("http", seeds, |input| served.check(&exchange_http(served.http, input)));
    served.still_answers();
}

/// One Postgres wire message: its tag, its length, its body.
fn pg_message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A message without a tag (startup, SSL and cancel requests): its length, its body.
fn pg_untagged(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as i32 + 4).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn pg_startup() -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0weir\0database\0weir\0application_name\0fuzz\0\0");
    pg_untagged(&body)
}

fn pg_query(sql: &str) -> Vec<u8> {
    pg_message(b'Q', format!("{sql}\0").as_bytes())
}

#[test]
fn fuzz_postgres_messages() {
    quiet_panics();
    let served = Served::start();
    let terminate = pg_message(b'X', b"");
    let extended = {
        let mut parse = b"s1\0SELECT * FROM orders WHERE customer = $1 LIMIT $2\0".to_vec();
        parse.extend_from_slice(&2i16.to_be_bytes());
        parse.extend_from_slice(&25i32.to_be_bytes());
        parse.extend_from_slice(&20i32.to_be_bytes());
        let mut bind = b"\0s1\0".to_vec();
        bind.extend_from_slice(&1i16.to_be_bytes());
        bind.extend_from_slice(&0i16.to_be_bytes());
        bind.extend_from_slice(&2i16.to_be_bytes());
        for value in [&b"c-1"[..], b"5"] {
            bind.extend_from_slice(&(value.len() as i32).to_be_bytes());
            bind.extend_from_slice(value);
        }
        bind.extend_from_slice(&1i16.to_be_bytes());
        bind.extend_from_slice(&1i16.to_be_bytes());
        let mut execute = b"\0".to_vec();
        execute.extend_from_slice(&0i32.to_be_bytes());
        [
            pg_startup(),
            pg_message(b'P', &parse),
            pg_message(b'B', &bind),
            pg_message(b'D', b"P\0"),
            pg_message(b'E', &execute),
            pg_message(b'S', b""),
            terminate.clone(),
        ]
        .concat()
    };
    let ssl =
        { [pg_untagged(&80_877_103i32.to_be_bytes()), pg_startup(), pg_query("SELECT 1"), terminate.clone()].concat() };
    let cancel = {
        let mut body = 80_877_102i32.to_be_bytes().to_vec();
        body.extend_from_slice(&7i32.to_be_bytes());
        body.extend_from_slice(&9i32.to_be_bytes());
        pg_untagged(&body)
    };
    let seeds = vec![
        [pg_startup(), pg_query("SELECT customer, count(*) FROM orders GROUP BY customer ORDER BY 2 DESC LIMIT 3"), terminate.clone()]
            .concat(),
        extended,
        [pg_startup(), pg_query("BEGIN; SET statement_timeout = 100; SHOW ALL; SAVEPOINT a; ROLLBACK TO SAVEPOINT a; COMMIT"), terminate.clone()]
            .concat(),
        [
            pg_startup(),
            pg_query("SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"),
            terminate.clone(),
        ]
        .concat(),
        ssl,
        cancel,
    ];
    fuzz("postgres", seeds, |input| served.check(&exchange(served.pg.addr(), input, None)));
    // What the fuzzer found (pgwire read a Bind parameter past the bytes received and panicked
    // the connection's task): now a FATAL protocol violation naming the message.
    let mut bind = b"\0s1\0".to_vec();
    bind.extend_from_slice(&[0, 0, 0, 1, 0x7f, 0, 0, 0]);
    let answer = exchange(served.pg.addr(), &[pg_startup(), pg_message(b'B', &bind)].concat(), None);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.contains("08P01") && text.contains("an invalid Bind message: a parameter's value (2130706432 bytes"),
        "{text}"
    );
    served.still_answers();
}

/// Flight SQL (issue 32): tickets, statement handles (the SQL and its bound parameters as Arrow
/// IPC), `DoPut` parameter data, actions and descriptors, sent with a real gRPC client. An
/// input's first byte picks the place (one of `probe::PLACES`), the rest is what goes there.
#[test]
fn fuzz_flight_requests() {
    quiet_panics();
    let served = Served::start();
    let params = probe::parameters(7);
    let handle = probe::handle("SELECT order_id, amount FROM orders WHERE amount > $1 LIMIT 3", &params);
    let place = |name: &str| probe::PLACES.iter().position(|p| *p == name).unwrap() as u8;
    let with = |name: &str, bytes: &[u8]| [&[place(name)][..], bytes].concat();
    let seeds = vec![
        with("ticket", &handle),
        with("statement-handle", &handle),
        with("prepared-handle", &handle),
        with("put", &probe::put_frames(&params)),
        with("action-create", b"SELECT customer, count(*) FROM orders GROUP BY customer"),
        with("action-close", &handle),
        with("descriptor", &handle),
    ];
    fuzz("flight", seeds, |input| {
        let Some((&which, bytes)) = input.split_first() else { return };
        let _ = served.probe_flight(probe::PLACES[which as usize % probe::PLACES.len()], bytes);
    });
    served.still_answers();
}

/// Issue 32, item 1: a statement handle whose bound parameters claim a body of 2^50 bytes made
/// arrow-ipc allocate it, and the failed allocation aborted the host. Now each place a client can
/// put such a stream answers `InvalidArgument` naming the claim, and the host answers on.
#[test]
fn a_flight_request_claiming_a_huge_ipc_body_is_refused_and_the_host_answers_on() {
    quiet_panics();
    let served = Served::start();
    let hostile = probe::hostile_parameters(1 << 50);
    let handle = probe::handle("SELECT $1 AS p", &hostile);
    for place in ["statement-handle", "prepared-handle"] {
        let refused = served.probe_flight(place, &handle).expect_err(place);
        assert!(
            refused.contains("InvalidArgument") && refused.contains("claims a body of 1125899906842624 bytes"),
            "{place}: {refused}"
        );
    }
    let refused = served.probe_flight("put", &probe::put_frames(&hostile)).expect_err("put");
    assert!(refused.contains("InvalidArgument") && refused.contains("bound parameters"), "put: {refused}");
    served.still_answers();
}
