//! The command line (clap): the only module that knows clap exists.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_host::config::Config;
use weir_host::server::Host;
use weir_host::status::Status;
use weir_runtime::PluginKind;
use weir_runtime::PluginRuntime;

/// weir: stream processing with WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
        /// The host's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:7070", env = "WEIR_URL")]
        url: String,
    },
    /// Show a running host's source, plugins, lag per partition and last checkpoint.
    Status {
        /// The host's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:7070", env = "WEIR_URL")]
        url: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running host a SQL question about its read models.
    Sql {
        /// The query (read-only).
        sql: String,
        /// The host's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:7070", env = "WEIR_URL")]
        url: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Work with plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
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
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

pub fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Plugin { command: PluginCommand::Build { dir } } => {
            let wasm = weir_host::build::build_plugin(&dir)?;
            println!("{}", wasm.display());
            Ok(())
        }
        Command::Plugin { command: PluginCommand::Inspect { wasm, params } } => {
            let runtime = PluginRuntime::new(Default::default(), None)?;
            let plugin = runtime.load(&wasm, params.into_iter().collect())?;
            println!("{}", serde_json::to_string_pretty(plugin.info())?);
            Ok(())
        }
        Command::Sql { sql, url, format } => run_sql(&sql, &url, format),
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
        Command::Produce { topic, file, event_type, key, url } => run_produce(&topic, file, event_type, key, &url),
        Command::Status { url, json } => run_status(&url, json),
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
    let state = host.api_state();
    let sql = host.sql.clone();
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
                weir_sql::postgres::start(addr, sql.clone())
                    .await
                    .with_context(|| format!("serving Postgres wire on {addr}"))?,
            ),
            None => None,
        };
        let flight_server = match listeners.flight {
            Some(addr) => Some(
                weir_sql::flight::start(addr, sql).await.with_context(|| format!("serving Flight SQL on {addr}"))?,
            ),
            None => None,
        };
        let pg_addr = pg_server.as_ref().map(|p| p.addr());
        let flight_addr = flight_server.as_ref().map(|f| f.addr());
        // A closed stdout (`weir demo | head`) must not take the server down.
        let announce = move |addr| {
            use std::io::Write;
            let mut out = std::io::stdout();
            let _ = writeln!(out, "\nserving http://{addr}/ (GET /v1/status, /v1/tables, /v1/plugins; POST /v1/sql, /v1/topics/TOPIC/events); Ctrl-C to stop");
            if let Some(pg) = pg_addr {
                let _ = writeln!(out, "postgres wire protocol on {pg}");
            }
            if let Some(flight) = flight_addr {
                let _ = writeln!(out, "arrow flight sql on grpc://{flight}");
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

/// `weir produce`: send events to a running host.
fn run_produce(
    topic: &str,
    file: Option<PathBuf>,
    event_type: Option<String>,
    key: Option<String>,
    url: &str,
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
    let mut endpoint = format!("{}/v1/topics/{topic}/events", url.trim_end_matches('/'));
    let mut query = Vec::new();
    if let Some(t) = &event_type {
        query.push(format!("type={}", encode_query(t)));
    }
    if let Some(k) = &key {
        query.push(format!("key={}", encode_query(k)));
    }
    if !query.is_empty() {
        endpoint = format!("{endpoint}?{}", query.join("&"));
    }
    let (status, bytes) =
        http_request("POST", &endpoint, Some(("application/x-ndjson", &body)), "application/json", url)?;
    if !status {
        anyhow::bail!("{source}: {}", error_message(&bytes));
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
    println!("wrote {} events to {topic}", positions.len());
    for (partition, (first, last, n)) in per_partition {
        println!("  {topic}/{partition}: {n} events at offsets {first}..={last}");
    }
    Ok(())
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

/// `weir status`: print a running host's status.
fn run_status(url: &str, json: bool) -> anyhow::Result<()> {
    let endpoint = format!("{}/v1/status", url.trim_end_matches('/'));
    let (ok, bytes) = http_request("GET", &endpoint, None, "application/json", url)?;
    if !ok {
        anyhow::bail!("{}", error_message(&bytes));
    }
    if json {
        println!("{}", String::from_utf8_lossy(&bytes));
        return Ok(());
    }
    let status: Status = serde_json::from_slice(&bytes)
        .with_context(|| format!("{endpoint} answered with something that is not weir's status"))?;
    // A closed stdout (`weir status | head`) is not an error.
    let say = |line: String| {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{line}");
    };
    say(format!("source: {}", status.source));
    if let Some(error) = &status.source_error {
        say(format!("source error: {error}"));
    }
    say(format!("events read: {}", status.events_read));
    match &status.checkpoint {
        Some(c) => say(format!(
            "last checkpoint: #{} ({} rows, {} bytes, written in {} ms)",
            c.seq, c.rows, c.bytes, c.write_ms
        )),
        None => say("last checkpoint: none yet".to_string()),
    }
    let plugins: Vec<Vec<String>> = status
        .plugins
        .iter()
        .map(|p| {
            let world = match p.info.kind {
                PluginKind::Projection { .. } => "projection",
                PluginKind::Handler { .. } => "handler",
            };
            vec![p.info.label(), world.to_string(), p.events_ok.to_string(), p.events_failed.to_string()]
        })
        .collect();
    weir_host::demo::print_table("plugins", &["plugin", "world", "ok", "failed"], &plugins);
    let lag: Vec<Vec<String>> = status
        .lag
        .iter()
        .map(|l| {
            vec![
                l.plugin.clone(),
                format!("{}/{}", l.topic, l.partition),
                l.position.to_string(),
                l.end.to_string(),
                l.lag.to_string(),
            ]
        })
        .collect();
    weir_host::demo::print_table("lag", &["plugin", "partition", "position", "end", "lag"], &lag);
    Ok(())
}

fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned())
}

/// One HTTP exchange with a running host: (success, body).
fn http_request(
    method: &str,
    endpoint: &str,
    body: Option<(&str, &[u8])>,
    accept: &str,
    url: &str,
) -> anyhow::Result<(bool, Vec<u8>)> {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let unreachable = || format!("cannot reach weir at {url}; is it running (weir demo, weir serve)?");
    let mut response = match (method, body) {
        ("POST", Some((content_type, bytes))) => agent
            .post(endpoint)
            .header("content-type", content_type)
            .header("accept", accept)
            .send(bytes)
            .with_context(unreachable)?,
        _ => agent.get(endpoint).header("accept", accept).call().with_context(unreachable)?,
    };
    let ok = response.status().is_success();
    let bytes = response.body_mut().with_config().limit(1 << 30).read_to_vec()?;
    Ok((ok, bytes))
}

/// `weir sql`: POST the query to a running host and print the answer.
fn run_sql(sql: &str, url: &str, format: Format) -> anyhow::Result<()> {
    let accept = match format {
        Format::Table => weir_host::api::ARROW_STREAM,
        Format::Json => "application/json",
        Format::Csv => "text/csv",
    };
    let endpoint = format!("{}/v1/sql", url.trim_end_matches('/'));
    let body = serde_json::to_vec(&serde_json::json!({ "sql": sql }))?;
    let (ok, bytes) = http_request("POST", &endpoint, Some(("application/json", &body)), accept, url)?;
    if !ok {
        anyhow::bail!("{}", error_message(&bytes));
    }
    match format {
        Format::Table => {
            use std::io::Write;
            let table = weir_sql::query::to_table(&weir_sql::query::from_arrow_ipc(&bytes)?)?;
            // A closed stdout (`| head`) is not an error.
            let _ = writeln!(std::io::stdout(), "{table}");
        }
        Format::Json | Format::Csv => {
            use std::io::Write;
            std::io::stdout().write_all(&bytes)?;
            if !bytes.ends_with(b"\n") {
                println!();
            }
        }
    }
    Ok(())
}
