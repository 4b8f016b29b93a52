//! The command line (clap): the only module that knows clap exists.
//!
//! `serve` and `demo` run a host in this process; `plugin build|inspect|new` work on files; every
//! other verb talks to a running host over its HTTP API through [`AdminClient`], which carries the
//! admin token: `--token`, else `WEIR_TOKEN`, else the token file a host on this machine
//! advertised ([`weir_host::auth::discover`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_core::event::StartAt;
use weir_host::config::Config;
use weir_host::scaffold::PluginTemplate;
use weir_host::server::Host;
use weir_host::status::{AdminOutcome, LogLine, PluginDetail, PluginStatus, RebuildStatus, Status, VersionRecord};
use weir_runtime::PluginKind;
use weir_runtime::PluginRuntime;
use weir_sql::query::TableInfo;

/// How often `--wait` asks a host how its rebuild is doing.
const REBUILD_POLL: Duration = Duration::from_millis(200);
/// How long `--wait` gives a host to start a rebuild before taking "no rebuild" for "finished".
const REBUILD_START_GRACE: Duration = Duration::from_secs(2);
/// How often `weir plugin logs --follow` asks for new lines.
const LOGS_POLL: Duration = Duration::from_millis(500);
/// How often `weir dev` looks at the crate's files.
const DEV_POLL: Duration = Duration::from_millis(300);
/// Cells of the rebuild progress bar.
const PROGRESS_WIDTH: u64 = 10;
/// What to do when the host refuses the token.
const TOKEN_HINT: &str =
    "pass --token, set WEIR_TOKEN, or run weir on the machine whose data directory holds the token file";

/// weir: stream processing with WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a running host answers, and the admin token to show it.
#[derive(Debug, Clone, clap::Args)]
struct HostArgs {
    /// The host's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:7070", env = "WEIR_URL")]
    url: String,
    /// The admin token (default: the token file a host on this machine advertised for --url,
    /// else <WEIR_DATA_DIR or ./data>/token).
    #[arg(long, env = "WEIR_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the host with a config file.
    Serve {
        /// The config file.
        #[arg(long, short, default_value = "config/weir.toml")]
        config: PathBuf,
    },
    /// Build the example plugins, run a generated order stream through them, print the results
    /// and keep serving the API until Ctrl-C.
    Demo {
        /// Events to generate.
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// HTTP listen address.
        #[arg(long, default_value = "127.0.0.1:7070", env = "WEIR_HTTP")]
        http: SocketAddr,
        /// Exit after printing instead of serving.
        #[arg(long)]
        no_serve: bool,
        /// Run this plugin too (a crate directory, built first, or a .wasm file). Repeatable.
        #[arg(long = "plugin")]
        plugins: Vec<PathBuf>,
        /// Postgres wire address, or "off".
        #[arg(long, default_value = "127.0.0.1:5433", env = "WEIR_PG")]
        pg: String,
        /// Arrow Flight SQL address, or "off".
        #[arg(long, default_value = "127.0.0.1:8815", env = "WEIR_FLIGHT")]
        flight: String,
        /// The demo's data directory (emptied first).
        #[arg(long, default_value_os_t = std::env::temp_dir().join("weir-demo"))]
        data_dir: PathBuf,
    },
    /// Write events to a topic of a running host (its embedded log or its broker). Input: JSON
    /// lines (or one JSON document) on stdin or from --file; each line an event
    /// `{"type": "...", "data": {...}, "key": "..."}`, or with --type a bare payload.
    Produce {
        /// The topic.
        topic: String,
        /// Read from this file instead of stdin.
        #[arg(long, short)]
        file: Option<PathBuf>,
        /// Every line is a bare payload of this event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// With --type: the payload field holding the event's key (aggregate id).
        #[arg(long, requires = "event_type")]
        key: Option<String>,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Show a running host's source, plugins, lag per partition, tables and last checkpoint.
    Status {
        #[command(flatten)]
        host: HostArgs,
        /// Print the raw JSON.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Refresh every SECONDS (default 2) with rates (events per second), until interrupted.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
        /// With --watch: stop after this many screens.
        #[arg(long, requires = "watch", value_name = "N")]
        times: Option<u64>,
    },
    /// Ask a running host a SQL question about its read models.
    Sql {
        /// The query (read-only).
        sql: String,
        #[command(flatten)]
        host: HostArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Work with plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// A plugin's dead letters: the events it failed on, in its topic `weir.dlq.<plugin>`.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Watch a plugin crate and, on every change to its Cargo.toml or src/, run its tests, build
    /// it and deploy it to a running host. Ctrl-C to stop.
    Dev {
        /// The plugin crate directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        #[command(flatten)]
        host: HostArgs,
        /// Deploy under this name (default: the name the plugin declares).
        #[arg(long)]
        name: Option<String>,
        /// Deploy-time parameters, NAME=VALUE.
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// The open dead letters (not replayed or purged), oldest first.
    List {
        /// The plugin.
        name: String,
        #[command(flatten)]
        host: HostArgs,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter in full: the event, its payload and headers, and why it failed.
    Show {
        /// The plugin.
        name: String,
        /// Where it is, `PARTITION/OFFSET` (as `list` shows it).
        at: String,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Run the open dead letters through the plugin's current version (after a fix); those that
    /// succeed are resolved, the others stay.
    Replay {
        /// The plugin.
        name: String,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Settle every open dead letter without running it.
    Purge {
        /// The plugin.
        name: String,
        #[command(flatten)]
        host: HostArgs,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    /// An aligned text table.
    Table,
    /// A JSON array of row objects.
    Json,
    /// CSV with a header line.
    Csv,
}

/// The kind of plugin `weir plugin new` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum NewKind {
    /// Events to read-model rows (a table per customer).
    Projection,
    /// Events to new events (large orders to a topic of their own).
    Handler,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Compile a plugin crate to a wasm32-wasip2 component and print the .wasm path.
    Build {
        /// The plugin crate directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Load a component and print what it declares, as JSON.
    Inspect {
        /// The .wasm file.
        wasm: PathBuf,
        /// Deploy-time parameters, NAME=VALUE.
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
    },
    /// Write a new plugin crate, ready to test, build and deploy.
    New {
        /// Its name: lowercase ASCII letters, digits, '-' and '_', starting with a letter.
        name: String,
        /// What it does.
        #[arg(long, value_enum, default_value_t = NewKind::Projection)]
        kind: NewKind,
        /// Where to write it (default: ./NAME); must be new or empty.
        dir: Option<PathBuf>,
        /// The weir SDK directory it depends on (default: WEIR_SDK, else the sdk/ of the checkout
        /// this weir was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Upload a plugin to a running host: a new plugin, or a new version of a deployed one.
    Deploy {
        /// A .wasm component, or a plugin crate directory (built first).
        path: PathBuf,
        #[command(flatten)]
        host: HostArgs,
        /// Deploy under this name (default: the name the plugin declares).
        #[arg(long)]
        name: Option<String>,
        /// Where it starts without a checkpoint of its own: earliest, latest or an RFC 3339 time.
        #[arg(long, value_parser = parse_start)]
        from: Option<StartAt>,
        /// Deploy-time parameters, NAME=VALUE.
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// A new version of a projection continues from the serving version's positions and
        /// state instead of rebuilding its tables from its start.
        #[arg(long)]
        take_over: bool,
        /// When the new version rebuilds its tables, show its progress until it serves.
        #[arg(long)]
        wait: bool,
    },
    /// List a running host's plugins.
    List {
        #[command(flatten)]
        host: HostArgs,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one plugin: version, deploy, state, events, failures, rebuild and lag per partition.
    Status {
        /// The plugin.
        name: String,
        #[command(flatten)]
        host: HostArgs,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop processing events; the plugin keeps its position and serves its tables.
    Pause {
        /// The plugin.
        name: String,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Process events again after a pause.
    Resume {
        /// The plugin.
        name: String,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Stop a plugin and drop its tables; its versions stay recorded.
    Remove {
        /// The plugin.
        name: String,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Go back to the version deployed before the serving one.
    Rollback {
        /// The plugin.
        name: String,
        #[command(flatten)]
        host: HostArgs,
        /// Show the progress of the rebuild until that version serves.
        #[arg(long)]
        wait: bool,
    },
    /// Rebuild a projection's tables from its start, beside the serving ones.
    Rebuild {
        /// The plugin.
        name: String,
        #[command(flatten)]
        host: HostArgs,
        /// Show the progress until the rebuilt tables serve.
        #[arg(long)]
        wait: bool,
    },
    /// List the versions deployed under a name, the serving one marked '*'.
    Versions {
        /// The plugin.
        name: String,
        #[command(flatten)]
        host: HostArgs,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print what a plugin logged.
    Logs {
        /// The plugin.
        name: String,
        #[command(flatten)]
        host: HostArgs,
        /// Keep printing new lines until Ctrl-C.
        #[arg(long, short)]
        follow: bool,
    },
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

fn parse_start(text: &str) -> Result<StartAt, String> {
    text.parse()
}

pub fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Plugin { command } => run_plugin(command),
        Command::Sql { sql, host, format } => run_sql(&sql, &host, format),
        Command::Demo { events, http, no_serve, plugins, pg, flight, data_dir } => {
            let options = weir_host::demo::DemoOptions {
                events,
                batch_size: 1024,
                data_dir,
                http,
                pg: parse_address("--pg", &pg)?,
                flight: parse_address("--flight", &flight)?,
                extra_plugins: plugins,
            };
            let runtime = tokio_runtime()?;
            let host = weir_host::demo::run(&options, &runtime)?;
            if no_serve {
                host.shutdown();
                return Ok(());
            }
            serve(&runtime, Listeners { http, pg: options.pg, flight: options.flight }, host)
        }
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            let host = Host::start(&config)?;
            let listeners = Listeners { http: config.server.http, pg: config.server.pg, flight: config.server.flight };
            serve(&tokio_runtime()?, listeners, host)
        }
        Command::Produce { topic, file, event_type, key, host } => run_produce(&topic, file, event_type, key, &host),
        Command::Status { host, json, watch, times } => match watch {
            Some(seconds) => watch_status(&host, seconds, times),
            None => run_status(&host, json),
        },
        Command::Dlq { command } => run_dlq(command),
        Command::Dev { dir, host, name, params } => run_dev(&dir, &host, name.as_deref(), &params),
    }
}

/// `weir plugin ...`.
fn run_plugin(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::Build { dir } => {
            let wasm = weir_host::build::build_plugin(&dir)?;
            println!("{}", wasm.display());
            Ok(())
        }
        PluginCommand::Inspect { wasm, params } => {
            let runtime = PluginRuntime::new(Default::default(), None)?;
            let plugin = runtime.load(&wasm, params.into_iter().collect())?;
            println!("{}", serde_json::to_string_pretty(plugin.info())?);
            Ok(())
        }
        PluginCommand::New { name, kind, dir, sdk } => {
            let template = match kind {
                NewKind::Projection => PluginTemplate::Projection,
                NewKind::Handler => PluginTemplate::Handler,
            };
            let dir = weir_host::scaffold::new_plugin(&name, template, dir.as_deref(), sdk.as_deref())?;
            let shown = dir.display();
            say(format!("created the {template} plugin {name} in {shown}"));
            say("next:");
            say(format!("  cd {shown} && cargo test     # its logic, natively"));
            say(format!("  weir plugin deploy {shown}   # build it, upload it to a running host"));
            say(format!("  weir dev {shown}             # test, build and deploy again on every change"));
            Ok(())
        }
        PluginCommand::Deploy { path, host, name, from, params, take_over, wait } => {
            let client = AdminClient::new(&host);
            let wasm = component_at(&path)?;
            let request = DeployRequest { name: name.as_deref(), from, params: &params, take_over };
            let outcome = upload(&client, &wasm, &request)?;
            say(&outcome.message);
            if wait && outcome.action == "rebuilding" {
                wait_for_rebuild(&client, &outcome.name)?;
            }
            Ok(())
        }
        PluginCommand::List { host, json } => run_list(&host, json),
        PluginCommand::Status { name, host, json } => run_plugin_status(&name, &host, json),
        PluginCommand::Pause { name, host } => admin_action(&host, &name, "pause", false),
        PluginCommand::Resume { name, host } => admin_action(&host, &name, "resume", false),
        PluginCommand::Rollback { name, host, wait } => admin_action(&host, &name, "rollback", wait),
        PluginCommand::Rebuild { name, host, wait } => admin_action(&host, &name, "rebuild", wait),
        PluginCommand::Remove { name, host } => {
            let client = AdminClient::new(&host);
            let path = plugin_path(&name);
            let outcome: AdminOutcome = decode(&client.delete(&path)?, &path)?;
            say(&outcome.message);
            Ok(())
        }
        PluginCommand::Versions { name, host, json } => run_versions(&name, &host, json),
        PluginCommand::Logs { name, host, follow } => run_logs(&name, &host, follow),
    }
}

fn parse_address(flag: &str, text: &str) -> anyhow::Result<Option<SocketAddr>> {
    if text.is_empty() || text == "off" {
        return Ok(None);
    }
    Ok(Some(text.parse().with_context(|| format!("{flag} {text:?} is not an address like 127.0.0.1:5433 or \"off\""))?))
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Where the host answers: HTTP always, the Postgres wire and Flight SQL when set.
struct Listeners {
    http: SocketAddr,
    pg: Option<SocketAddr>,
    flight: Option<SocketAddr>,
}

/// Serve the API (and the Postgres and Flight SQL listeners) until Ctrl-C or SIGTERM, then stop
/// the host, which writes its final checkpoint.
fn serve(runtime: &tokio::runtime::Runtime, listeners: Listeners, host: Host) -> anyhow::Result<()> {
    let state = host.api_state(listeners.http);
    let sql = host.sql.clone();
    let token = host.token.clone();
    // A listener reachable beyond this machine takes the admin token as its password.
    let guard = |addr: SocketAddr| (!addr.ip().is_loopback()).then(|| host.token.secret().to_string());
    let served = runtime.block_on(async move {
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        let pg_server = match listeners.pg {
            Some(addr) => Some(
                weir_sql::postgres::start_guarded(addr, sql.clone(), guard(addr))
                    .await
                    .with_context(|| format!("serving Postgres wire on {addr}"))?,
            ),
            None => None,
        };
        let flight_server = match listeners.flight {
            Some(addr) => Some(
                weir_sql::flight::start_guarded(addr, sql, guard(addr))
                    .await
                    .with_context(|| format!("serving Flight SQL on {addr}"))?,
            ),
            None => None,
        };
        let pg_addr = pg_server.as_ref().map(|p| p.addr());
        let flight_addr = flight_server.as_ref().map(|f| f.addr());
        // A closed stdout (`weir demo | head`) must not take the server down.
        let announce = move |addr| {
            use std::io::Write;
            token.advertise(addr);
            let mut out = std::io::stdout();
            let _ = writeln!(out, "\nserving http://{addr}/ (GET /v1/status, /v1/tables, /v1/plugins; POST /v1/sql, /v1/topics/TOPIC/events); Ctrl-C to stop");
            if let Some(pg) = pg_addr {
                let _ = writeln!(out, "postgres wire protocol on {pg}");
            }
            if let Some(flight) = flight_addr {
                let _ = writeln!(out, "arrow flight sql on grpc://{flight}");
            }
            match &token.file {
                Some(file) => {
                    let _ = writeln!(out, "admin token in {}", file.display());
                }
                None => {
                    let _ = writeln!(out, "admin token from the config or WEIR_TOKEN");
                }
            }
            let _ = writeln!(out, "try: weir sql --url http://{addr} \"SELECT status, count(*) FROM orders GROUP BY status\"");
            if let Some(pg) = pg_addr {
                let _ = writeln!(out, "     psql -h {} -p {} -c \"SELECT * FROM customer_revenue ORDER BY revenue DESC LIMIT 5\"", pg.ip(), pg.port());
            }
            let _ = out.flush();
        };
        let result = weir_host::server::serve_api(listeners.http, state, announce, shutdown).await;
        drop(pg_server);
        drop(flight_server);
        result
    });
    tracing::info!("stopping: finishing the current batch and writing a checkpoint");
    host.shutdown();
    served
}

/// Print a line on stdout; a closed stdout (`weir ... | head`) is not an error.
fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Print what the API answered, as it answered it (`--json`).
fn print_raw(bytes: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = out.write_all(bytes);
    if !bytes.ends_with(b"\n") {
        let _ = out.write_all(b"\n");
    }
}

/// The HTTP methods the admin API uses.
#[derive(Debug, Clone, Copy)]
enum Method {
    Get,
    Post,
    Delete,
}

/// No host answered at the address: nothing listens there, the name does not resolve, or the
/// connection broke.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach weir at {url}; is it running (weir demo, weir serve)?")]
struct Unreachable {
    /// The address.
    url: String,
    /// What the HTTP client saw.
    #[source]
    source: ureq::Error,
}

/// A running host's HTTP API, and the token it is shown on every request.
struct AdminClient {
    /// `http://HOST:PORT`, without a trailing '/'.
    url: String,
    /// Sent as `Authorization: Bearer <token>` when known.
    token: Option<String>,
    /// Keeps connections open between the requests of a polling loop.
    agent: ureq::Agent,
}

impl AdminClient {
    /// A client for the host `host` names, with the token given or else found on this machine.
    fn new(host: &HostArgs) -> AdminClient {
        let url = host.url.trim_end_matches('/').to_string();
        let token = host
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .or_else(|| weir_host::auth::discover(&url));
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        AdminClient { url, token, agent }
    }

    /// One HTTP exchange: the status code and the body, whatever the status. Only a host that
    /// cannot be reached is an error ([`Unreachable`]).
    fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, &[u8])>,
        accept: &str,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let endpoint = format!("{}{path}", self.url);
        let sent = match method {
            Method::Get => self.headers(self.agent.get(endpoint.as_str()), accept).call(),
            Method::Delete => self.headers(self.agent.delete(endpoint.as_str()), accept).call(),
            Method::Post => {
                let request = self.headers(self.agent.post(endpoint.as_str()), accept);
                match body {
                    Some((content_type, bytes)) => request.header("content-type", content_type).send(bytes),
                    None => request.send_empty(),
                }
            }
        };
        let mut response = match sent {
            Ok(response) => response,
            Err(
                source @ (ureq::Error::Io(_)
                | ureq::Error::HostNotFound
                | ureq::Error::ConnectionFailed
                | ureq::Error::Timeout(_)),
            ) => return Err(Unreachable { url: self.url.clone(), source }.into()),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("asking weir at {endpoint}"))),
        };
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .with_context(|| format!("reading the answer of {endpoint}"))?;
        Ok((status, bytes))
    }

    /// `accept`, and the token when there is one.
    fn headers<B>(&self, request: ureq::RequestBuilder<B>, accept: &str) -> ureq::RequestBuilder<B> {
        let request = request.header("accept", accept);
        match &self.token {
            Some(token) => request.header("authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    /// A JSON exchange: the body of a success, else an error with the API's message.
    fn json_request(&self, method: Method, path: &str, body: Option<(&str, &[u8])>) -> anyhow::Result<Vec<u8>> {
        let (status, bytes) = self.exchange(method, path, body, "application/json")?;
        if !(200..300).contains(&status) {
            return Err(refusal(status, &bytes));
        }
        Ok(bytes)
    }

    fn get(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        self.json_request(Method::Get, path, None)
    }

    fn post(&self, path: &str, body: Option<(&str, &[u8])>) -> anyhow::Result<Vec<u8>> {
        self.json_request(Method::Post, path, body)
    }

    fn delete(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        self.json_request(Method::Delete, path, None)
    }

    /// GET `path` and decode its JSON as `T`.
    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        decode(&self.get(path)?, path)
    }
}

/// Decode what `path` answered.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], path: &str) -> anyhow::Result<T> {
    serde_json::from_slice(bytes)
        .with_context(|| format!("{path} answered with something this weir does not understand"))
}

/// The error for a request the host refused: the API's message, and on 401 how to give the token.
fn refusal(status: u16, bytes: &[u8]) -> anyhow::Error {
    let mut message = error_message(bytes);
    if message.trim().is_empty() {
        message = format!("the host answered HTTP {status}");
    }
    if status == 401 { anyhow::anyhow!("{message}; {TOKEN_HINT}") } else { anyhow::anyhow!("{message}") }
}

fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned())
}

fn encode_query(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `path?a&b`, or `path` when there is no query.
fn with_query(path: &str, query: &[String]) -> String {
    if query.is_empty() { path.to_string() } else { format!("{path}?{}", query.join("&")) }
}

/// `/v1/plugins/{name}`.
fn plugin_path(name: &str) -> String {
    format!("/v1/plugins/{}", encode_query(name))
}

/// `weir produce`: send events to a running host.
fn run_produce(
    topic: &str,
    file: Option<PathBuf>,
    event_type: Option<String>,
    key: Option<String>,
    host: &HostArgs,
) -> anyhow::Result<()> {
    use std::io::Read;
    let body = match &file {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes).context("reading stdin")?;
            bytes
        }
    };
    let source = file.as_ref().map_or("stdin".to_string(), |p| p.display().to_string());
    let mut query = Vec::new();
    if let Some(t) = &event_type {
        query.push(format!("type={}", encode_query(t)));
    }
    if let Some(k) = &key {
        query.push(format!("key={}", encode_query(k)));
    }
    let path = with_query(&format!("/v1/topics/{}/events", encode_query(topic)), &query);
    let client = AdminClient::new(host);
    let (status, bytes) =
        client.exchange(Method::Post, &path, Some(("application/x-ndjson", &body)), "application/json")?;
    if !(200..300).contains(&status) {
        anyhow::bail!("{source}: {}", refusal(status, &bytes));
    }
    let answer: serde_json::Value = serde_json::from_slice(&bytes)?;
    let positions = answer["positions"].as_array().cloned().unwrap_or_default();
    let mut per_partition: std::collections::BTreeMap<u64, (u64, u64, u64)> = Default::default();
    for p in &positions {
        let (partition, offset) = (p["partition"].as_u64().unwrap_or(0), p["offset"].as_u64().unwrap_or(0));
        let entry = per_partition.entry(partition).or_insert((u64::MAX, 0, 0));
        entry.0 = entry.0.min(offset);
        entry.1 = entry.1.max(offset);
        entry.2 += 1;
    }
    say(format!("wrote {} events to {topic}", positions.len()));
    for (partition, (first, last, n)) in per_partition {
        say(format!("  {topic}/{partition}: {n} events at offsets {first}..={last}"));
    }
    Ok(())
}

/// `weir status`: print a running host's status.
fn run_status(host: &HostArgs, json: bool) -> anyhow::Result<()> {
    let client = AdminClient::new(host);
    let bytes = client.get("/v1/status")?;
    if json {
        print_raw(&bytes);
        return Ok(());
    }
    let status: Status = decode(&bytes, "/v1/status")?;
    let tables: Vec<TableInfo> = client.get_json("/v1/tables")?;
    say(status_screen(&status, &tables, None, now_ms()));
    Ok(())
}

/// `weir status --watch`: the status again every `seconds`, with rates over the interval.
fn watch_status(host: &HostArgs, seconds: f64, times: Option<u64>) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    if !(seconds.is_finite() && seconds >= 0.1) {
        anyhow::bail!("--watch takes a number of seconds of at least 0.1, not {seconds}");
    }
    let client = AdminClient::new(host);
    let clear = std::io::stdout().is_terminal();
    let mut previous: Option<(u64, Status)> = None;
    let mut shown = 0;
    loop {
        let status: Status = client.get_json("/v1/status")?;
        let tables: Vec<TableInfo> = client.get_json("/v1/tables")?;
        let now = now_ms();
        let screen = status_screen(&status, &tables, previous.as_ref().map(|(t, s)| (*t, s)), now);
        if clear {
            // Home and clear, then the screen.
            say(format!("\x1b[H\x1b[2J{screen}"));
        } else {
            say(format!("--- {} ---\n{screen}", clock_time(now)));
        }
        shown += 1;
        if times.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        previous = Some((now, status));
        std::thread::sleep(Duration::from_secs_f64(seconds));
    }
}

/// `HH:MM:SS` (UTC) of a time in milliseconds since the Unix epoch.
fn clock_time(ms: u64) -> String {
    let seconds = ms / 1000;
    format!("{:02}:{:02}:{:02} UTC", seconds / 3600 % 24, seconds / 60 % 60, seconds % 60)
}

/// Bytes for people: `512 B`, `3.2 MiB`.
fn human_bytes(bytes: u64) -> String {
    let mut value = bytes as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if value < 1024.0 || unit == "GiB" {
            return if unit == "B" { format!("{bytes} B") } else { format!("{value:.1} {unit}") };
        }
        value /= 1024.0;
    }
    format!("{bytes} B")
}

/// The status as `weir status` prints it; with the previous status (and when it was read),
/// events per second since then.
fn status_screen(status: &Status, tables: &[TableInfo], previous: Option<(u64, &Status)>, now: u64) -> String {
    let mut out = format!("source: {}", status.source);
    if let Some(error) = &status.source_error {
        out += &format!("\nsource error: {error}");
    }
    let elapsed = previous.map(|(then, _)| now.saturating_sub(then) as f64 / 1000.0).filter(|s| *s > 0.0);
    let rate = |now_count: u64, before: Option<u64>| match (elapsed, before) {
        (Some(seconds), Some(before)) => format!("{:.0}", now_count.saturating_sub(before) as f64 / seconds),
        _ => "-".to_string(),
    };
    out += &format!(
        "\nevents read: {}{}",
        thousands(status.events_read),
        match elapsed {
            Some(_) => format!(" ({}/s)", rate(status.events_read, previous.map(|(_, s)| s.events_read))),
            None => String::new(),
        }
    );
    out += &match &status.checkpoint {
        Some(c) => format!(
            "\nlast checkpoint: #{} ({} rows, {}, written in {} ms{})",
            c.seq,
            thousands(c.rows as u64),
            human_bytes(c.bytes),
            c.write_ms,
            if c.written_ms > 0 {
                format!(", {} s ago", now.saturating_sub(c.written_ms) / 1000)
            } else {
                String::new()
            }
        ),
        None => "\nlast checkpoint: none yet".to_string(),
    };
    let plugins: Vec<Vec<String>> = status
        .plugins
        .iter()
        .map(|p| {
            let before = previous.and_then(|(_, s)| s.plugins.iter().find(|q| q.info.name == p.info.name));
            let lag: u64 = status.lag.iter().filter(|l| l.plugin == p.info.label()).map(|l| l.lag).sum();
            let errors: u64 = p.errors.values().sum();
            vec![
                p.info.label(),
                kind_name(&p.info.kind).to_string(),
                match &p.rebuild {
                    Some(r) => format!("{} {}", p.state, progress_text(r)),
                    None => p.state.to_string(),
                },
                thousands(p.events_ok),
                rate(p.events_ok, before.map(|b| b.events_ok)),
                thousands(lag),
                thousands(p.events_failed.max(errors)),
                thousands(p.dead_letters),
                p.batches.quantile(0.99).map_or("-".into(), |s| {
                    if s == f64::MAX { "> 30 s".into() } else { format!("{:.1} ms", s * 1000.0) }
                }),
                human_bytes(p.memory_bytes),
            ]
        })
        .collect();
    out += &weir_host::demo::table_text(
        "plugins",
        &["plugin", "kind", "state", "ok", "ok/s", "lag", "failed", "dead letters", "p99 batch", "memory"],
        &plugins,
    );
    for p in status.plugins.iter().filter(|p| p.stopped.is_some()) {
        out += &format!("{} stopped: {}\n", p.info.name, p.stopped.as_deref().unwrap_or_default());
    }
    out += &lag_table(&status.lag);
    let tables: Vec<Vec<String>> = tables
        .iter()
        .map(|t| vec![t.qualified_name.clone(), thousands(t.rows as u64), human_bytes(t.bytes as u64)])
        .collect();
    out += &weir_host::demo::table_text("tables", &["table", "rows", "bytes"], &tables);
    out
}

/// `weir dlq ...`.
fn run_dlq(command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { name, host, limit, json } => {
            let client = AdminClient::new(&host);
            let path = format!("{}/dlq?limit={limit}", plugin_path(&name));
            let bytes = client.get(&path)?;
            if json {
                print_raw(&bytes);
                return Ok(());
            }
            let letters: Vec<weir_host::status::DeadLetter> = decode(&bytes, &path)?;
            let rows: Vec<Vec<String>> = letters
                .iter()
                .map(|d| {
                    vec![
                        format!("{}/{}", d.partition, d.offset),
                        d.origin.clone(),
                        d.event_type.clone(),
                        d.key.clone().unwrap_or_default(),
                        d.plugin.clone(),
                        d.attempts.to_string(),
                        d.error.chars().take(100).collect(),
                    ]
                })
                .collect();
            weir_host::demo::print_table(
                &format!("dead letters of {name}"),
                &["at", "origin", "type", "key", "failed in", "tries", "error"],
                &rows,
            );
            Ok(())
        }
        DlqCommand::Show { name, at, host } => {
            let (partition, offset) = at
                .split_once('/')
                .and_then(|(p, o)| Some((p.parse::<u32>().ok()?, o.parse::<u64>().ok()?)))
                .with_context(|| format!("{at:?} is not PARTITION/OFFSET (as `weir dlq list {name}` shows it)"))?;
            let client = AdminClient::new(&host);
            let path = format!("{}/dlq/{partition}/{offset}", plugin_path(&name));
            print_raw(&client.get(&path)?);
            Ok(())
        }
        DlqCommand::Replay { name, host } => dlq_action(&host, &name, "replay"),
        DlqCommand::Purge { name, host } => dlq_action(&host, &name, "purge"),
    }
}

fn dlq_action(host: &HostArgs, name: &str, action: &str) -> anyhow::Result<()> {
    let client = AdminClient::new(host);
    let path = format!("{}/dlq/{action}", plugin_path(name));
    let outcome: AdminOutcome = decode(&client.post(&path, None)?, &path)?;
    say(&outcome.message);
    Ok(())
}

/// The lag table: plugin, partition, position, end, lag, how far behind in seconds.
fn lag_table(lag: &[weir_host::status::Lag]) -> String {
    let rows: Vec<Vec<String>> = lag
        .iter()
        .map(|l| {
            vec![
                l.plugin.clone(),
                format!("{}/{}", l.topic, l.partition),
                thousands(l.position),
                thousands(l.end),
                thousands(l.lag),
                if l.lag > 0 { format!("{:.1} s", l.lag_seconds) } else { "0".into() },
            ]
        })
        .collect();
    weir_host::demo::table_text("lag", &["plugin", "partition", "position", "end", "lag", "behind"], &rows)
}

fn print_lag(lag: &[weir_host::status::Lag]) {
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(lag_table(lag).as_bytes());
}

/// `weir sql`: POST the query to a running host and print the answer.
fn run_sql(sql: &str, host: &HostArgs, format: Format) -> anyhow::Result<()> {
    let accept = match format {
        Format::Table => weir_host::api::ARROW_STREAM,
        Format::Json => "application/json",
        Format::Csv => "text/csv",
    };
    let body = serde_json::to_vec(&serde_json::json!({ "sql": sql }))?;
    let client = AdminClient::new(host);
    let (status, bytes) = client.exchange(Method::Post, "/v1/sql", Some(("application/json", &body)), accept)?;
    if !(200..300).contains(&status) {
        return Err(refusal(status, &bytes));
    }
    match format {
        Format::Table => say(weir_sql::query::to_table(&weir_sql::query::from_arrow_ipc(&bytes)?)?),
        Format::Json | Format::Csv => print_raw(&bytes),
    }
    Ok(())
}

/// `projection` or `handler`.
fn kind_name(kind: &PluginKind) -> &'static str {
    match kind {
        PluginKind::Projection { .. } => "projection",
        PluginKind::Handler { .. } => "handler",
    }
}

/// The first 12 hex digits of a content hash, enough to tell components apart.
fn short_hash(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// `k=v, k=v`, or `none`.
fn params_text(params: &std::collections::BTreeMap<String, String>) -> String {
    if params.is_empty() {
        return "none".to_string();
    }
    params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `42 s`, `3 min 5 s`, `2 h 10 min`.
fn duration_text(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// Milliseconds since the Unix epoch as an RFC 3339 time in UTC, to the second or, with
/// `millis`, to the millisecond.
fn utc_time(ms: u64, millis: bool) -> String {
    let secs = ms / 1000;
    let (days, second_of_day) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`), in eras of
    // 400 years that start on March 1st, so the leap day ends a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    let (hour, minute, second) = (second_of_day / 3600, second_of_day % 3600 / 60, second_of_day % 60);
    let fraction = if millis { format!(".{:03}", ms % 1000) } else { String::new() };
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z")
}

/// Now, in milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

/// What to deploy with a component (`weir plugin deploy`, `weir dev`).
struct DeployRequest<'a> {
    /// The name to run it under (default: the name it declares).
    name: Option<&'a str>,
    /// Where it starts without a checkpoint of its own.
    from: Option<StartAt>,
    /// Deploy-time parameters.
    params: &'a [(String, String)],
    /// A new version of a projection continues from the serving one instead of rebuilding.
    take_over: bool,
}

/// The component at `path`: the file itself, or the crate there, built first.
fn component_at(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_dir() { Ok(weir_host::build::build_plugin(path)?) } else { Ok(path.to_path_buf()) }
}

/// `POST /v1/plugins` with the component's bytes.
fn upload(client: &AdminClient, wasm: &Path, request: &DeployRequest<'_>) -> anyhow::Result<AdminOutcome> {
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let mut query = Vec::new();
    if let Some(name) = request.name {
        query.push(format!("name={}", encode_query(name)));
    }
    if let Some(from) = request.from {
        query.push(format!("from={}", encode_query(&from.to_string())));
    }
    for (k, v) in request.params {
        query.push(format!("param={}", encode_query(&format!("{k}={v}"))));
    }
    if request.take_over {
        query.push("take_over=true".to_string());
    }
    let path = with_query("/v1/plugins", &query);
    let answer = client
        .post(&path, Some(("application/wasm", &bytes)))
        .with_context(|| format!("deploying {}", wasm.display()))?;
    decode(&answer, "/v1/plugins")
}

/// `weir plugin pause|resume|rollback|rebuild NAME`: POST the action, print what it did and,
/// with `wait`, follow the rebuild it started (a handler's rollback swaps at once: nothing to
/// follow).
fn admin_action(host: &HostArgs, name: &str, action: &str, wait: bool) -> anyhow::Result<()> {
    let client = AdminClient::new(host);
    let path = format!("{}/{action}", plugin_path(name));
    let outcome: AdminOutcome = decode(&client.post(&path, None)?, &path)?;
    say(&outcome.message);
    if wait && outcome.action == "rebuilding" {
        wait_for_rebuild(&client, &outcome.name)?;
    }
    Ok(())
}

/// A line on stderr redrawn in place.
#[derive(Default)]
struct ProgressLine {
    /// Characters drawn last time, to blank what a shorter line leaves over.
    drawn: usize,
}

impl ProgressLine {
    fn draw(&mut self, text: &str) {
        use std::io::Write;
        let width = text.chars().count();
        let blank = " ".repeat(self.drawn.saturating_sub(width));
        let _ = write!(std::io::stderr(), "\r{text}{blank}");
        self.drawn = width;
    }

    fn clear(&mut self) {
        use std::io::Write;
        if self.drawn > 0 {
            let _ = write!(std::io::stderr(), "\r{}\r", " ".repeat(self.drawn));
            self.drawn = 0;
        }
    }
}

/// `[#####.....] 52% 1,234,567 events, 410,000/s, ETA 3 s`.
fn progress_text(rebuild: &RebuildStatus) -> String {
    let (done, left) = (rebuild.events_done, rebuild.events_left);
    let total = u128::from(done) + u128::from(left);
    let share = |scale: u64| {
        (u128::from(done) * u128::from(scale)).checked_div(total).map_or(scale, |n| u64::try_from(n).unwrap_or(scale))
    };
    let filled = share(PROGRESS_WIDTH).min(PROGRESS_WIDTH);
    let bar = format!("{}{}", "#".repeat(filled as usize), ".".repeat((PROGRESS_WIDTH - filled) as usize));
    let eta = if left == 0 {
        "ETA 0 s".to_string()
    } else if rebuild.rate > 0.0 {
        format!("ETA {}", duration_text((left as f64 / rebuild.rate).ceil() as u64))
    } else {
        "ETA unknown".to_string()
    };
    format!("[{bar}] {}% {} events, {}/s, {eta}", share(100), thousands(done), thousands(rebuild.rate.round() as u64))
}

/// Follow the plugin's rebuild until it ends, drawing its progress on stderr: the new version
/// serves (say so), or it was abandoned (an error with the host's reason).
fn wait_for_rebuild(client: &AdminClient, name: &str) -> anyhow::Result<()> {
    let path = plugin_path(name);
    let started = Instant::now();
    let mut line = ProgressLine::default();
    let mut seen = false;
    loop {
        let detail: PluginDetail = match client.get_json(&path) {
            Ok(detail) => detail,
            Err(e) => {
                line.clear();
                return Err(e);
            }
        };
        let status = detail.status;
        match &status.rebuild {
            Some(rebuild) => {
                seen = true;
                line.draw(&progress_text(rebuild));
            }
            // The host may not have started it yet: give it a moment before taking "no
            // rebuild" for "finished".
            None if !seen && started.elapsed() < REBUILD_START_GRACE => {}
            None => {
                line.clear();
                if let Some(error) = status.rebuild_error.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
                    anyhow::bail!("the rebuild of {name} was abandoned: {error}");
                }
                say(format!("switched to {} (deploy {})", status.info.label(), status.deploy));
                return Ok(());
            }
        }
        std::thread::sleep(REBUILD_POLL);
    }
}

/// `weir plugin list`.
fn run_list(host: &HostArgs, json: bool) -> anyhow::Result<()> {
    let client = AdminClient::new(host);
    let bytes = client.get("/v1/plugins")?;
    if json {
        print_raw(&bytes);
        return Ok(());
    }
    let plugins: Vec<PluginStatus> = decode(&bytes, "/v1/plugins")?;
    // Lag is reported per plugin label and partition in the host's status.
    let status: Status = client.get_json("/v1/status")?;
    let rows: Vec<Vec<String>> = plugins
        .iter()
        .map(|p| {
            let label = p.info.label();
            let lag: u64 = status.lag.iter().filter(|l| l.plugin == label).map(|l| l.lag).sum();
            vec![
                p.info.name.clone(),
                p.info.version.clone(),
                p.deploy.to_string(),
                kind_name(&p.info.kind).to_string(),
                p.state.to_string(),
                thousands(p.events_ok),
                thousands(p.events_failed),
                thousands(lag),
            ]
        })
        .collect();
    weir_host::demo::print_table(
        "plugins",
        &["name", "version", "deploy", "kind", "state", "ok", "failed", "lag"],
        &rows,
    );
    Ok(())
}

/// `weir plugin status NAME`.
fn run_plugin_status(name: &str, host: &HostArgs, json: bool) -> anyhow::Result<()> {
    let client = AdminClient::new(host);
    let path = plugin_path(name);
    let bytes = client.get(&path)?;
    if json {
        print_raw(&bytes);
        return Ok(());
    }
    let detail: PluginDetail = decode(&bytes, &path)?;
    let p = &detail.status;
    let mut fields = vec![
        ("plugin", p.info.label()),
        ("kind", kind_name(&p.info.kind).to_string()),
        ("component", short_hash(&p.component)),
        ("deploy", p.deploy.to_string()),
        ("state", p.state.to_string()),
        ("params", params_text(&p.params)),
        ("start", p.start.to_string()),
        ("events", format!("{} ok, {} failed", thousands(p.events_ok), thousands(p.events_failed))),
        ("last failure", p.recent_failures.last().cloned().unwrap_or_else(|| "none".to_string())),
    ];
    if let Some(rebuild) = &p.rebuild {
        let what = format!("{} (deploy {}, {})", rebuild.label, rebuild.deploy, rebuild.reason);
        fields.push(("rebuild", format!("{what}: {}", progress_text(rebuild))));
    }
    if let Some(error) = p.rebuild_error.as_deref().filter(|e| !e.trim().is_empty()) {
        fields.push(("rebuild error", error.to_string()));
    }
    let width = fields.iter().map(|(key, _)| key.len() + 1).max().unwrap_or(0);
    for (key, value) in &fields {
        let key = format!("{key}:");
        say(format!("{key:<width$} {value}"));
    }
    print_lag(&detail.lag);
    Ok(())
}

/// `weir plugin versions NAME`.
fn run_versions(name: &str, host: &HostArgs, json: bool) -> anyhow::Result<()> {
    let client = AdminClient::new(host);
    let path = format!("{}/versions", plugin_path(name));
    let bytes = client.get(&path)?;
    if json {
        print_raw(&bytes);
        return Ok(());
    }
    let versions: Vec<VersionRecord> = decode(&bytes, &path)?;
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            vec![
                v.deploy.to_string(),
                v.version.clone(),
                short_hash(&v.component),
                utc_time(v.deployed_ms, false),
                v.origin.clone(),
                params_text(&v.params),
                v.start.to_string(),
                if v.current { "*".to_string() } else { String::new() },
            ]
        })
        .collect();
    weir_host::demo::print_table(
        &format!("versions of {name}"),
        &["deploy", "version", "component", "deployed", "origin", "params", "start", "current"],
        &rows,
    );
    Ok(())
}

/// `weir plugin logs NAME [--follow]`.
fn run_logs(name: &str, host: &HostArgs, follow: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let client = AdminClient::new(host);
    let mut last_seq: Option<u64> = None;
    loop {
        let path = match last_seq {
            Some(seq) => format!("{}/logs?after={seq}", plugin_path(name)),
            None => format!("{}/logs", plugin_path(name)),
        };
        let lines: Vec<LogLine> = client.get_json(&path)?;
        let mut out = std::io::stdout().lock();
        for line in &lines {
            let time = utc_time(line.time_ms, true);
            if writeln!(out, "{time} {:<5} {} {}", line.level, line.plugin, line.message).is_err() {
                // Stdout closed (`| head`): nobody reads on.
                return Ok(());
            }
            last_seq = Some(last_seq.map_or(line.seq, |seq| seq.max(line.seq)));
        }
        if out.flush().is_err() {
            return Ok(());
        }
        drop(out);
        if !follow {
            return Ok(());
        }
        std::thread::sleep(LOGS_POLL);
    }
}

/// A watched file: path, modification time, length.
type FileStamp = (PathBuf, Option<SystemTime>, u64);

/// What `weir dev` watches: `Cargo.toml` and every file under `src/` (editors' hidden and backup
/// files aside), sorted.
fn source_stamps(dir: &Path) -> Vec<FileStamp> {
    let stamp = |path: PathBuf, meta: &std::fs::Metadata| (path, meta.modified().ok(), meta.len());
    let mut stamps = Vec::new();
    let manifest = dir.join("Cargo.toml");
    if let Ok(meta) = std::fs::metadata(&manifest) {
        stamps.push(stamp(manifest, &meta));
    }
    let mut folders = vec![dir.join("src")];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            if file_name.starts_with('.') || file_name.ends_with('~') {
                continue;
            }
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => folders.push(entry.path()),
                Ok(meta) => stamps.push(stamp(entry.path(), &meta)),
                Err(_) => {}
            }
        }
    }
    stamps.sort();
    stamps
}

/// `weir dev`: test, build and deploy the crate in `dir` at start and after every change.
fn run_dev(dir: &Path, host: &HostArgs, name: Option<&str>, params: &[(String, String)]) -> anyhow::Result<()> {
    if !dir.join("Cargo.toml").is_file() {
        anyhow::bail!("{} has no Cargo.toml: give a plugin crate (weir plugin new writes one)", dir.display());
    }
    let mut client = AdminClient::new(host);
    // No host at --url: run a demo host there, on the demo stream, for as long as this runs.
    let _demo = match client.exchange(Method::Get, "/healthz", None, "text/plain") {
        Ok(_) => None,
        Err(e) if e.downcast_ref::<Unreachable>().is_some() => {
            let demo = start_dev_host(&client.url)?;
            client = AdminClient::new(&HostArgs { url: host.url.clone(), token: host.token.clone() });
            Some(demo)
        }
        Err(e) => return Err(e),
    };
    let request = DeployRequest { name, from: None, params, take_over: false };
    say(format!(
        "watching {}/Cargo.toml and {}/src; on every change: cargo test, build, deploy to {}. Ctrl-C to stop.",
        dir.display(),
        dir.display(),
        client.url
    ));
    let mut handled: Option<Vec<FileStamp>> = None;
    loop {
        let stamps = source_stamps(dir);
        if handled.as_ref() != Some(&stamps) {
            // Stamped before the round: a change made while it runs starts another.
            handled = Some(stamps);
            dev_round(dir, &client, &request);
        }
        std::thread::sleep(DEV_POLL);
    }
}

/// A `weir demo` child serving at `url` (its own data directory, no Postgres or Flight SQL
/// listener), killed when dropped; returned once it answers.
fn start_dev_host(url: &str) -> anyhow::Result<DevHost> {
    let address = url.trim_start_matches("http://").trim_end_matches('/');
    let address: SocketAddr = address
        .replace("localhost", "127.0.0.1")
        .parse()
        .with_context(|| format!("no host answers at {url}, and it is not an address to start one on"))?;
    let data_dir = std::env::temp_dir().join(format!("weir-dev-{}", std::process::id()));
    say(format!("no weir host answers at {url}: starting one there on the demo stream ({})", data_dir.display()));
    let child = Process::new(std::env::current_exe().context("finding the weir binary")?)
        .args(["demo", "--pg", "off", "--flight", "off", "--http", &address.to_string()])
        .arg("--data-dir")
        .arg(&data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting weir demo")?;
    let host = DevHost { child, data_dir };
    let client = AdminClient::new(&HostArgs { url: url.to_string(), token: None });
    let started = Instant::now();
    while client.exchange(Method::Get, "/healthz", None, "text/plain").is_err() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "the demo host did not start within 10 minutes");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(host)
}

/// The demo host `weir dev` started.
struct DevHost {
    child: std::process::Child,
    data_dir: PathBuf,
}

impl Drop for DevHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// One round of `weir dev`: tests, build, deploy; each failure is printed and ends the round.
fn dev_round(dir: &Path, client: &AdminClient, request: &DeployRequest<'_>) {
    say(format!("\n[{}] cargo test", utc_time(now_ms(), false)));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    match Process::new(&cargo).arg("test").current_dir(dir).stdin(Stdio::null()).status() {
        Ok(status) if status.success() => {}
        Ok(_) => {
            say("tests failed; not deploying");
            return;
        }
        Err(e) => {
            say(format!("cannot run {cargo} test: {e}; not deploying"));
            return;
        }
    }
    let wasm = match weir_host::build::build_plugin(dir) {
        Ok(wasm) => wasm,
        Err(e) => {
            say(format!("{e}; not deploying"));
            return;
        }
    };
    match upload(client, &wasm, request) {
        Ok(outcome) => say(format!("[{}] {}", utc_time(now_ms(), false), outcome.message)),
        Err(e) if e.downcast_ref::<Unreachable>().is_some() => say(format!(
            "no weir host answers at {}; start one (weir demo, or weir serve) or pass --url. Watching on.",
            client.url
        )),
        Err(e) => say(format!("[{}] deploying failed: {e:#}", utc_time(now_ms(), false))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339_in_utc() {
        assert_eq!(utc_time(0, false), "1970-01-01T00:00:00Z");
        assert_eq!(utc_time(951_782_400_000, false), "2000-02-29T00:00:00Z");
        assert_eq!(utc_time(1_767_225_599_000, false), "2025-12-31T23:59:59Z");
        assert_eq!(utc_time(1_767_225_600_123, true), "2026-01-01T00:00:00.123Z");
    }

    #[test]
    fn rebuild_progress_reads_as_a_bar_with_rate_and_eta() {
        let rebuild = RebuildStatus {
            label: "orders@0.2.0".into(),
            deploy: 2,
            component: "ab".repeat(32),
            reason: "rebuild".into(),
            events_done: 1_234_567,
            events_left: 1_139_000,
            rate: 410_000.2,
            elapsed_ms: 3_000,
        };
        assert_eq!(progress_text(&rebuild), "[#####.....] 52% 1,234,567 events, 410,000/s, ETA 3 s");
        let done = RebuildStatus { events_left: 0, rate: 0.0, ..rebuild };
        assert_eq!(progress_text(&done), "[##########] 100% 1,234,567 events, 0/s, ETA 0 s");
    }

    #[test]
    fn numbers_and_durations_read_easily() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
        assert_eq!(duration_text(59), "59 s");
        assert_eq!(duration_text(185), "3 min 5 s");
        assert_eq!(duration_text(7_800), "2 h 10 min");
    }

    #[test]
    fn deploy_queries_are_percent_encoded() {
        assert_eq!(encode_query("threshold=1 000&x"), "threshold%3D1%20000%26x");
        assert_eq!(with_query("/v1/plugins", &[]), "/v1/plugins");
        assert_eq!(with_query("/v1/plugins", &["a=1".into(), "b=2".into()]), "/v1/plugins?a=1&b=2");
    }
}
