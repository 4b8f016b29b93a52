//! The assembled host behind `weir serve` and `weir demo`: loads the plugins, restores the latest
//! checkpoint, opens the source, and runs the ingest loop on its own thread while the API and the
//! Postgres listener serve what it publishes.
//!
//! **Invariant:** one host process owns a data directory at a time (an exclusive lock on
//! `<data_dir>/weir.lock`), so two hosts never append to one embedded log or checkpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::admin::{AdminRequest, Intent, Lifecycle, ReaderFactory};
use crate::api::{AdminApi, ApiState};
use crate::auth::AdminToken;
use crate::checkpoint::CheckpointStore;
use crate::config::Config;
use crate::ingest::{Ingest, IngestSettings};
use crate::pipeline::Pipeline;
use crate::registry::{Origin, Registry, Version, now_ms};
use crate::status::{Status, StatusBoard};
use weir_core::source::{EventSink, Source};
use weir_kafka::{KafkaSink, KafkaSource};
use weir_log::EmbeddedLog;
use weir_log::source::{EmbeddedSink, EmbeddedSource};
use weir_runtime::{Plugin, PluginKind, PluginRuntime, content_hash};
use weir_sql::query::{Catalog, SqlEngine};

/// A running host.
pub struct Host {
    /// What the ingest loop reports.
    pub status: StatusBoard,
    /// SQL over the read models.
    pub sql: Arc<SqlEngine>,
    /// Where produced events go.
    pub sink: Arc<dyn EventSink>,
    /// The embedded log, when it is the source.
    pub log: Option<Arc<EmbeddedLog>>,
    /// The token admin requests must carry.
    pub token: AdminToken,
    admin: AdminApi,
    /// `[server] allowed_hosts`.
    allowed_hosts: Vec<String>,
    stop: Arc<AtomicBool>,
    ingest: Option<std::thread::JoinHandle<Pipeline>>,
    _lock: std::fs::File,
}

impl Host {
    /// Build, load and restore everything `config` names, and start ingesting.
    pub fn start(config: &Config) -> anyhow::Result<Host> {
        // Absolute: the compiled-plugin cache refuses a relative directory (`weir demo
        // --data-dir rel`, a config built in code).
        let data_dir = &std::path::absolute(&config.server.data_dir)
            .with_context(|| format!("data directory {}", config.server.data_dir.display()))?;
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let lock_path = data_dir.join("weir.lock");
        let lock = std::fs::File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
        lock.try_lock().map_err(|_| {
            anyhow::anyhow!(
                "{} is locked: another weir process is using data directory {}",
                lock_path.display(),
                data_dir.display()
            )
        })?;

        raise_open_files_limit();
        let token = AdminToken::load(config.server.token.as_deref(), data_dir)?;
        let runtime = Arc::new(PluginRuntime::new(config.limits.clone(), Some(&data_dir.join("wasm-cache")))?);
        let catalog = Arc::new(Catalog::default());
        let sql = Arc::new(SqlEngine::new(catalog.clone(), config.query.clone())?);
        let mut pipeline = Pipeline::new(catalog);
        let mut registry = Registry::open(data_dir)?;
        let checkpoints = CheckpointStore::open(&data_dir.join("checkpoints"), config.checkpoint.keep)?;
        let checkpointed = checkpoints.fingerprints().context("reading the latest checkpoint")?;
        let building = load_plugins(config, &runtime, &mut registry, &mut pipeline, &checkpointed)?;

        let mut marks = None;
        if let Some(stats) = checkpoints.restore(&mut pipeline).context("restoring the latest checkpoint")? {
            marks = Some(stats.outputs.clone());
            tracing::info!(
                seq = stats.seq,
                rows = stats.rows,
                ms = stats.elapsed.as_millis() as u64,
                restored = ?stats.restored,
                "restored checkpoint"
            );
            for (plugin, why) in &stats.rebuilt {
                tracing::warn!(
                    plugin,
                    why,
                    "plugin starts over: at its `start` on the embedded log; on Kafka not below the group's committed positions (use a new group_id to replay history)"
                );
            }
        }
        pipeline.publish()?;

        let topics = pipeline.topics();
        let (source, sink, log, readers): (Box<dyn Source>, Arc<dyn EventSink>, _, Option<ReaderFactory>) =
            match &config.kafka {
                Some(kafka) => {
                    let source = KafkaSource::new(kafka, &topics, pipeline.known_positions())?;
                    tracing::info!(brokers = %kafka.brokers, group = %kafka.group_id, ?topics, "reading from kafka");
                    (Box::new(source), Arc::new(KafkaSink::new(kafka)?), None, None)
                }
                None => {
                    let log = Arc::new(EmbeddedLog::open(&data_dir.join("log"), config.log.clone())?);
                    refuse_positions_past_the_end(&pipeline, &log)?;
                    let source = EmbeddedSource::new(log.clone(), &topics, |topic, partition| {
                        pipeline.start_offset(topic, partition)
                    })?;
                    let reader_log = log.clone();
                    let readers: ReaderFactory = Box::new(move |topics, positions| {
                        let source = EmbeddedSource::new(reader_log.clone(), topics, |topic, partition| {
                            positions.get(&(topic.to_string(), partition)).copied().unwrap_or(0)
                        })?;
                        Ok(Box::new(source) as Box<dyn Source>)
                    });
                    (Box::new(source), Arc::new(EmbeddedSink(log.clone())), Some(log), Some(readers))
                }
            };

        pipeline.set_metered(config.server.metrics);
        pipeline.set_threads(config.server.plugin_threads)?;
        let status: StatusBoard = Arc::new(RwLock::new(Status {
            plugins: pipeline.statuses(),
            started_ms: crate::registry::now_ms(),
            metered: config.server.metrics,
            ..Status::default()
        }));
        let logs = pipeline.log_rings();
        let registry = Arc::new(std::sync::Mutex::new(registry));
        let (requests_tx, requests) = std::sync::mpsc::channel();
        // A rebuild a restart interrupted starts again.
        for (name, version, plugin) in building {
            let (reply, _) = tokio::sync::oneshot::channel();
            let install = crate::admin::Install { plugin, version, intent: Intent::Rebuild };
            tracing::info!(plugin = %name, "the rebuild a restart interrupted starts again");
            let _ = requests_tx.send(AdminRequest::Install(Box::new(install), reply));
        }
        let settings = IngestSettings {
            batch_size: config.server.batch_size,
            publish_interval: Duration::from_millis(config.server.publish_interval_ms.max(1)),
            checkpoint: config.checkpoint.clone(),
            tick_interval: Duration::from_millis(config.server.tick_ms.max(1)),
        };
        let stop = Arc::new(AtomicBool::new(false));
        pipeline.set_journal(config.server.effectively_once);
        let mut ingest = Ingest::new(pipeline, source, sink.clone(), checkpoints, settings, status.clone())
            .with_lifecycle(Lifecycle { requests, readers, registry: registry.clone() });
        if config.server.effectively_once {
            // What the previous process wrote after the checkpoint (all of it, with no
            // checkpoint): re-processing emits it again, and it is not written twice.
            ingest = ingest.reading_back_from(marks.unwrap_or_default());
        }
        let thread_stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name("weir-ingest".into())
            .spawn(move || ingest.run(&thread_stop))
            .context("starting the ingest thread")?;
        let admin = AdminApi { runtime, registry, requests: Arc::new(std::sync::Mutex::new(requests_tx)), logs };
        let allowed_hosts = config.server.allowed_hosts.clone();
        Ok(Host { status, sql, sink, log, token, admin, allowed_hosts, stop, ingest: Some(handle), _lock: lock })
    }

    /// State for the HTTP API listening on `http`: reads need the token too when it is bound
    /// beyond loopback. (Once bound, [`AdminToken::advertise`] tells the CLI where the token is.)
    pub fn api_state(&self, http: SocketAddr) -> Arc<ApiState> {
        Arc::new(ApiState {
            status: self.status.clone(),
            sql: self.sql.clone(),
            sink: Some(self.sink.clone()),
            token: Some(self.token.clone()),
            reads_need_token: !http.ip().is_loopback(),
            admin: Some(self.admin.clone()),
            hosts: crate::api::AllowedHosts::new(http, &self.allowed_hosts),
        })
    }

    /// Wait until every plugin has caught up with the end of every partition it reads (lag 0)
    /// and the first plugin's partitions hold at least `min_events` in all, or `timeout`.
    /// Returns whether it caught up.
    pub fn wait_caught_up(&self, min_events: u64, timeout: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < timeout {
            {
                let status = self.status.read().unwrap_or_else(|e| e.into_inner());
                let first = status.lag.first().map(|l| l.plugin.clone()).unwrap_or_default();
                let ends: u64 = status.lag.iter().filter(|l| l.plugin == first).map(|l| l.end).sum();
                if ends >= min_events && status.lag.iter().all(|l| l.lag == 0) && status.emitted_pending == 0 {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Stop ingesting, write the final checkpoint, and return the pipeline.
    pub fn shutdown(mut self) -> Option<Pipeline> {
        self.stop.store(true, Ordering::Relaxed);
        self.ingest.take().and_then(|h| h.join().ok())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.ingest.take() {
            let _ = handle.join();
        }
    }
}

/// Bring the registry up to date with the config file's plugins, then load every plugin it says
/// runs (paused ones paused) into `pipeline`. Returns the versions whose rebuild a restart
/// interrupted, loaded, to start again.
fn load_plugins(
    config: &Config,
    runtime: &PluginRuntime,
    registry: &mut Registry,
    pipeline: &mut Pipeline,
    checkpointed: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<Vec<(String, Version, Plugin)>> {
    let mut listed = Vec::new();
    for plugin in &config.plugins {
        let wasm = resolve_plugin(&plugin.path)?;
        let bytes = std::fs::read(&wasm)
            .with_context(|| format!("loading plugin {}: cannot read {}", plugin.path.display(), wasm.display()))?;
        let loaded = runtime
            .load_bytes(&wasm, &bytes, plugin.params.clone())
            .with_context(|| format!("loading plugin {}", plugin.path.display()))?;
        let name = loaded.info().name.clone();
        if listed.contains(&name) {
            anyhow::bail!(
                "loading plugin {}: the config lists two plugins named {name}; a plugin name is unique in a host",
                plugin.path.display()
            );
        }
        listed.push(name.clone());
        let hash = content_hash(&bytes);
        if registry.find_config_version(&name, &hash, &plugin.params).is_none() {
            registry.store_component(&hash, &bytes)?;
            // A handler's new version continues where the old one was (its output is events
            // already written: starting over would write its history again).
            let takes_over = match (loaded.info().kind.clone(), registry.entry(&name).and_then(|e| e.current_version()))
            {
                (PluginKind::Handler { .. }, Some(previous)) => {
                    let path = registry.component_path(&previous.component);
                    match runtime.load(&path, previous.params.clone()) {
                        Ok(old) if matches!(old.info().kind, PluginKind::Handler { .. }) => {
                            let mut fingerprints = previous.takes_over.clone();
                            fingerprints.push(old.fingerprint().to_string());
                            let excess = fingerprints.len().saturating_sub(crate::pipeline::MAX_TAKEN_OVER);
                            fingerprints.drain(..excess);
                            fingerprints
                        }
                        _ => Vec::new(),
                    }
                }
                _ => Vec::new(),
            };
            let deploy = registry.add_version(
                &name,
                Version {
                    deploy: 0,
                    component: hash,
                    version: loaded.info().version.clone(),
                    deployed_ms: now_ms(),
                    params: plugin.params.clone(),
                    start: plugin.start,
                    origin: Origin::Config,
                    config_path: Some(plugin.path.clone()),
                    takes_over,
                    on_error: plugin.on_error,
                },
            );
            registry.set_current(&name, deploy);
            tracing::info!(plugin = %loaded.info().label(), deploy, "config plugin recorded as a new deploy");
        }
    }
    // A config plugin no longer in the config stops (a CLI deploy on top of it stays).
    let dropped: Vec<String> = registry
        .entries()
        .iter()
        .filter(|e| !listed.contains(&e.name))
        .filter(|e| e.current_version().is_some_and(|v| v.origin == Origin::Config))
        .map(|e| e.name.clone())
        .collect();
    for name in dropped {
        tracing::info!(plugin = %name, "no longer in the config file: stopped");
        registry.remove(&name);
    }
    // A rebuilt version the latest checkpoint holds took over before a crash that came before
    // the registry recorded it: it serves.
    let promoted: Vec<(String, u32)> = registry
        .entries()
        .iter()
        .filter_map(|e| {
            let next = e.version(e.building?)?;
            let path = registry.component_path(&next.component);
            let saved = checkpointed.get(&e.name)?;
            let plugin = runtime.load(&path, next.params.clone()).ok()?;
            (plugin.fingerprint() == saved).then(|| (e.name.clone(), next.deploy))
        })
        .collect();
    for (name, deploy) in promoted {
        tracing::info!(plugin = %name, deploy, "the latest checkpoint holds the rebuilt version: it serves");
        registry.set_current(&name, deploy);
    }
    registry.save()?;

    let mut building = Vec::new();
    for entry in registry.entries() {
        let load = |version: &Version| -> anyhow::Result<Plugin> {
            let path = registry.component_path(&version.component);
            let mut plugin = runtime.load(&path, version.params.clone()).with_context(|| {
                format!("loading plugin {} deploy {} from {}", entry.name, version.deploy, path.display())
            })?;
            if plugin.info().name != entry.name {
                plugin
                    .rename(&entry.name)
                    .map_err(|e| anyhow::anyhow!("the registry names plugin {:?}: {e}", entry.name))?;
            }
            Ok(plugin)
        };
        let Some(version) = entry.current_version() else { continue };
        let plugin = load(version)?;
        tracing::info!(plugin = %plugin.info().label(), deploy = version.deploy, paused = entry.paused, "plugin loaded");
        pipeline.add(plugin).with_context(|| format!("loading plugin {}", entry.name))?;
        pipeline.set_deploy(&entry.name, version.deploy, version.takes_over.clone());
        pipeline.set_start(&entry.name, version.start);
        pipeline.set_paused(&entry.name, entry.paused);
        pipeline.set_on_error(&entry.name, version.on_error);
        if let Some(next) = entry.building.and_then(|d| entry.version(d)) {
            building.push((entry.name.clone(), next.clone(), load(next)?));
        }
    }
    Ok(building)
}

/// Fail when a plugin's restored position is past the end of its partition in the embedded log:
/// the log lost its tail after the checkpoint (`fsync = "never"` and a power cut, a damaged
/// disk), and reading on would skip the events appended there next.
fn refuse_positions_past_the_end(pipeline: &Pipeline, log: &EmbeddedLog) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for progress in pipeline.positions() {
        for ((topic, partition), position) in &progress.positions {
            let Ok(ranges) = log.ranges(topic) else { continue };
            let end = ranges.iter().find(|r| r.partition == *partition).map_or(0, |r| r.end);
            if *position > end {
                problems.push(format!(
                    "plugin {} is at {topic}/{partition}@{position} but the embedded log's {topic}/{partition} ends at {end}",
                    progress.label
                ));
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{}: the log lost events it had acknowledged after the last checkpoint (a crash with fsync = \"never\", or a damaged disk). weir does not start: reading on would skip the events written at those offsets next. Restore the log, or remove the checkpoints to rebuild from what the log holds",
        problems.join("; ")
    )
}

/// Raise the soft limit of open files to the hard one: each partition of the embedded log keeps
/// its active segment open, and the usual soft limit (1,024) is reached at ~250 partitions.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current < limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::debug!(from = ?limit.current, to = ?limit.maximum, "raised the open files limit"),
            Err(e) => tracing::warn!(error = %e, soft = ?limit.current, "cannot raise the open files limit"),
        }
    }
}

/// Fail when another process holds `data_dir`'s lock (a running host).
pub fn ensure_unlocked(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let lock_path = data_dir.join("weir.lock");
    let Ok(file) = std::fs::File::open(&lock_path) else { return Ok(()) };
    if file.try_lock().is_err() {
        anyhow::bail!(
            "{} is locked: another weir process is using data directory {}",
            lock_path.display(),
            data_dir.display()
        );
    }
    Ok(())
}

/// A plugin path: a `.wasm` file as is, a crate directory built first.
pub fn resolve_plugin(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    if path.is_dir() { Ok(crate::build::build_plugin(path)?) } else { Ok(path.to_owned()) }
}

/// Serve the HTTP API (and the Postgres listener when configured) until `shutdown` resolves.
pub async fn serve_api(
    http: SocketAddr,
    state: Arc<ApiState>,
    announce: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::api::serve(http, state, announce, shutdown).await.with_context(|| format!("serving HTTP on {http}"))
}
