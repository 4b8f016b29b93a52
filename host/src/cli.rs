//! The command line (clap): the only module that knows clap exists.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_host::api::{self, ApiState, PluginStatus};
use weir_host::config::Config;
use weir_host::pipeline::Pipeline;
use weir_host::plugin::PluginRuntime;
use weir_host::query::{Catalog, SqlEngine};

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
        Command::Demo { events, http, no_serve, plugins } => {
            let options = weir_host::demo::DemoOptions {
                events,
                batch_size: 1024,
                cache_dir: std::env::temp_dir().join("weir-demo").join("wasm-cache"),
                extra_plugins: plugins,
            };
            let runtime = tokio_runtime()?;
            let (statuses, engine) = weir_host::demo::run(&options, &runtime)?;
            if no_serve {
                return Ok(());
            }
            serve(&runtime, http, statuses, engine)
        }
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            let runtime =
                PluginRuntime::new(config.limits.clone(), Some(&config.server.data_dir.join("wasm-cache")))?;
            let catalog = Arc::new(Catalog::default());
            let engine = Arc::new(SqlEngine::new(catalog.clone(), config.query.clone())?);
            let mut pipeline = Pipeline::new(catalog);
            for plugin in &config.plugins {
                let wasm = if plugin.path.is_dir() {
                    weir_host::build::build_plugin(&plugin.path)?
                } else {
                    plugin.path.clone()
                };
                let loaded = runtime
                    .load(&wasm, plugin.params.clone())
                    .with_context(|| format!("loading plugin {}", plugin.path.display()))?;
                tracing::info!(plugin = %loaded.info().label(), path = %wasm.display(), "plugin loaded");
                pipeline.add(loaded).with_context(|| format!("loading plugin {}", plugin.path.display()))?;
            }
            pipeline.publish()?;
            serve(&tokio_runtime()?, config.server.http, pipeline.statuses(), engine)
        }
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Serve the API until Ctrl-C.
fn serve(
    runtime: &tokio::runtime::Runtime,
    http: SocketAddr,
    statuses: Vec<PluginStatus>,
    sql: Arc<SqlEngine>,
) -> anyhow::Result<()> {
    let state = Arc::new(ApiState { plugins: std::sync::RwLock::new(statuses), sql });
    runtime.block_on(async move {
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        // A closed stdout (`weir demo | head`) must not take the server down.
        let announce = |addr| {
            use std::io::Write;
            let mut out = std::io::stdout();
            let _ = writeln!(out, "\nserving http://{addr}/ (GET /v1/plugins, GET /v1/tables, POST /v1/sql); Ctrl-C to stop");
            let _ = writeln!(out, "try: weir sql --url http://{addr} \"SELECT status, count(*) FROM orders GROUP BY status\"");
            let _ = out.flush();
        };
        api::serve(http, state, announce, shutdown).await.with_context(|| format!("serving HTTP on {http}"))
    })
}

/// `weir sql`: POST the query to a running host and print the answer.
fn run_sql(sql: &str, url: &str, format: Format) -> anyhow::Result<()> {
    let accept = match format {
        Format::Table => weir_host::api::ARROW_STREAM,
        Format::Json => "application/json",
        Format::Csv => "text/csv",
    };
    let endpoint = format!("{}/v1/sql", url.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let body = serde_json::to_vec(&serde_json::json!({ "sql": sql }))?;
    let mut response = agent
        .post(&endpoint)
        .header("content-type", "application/json")
        .header("accept", accept)
        .send(&body[..])
        .with_context(|| format!("cannot reach weir at {url}; is it running (weir demo, weir serve)?"))?;
    let status = response.status();
    let bytes = response.body_mut().with_config().limit(1 << 30).read_to_vec()?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        anyhow::bail!("{message}");
    }
    match format {
        Format::Table => println!("{}", weir_host::query::to_table(&weir_host::query::from_arrow_ipc(&bytes)?)?),
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
