//! The command line (clap): the only module that knows clap exists.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_host::api::{self, ApiState, PluginStatus};
use weir_host::config::Config;
use weir_host::plugin::PluginRuntime;

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
    /// Work with plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
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
        Command::Demo { events, http, no_serve, plugins } => {
            let options = weir_host::demo::DemoOptions {
                events,
                batch_size: 1024,
                cache_dir: std::env::temp_dir().join("weir-demo").join("wasm-cache"),
                extra_plugins: plugins,
            };
            let statuses = weir_host::demo::run(&options)?;
            if no_serve {
                return Ok(());
            }
            serve_statuses(http, statuses)
        }
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            let runtime =
                PluginRuntime::new(config.limits.clone(), Some(&config.server.data_dir.join("wasm-cache")))?;
            let mut statuses = Vec::new();
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
                statuses.push(PluginStatus {
                    info: loaded.info().clone(),
                    path: wasm.display().to_string(),
                    events_ok: 0,
                    events_failed: 0,
                    instances_started: loaded.instances_started(),
                });
            }
            serve_statuses(config.server.http, statuses)
        }
    }
}

/// Serve the API over these plugin statuses until Ctrl-C.
fn serve_statuses(http: SocketAddr, statuses: Vec<PluginStatus>) -> anyhow::Result<()> {
    let state = Arc::new(ApiState { plugins: std::sync::RwLock::new(statuses) });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        api::serve(http, state, |addr| println!("\nserving http://{addr}/ (GET /v1/plugins); Ctrl-C to stop"), shutdown)
            .await
            .with_context(|| format!("serving HTTP on {http}"))
    })?;
    Ok(())
}
