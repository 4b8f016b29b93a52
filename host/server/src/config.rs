//! The host's configuration: built-in defaults, under the user's TOML file, under `WEIR_*`
//! environment variables. Unknown keys are errors; every error names the file, line and key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::checkpoint::CheckpointConfig;
use weir_core::event::StartAt;
use weir_kafka::KafkaConfig;
use weir_log::LogConfig;
use weir_runtime::Limits;
use weir_sql::query::QueryLimits;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid for weir.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the key.
        message: String,
    },
    /// An environment variable has a bad value.
    #[error("environment variable {name}={value:?}: {message}")]
    Env {
        /// Variable name.
        name: String,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
    },
}

/// A `Result` with a [`ConfigError`].
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the host listens and keeps its data.
    #[serde(default)]
    pub server: ServerConfig,
    /// Caps every plugin runs under.
    #[serde(default)]
    pub limits: Limits,
    /// Limits every SQL query runs under.
    #[serde(default)]
    pub query: QueryLimits,
    /// The embedded log (the source when no `[kafka]` section is given).
    #[serde(default)]
    pub log: LogConfig,
    /// Checkpoint cadence and retention.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Kafka / Redpanda: when present, the source and the sink instead of the embedded log.
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// The plugins to load.
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<PluginConfig>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// HTTP listen address (loopback by default). Env: `WEIR_HTTP`.
    pub http: SocketAddr,
    /// Data directory (checkpoints, embedded log, compiled-plugin cache). Env: `WEIR_DATA_DIR`.
    pub data_dir: PathBuf,
    /// Events per plugin call.
    pub batch_size: usize,
    /// Threads plugins run on: the plugins a batch goes to process it side by side, one thread
    /// each (up to this many at once). 0 (the default): one per core. 1: one after another on
    /// the ingest thread.
    pub plugin_threads: usize,
    /// Longest time, in milliseconds, between an event being applied and queries seeing it.
    pub publish_interval_ms: u64,
    /// Milliseconds between the ticks written to `weir.ticks` while a handler reads them
    /// (timers fire at the first tick at or after their instant).
    pub tick_ms: u64,
    /// Handlers' output effectively once (true, the default): their batches are journaled and,
    /// after a crash, what they wrote since the checkpoint is read back and not written again.
    /// False: at least once (a crash may write some emitted events twice), for comparison.
    pub effectively_once: bool,
    /// Count every plugin's work per partition and time its batches, for `GET /metrics`, the
    /// dashboard and `weir status` (true, the default). False: only totals are kept, `/metrics`
    /// answers 404; for measuring what metrics cost.
    pub metrics: bool,
    /// Postgres wire-protocol listen address (loopback by default), or `"off"`. Env: `WEIR_PG`.
    #[serde(deserialize_with = "listener")]
    pub pg: Option<SocketAddr>,
    /// Arrow Flight SQL listen address (loopback by default), or `"off"`. Env: `WEIR_FLIGHT`.
    #[serde(deserialize_with = "listener")]
    pub flight: Option<SocketAddr>,
    /// The admin token (at least 16 characters). Absent: generated into `<data_dir>/token`.
    /// Env: `WEIR_TOKEN`.
    pub token: Option<String>,
    /// Names the HTTP API answers to besides the loopback ones (`localhost`, `127.0.0.1`,
    /// `[::1]`), without port: a request addressed to any other name is refused (421), which
    /// stops DNS rebinding. Empty on a listener bound beyond loopback: any name.
    pub allowed_hosts: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("data"),
            batch_size: 1024,
            plugin_threads: 0,
            publish_interval_ms: 100,
            tick_ms: 1_000,
            effectively_once: true,
            metrics: true,
            pg: Some(SocketAddr::from(([127, 0, 0, 1], 5433))),
            flight: Some(SocketAddr::from(([127, 0, 0, 1], 8815))),
            token: None,
            allowed_hosts: Vec::new(),
        }
    }
}

/// `[[plugin]]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// A `.wasm` component, or a plugin crate directory that weir builds first. Relative paths
    /// are relative to the config file.
    pub path: PathBuf,
    /// Parameters the plugin reads with `param(name)`.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Where the plugin starts when it has no checkpoint of its own: `"earliest"` (default),
    /// `"latest"`, or an RFC 3339 time.
    #[serde(default)]
    pub start: StartAt,
    /// What an event the plugin fails on does: `"dead-letter"` (default: to the topic
    /// `weir.dlq.<plugin>`, and the plugin goes on) or `"stop"` (the plugin stops at it).
    #[serde(default)]
    pub on_error: crate::output::OnError,
}

/// A listener address in a config file, or `"off"`.
fn listener<'de, D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text == "off" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|e| {
        serde::de::Error::custom(format!("{text:?} is not an address like \"127.0.0.1:5433\" or \"off\": {e}"))
    })
}

/// An address from environment variable `name`, or `None` for `off` (or empty).
fn optional_address(name: &str, value: &str) -> Result<Option<SocketAddr>> {
    if value.is_empty() || value == "off" {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|e: std::net::AddrParseError| ConfigError::Env {
        name: name.into(),
        value: value.to_string(),
        message: e.to_string(),
    })
}

impl Config {
    /// Parse a config file's text; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            let before = &text[..offset.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            ConfigError::Parse { path: path.to_owned(), line, column, message: e.message().trim().to_string() }
        })?;
        // Relative paths are relative to the file, made absolute (`--config weir.toml` has an
        // empty parent; the compiled-plugin cache needs an absolute directory).
        let base = path.parent().unwrap_or(Path::new("."));
        let anchor = |relative: &Path| std::path::absolute(base.join(relative)).unwrap_or_else(|_| base.join(relative));
        for plugin in &mut config.plugins {
            if plugin.path.is_relative() {
                plugin.path = anchor(&plugin.path);
            }
        }
        if config.server.data_dir.is_relative() {
            config.server.data_dir = anchor(&config.server.data_dir);
        }
        Ok(config)
    }

    /// Read and parse a config file, then apply `WEIR_*` overrides.
    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut config = Config::parse(path, &text)?;
        config.apply_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    /// Apply `WEIR_HTTP`, `WEIR_PG` and `WEIR_FLIGHT` (an address, or `off`), `WEIR_DATA_DIR` and
    /// `WEIR_TOKEN`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(value) = var("WEIR_HTTP") {
            self.server.http = value.parse().map_err(|e: std::net::AddrParseError| ConfigError::Env {
                name: "WEIR_HTTP".into(),
                value: value.clone(),
                message: e.to_string(),
            })?;
        }
        if let Some(value) = var("WEIR_PG") {
            self.server.pg = optional_address("WEIR_PG", &value)?;
        }
        if let Some(value) = var("WEIR_FLIGHT") {
            self.server.flight = optional_address("WEIR_FLIGHT", &value)?;
        }
        if let Some(value) = var("WEIR_DATA_DIR") {
            // Relative to where weir runs, made absolute (the compiled-plugin cache needs it).
            let dir = PathBuf::from(value);
            self.server.data_dir = std::path::absolute(&dir).unwrap_or(dir);
        }
        if let Some(value) = var("WEIR_TOKEN").filter(|v| !v.trim().is_empty()) {
            self.server.token = Some(value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = Config::parse(Path::new("weir.toml"), "[server]\nhttp = \"127.0.0.1:1\"\nhtpp = 3\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("weir.toml:3:1: unknown field `htpp`"), "{text}");
    }

    #[test]
    fn a_bad_plugin_start_names_line_and_value() {
        let text = "[[plugin]]\npath = \"a.wasm\"\nstart = \"2026-11-01T00:00:00Z\"\n\n[[plugin]]\npath = \"b.wasm\"\nstart = \"soon\"\n";
        let err = Config::parse(Path::new("weir.toml"), text).unwrap_err().to_string();
        assert!(
            err.starts_with("weir.toml:7:9: start \"soon\" is not \"earliest\", \"latest\" or an RFC 3339 time"),
            "{err}"
        );
        let ok = Config::parse(Path::new("weir.toml"), &text.replace("soon", "latest")).unwrap();
        assert_eq!(ok.plugins[0].start, StartAt::Time(1_793_491_200_000_000));
        assert_eq!(ok.plugins[1].start, StartAt::Latest);
    }

    #[test]
    fn plugin_paths_are_relative_to_the_file() {
        let config =
            Config::parse(Path::new("config/weir.toml"), "[[plugin]]\npath = \"../plugins/orders\"\n").unwrap();
        let expected = std::env::current_dir().unwrap().join("config/../plugins/orders");
        assert_eq!(config.plugins[0].path, expected);
        // A file named without a directory anchors at the working directory, as an absolute path
        // (the compiled-plugin cache under the data directory must be absolute).
        let mut config = Config::parse(Path::new("weir.toml"), "[server]\ndata_dir = \"data\"\n").unwrap();
        assert_eq!(config.server.data_dir, std::env::current_dir().unwrap().join("data"));
        // So is one from the environment.
        config.apply_env(|name| (name == "WEIR_DATA_DIR").then(|| "rel/data".to_string())).unwrap();
        assert_eq!(config.server.data_dir, std::env::current_dir().unwrap().join("rel/data"));
    }

    #[test]
    fn the_shipped_configs_parse() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/weir.toml"));
        let config = Config::parse(path, include_str!("../../../config/weir.toml")).unwrap();
        assert_eq!(config.plugins.len(), 2);
        assert_eq!(config.limits, Limits::default());
        assert!(config.server.http.ip().is_loopback());
        assert!(config.kafka.is_none());
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/redpanda.toml"));
        let config = Config::parse(path, include_str!("../../../config/redpanda.toml")).unwrap();
        let kafka = config.kafka.unwrap();
        assert_eq!((kafka.brokers.as_str(), kafka.group_id.as_str()), ("127.0.0.1:9092", "weir"));
    }

    #[test]
    fn env_overrides_the_file() {
        let mut config = Config::default();
        config.apply_env(|n| (n == "WEIR_HTTP").then(|| "127.0.0.1:9999".to_string())).unwrap();
        assert_eq!(config.server.http.port(), 9999);
        let err = config.apply_env(|n| (n == "WEIR_HTTP").then(|| "nope".to_string())).unwrap_err();
        assert!(err.to_string().contains("WEIR_HTTP=\"nope\""), "{err}");
    }
}
