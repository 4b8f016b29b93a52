//! The plugin lifecycle inside the ingest loop: deploys, hot swaps, side-by-side rebuilds,
//! rollbacks, pauses, resumes and removals, each applied between two batches.
//!
//! The admin API loads and checks a component (compiled, world checked, `describe` called) on its
//! own threads and sends an [`AdminRequest`]; the ingest loop takes requests between batches, so
//! a change never lands in the middle of one. What a request does:
//!
//! - a new name: the plugin starts at its `start`, reading on a catch-up reader of its own until
//!   it reaches the end of its partitions, then joins the shared feed;
//! - a new version of a handler, or of a projection deployed with `take_over` (same tables
//!   required): it replaces the running version at this batch boundary and continues from exactly
//!   its positions, state and tables;
//! - any other new version of a projection, `rebuild` and a `rollback` to different tables: the
//!   version replays from its start into tables of its own beside the serving one; when it has
//!   caught up, queries switch to its tables in one swap (`Pipeline::catch_up`).
//!
//! **Architecture Invariant:** a request that fails its checks changes neither the registry
//! (`plugins.json`) nor the pipeline: the running version is untouched. The registry names a
//! version before any checkpoint holds it: written before the change, or for a swap on a thread
//! of its own that the answer and the next checkpoint wait for; a rebuilt version is recorded once
//! a checkpoint holds its tables.

use std::sync::{Arc, Mutex};

use crate::ingest::Ingest;
use crate::output::{dead_letter_topic, original_of};
use crate::registry::{Registry, Version};
use crate::status::AdminOutcome;
use weir_core::event::{Event, PositionMap, StartAt};
use weir_core::source::{Source, SourceError};
use weir_runtime::{Plugin, PluginKind};

/// Makes a reader of the host's source for some topics, starting at given positions (the
/// embedded log can; a consumer group cannot, so on Kafka there is none).
pub type ReaderFactory = Box<dyn Fn(&[String], &PositionMap) -> Result<Box<dyn Source>, SourceError> + Send + Sync>;

/// Where the answer to a request goes.
pub type Reply = tokio::sync::oneshot::Sender<Result<AdminOutcome, AdminError>>;

/// What a loaded, checked component is deployed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// A new version (or a new plugin). `take_over`: a projection continues from the running
    /// version's positions, state and tables instead of rebuilding beside it.
    Deploy {
        /// Continue in place (same tables required).
        take_over: bool,
    },
    /// Back to an earlier version.
    Rollback,
    /// The same version again, rebuilt from its start beside the serving one.
    Rebuild,
}

/// A component to install, loaded and checked by the API.
pub struct Install {
    /// The plugin, loaded (under the name it runs as).
    pub plugin: Plugin,
    /// Its registry record (`deploy` 0 for a new version; the existing number otherwise).
    pub version: Version,
    /// Why.
    pub intent: Intent,
}

/// A request to the ingest loop.
pub enum AdminRequest {
    /// Deploy, roll back to, or rebuild a version.
    Install(Box<Install>, Reply),
    /// Stop processing; keep position, state and tables.
    Pause(String, Reply),
    /// Process again from where it paused.
    Resume(String, Reply),
    /// Stop and drop the tables.
    Remove(String, Reply),
    /// Run the plugin's dead letters through its current version; resolve those that succeed.
    Replay(String, Reply),
    /// Settle every dead letter of the plugin without running it.
    Purge(String, Reply),
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No such plugin.
    #[error("no plugin named {0:?} runs in this host (GET /v1/plugins lists them)")]
    NotFound(String),
    /// The request contradicts what runs (incompatible tables, kind, names).
    #[error("{0}")]
    Conflict(String),
    /// The component or request is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// This host's source cannot do it.
    #[error("{0}")]
    Unsupported(String),
    /// The host failed to do it (disk).
    #[error("{0}")]
    Failed(String),
}

/// A registry write on a thread of its own, for a swap already applied: its answer waits for it.
pub(crate) struct PendingSave {
    done: std::sync::mpsc::Receiver<Result<(), String>>,
    /// The answer, once the request that needed the write has one.
    answer: Option<(AdminOutcome, Reply)>,
}

/// What applying the waiting requests did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Something changed: publish and report.
    pub(crate) changed: bool,
    /// Write a checkpoint as soon as possible.
    pub(crate) checkpoint: bool,
    /// Records to write (what replayed dead letters emitted).
    pub(crate) outgoing: Vec<crate::output::Outgoing>,
}

/// What the admin side shares with the ingest loop.
pub struct Lifecycle {
    /// Requests from the API.
    pub requests: std::sync::mpsc::Receiver<AdminRequest>,
    /// Catch-up readers (absent on Kafka).
    pub readers: Option<ReaderFactory>,
    /// The registry of deployed versions.
    pub registry: Arc<Mutex<Registry>>,
}

const NO_READERS: &str = "this host reads from Kafka, where a plugin cannot yet read history on a reader of its own: deploying a new plugin, a projection version that rebuilds, a handler that reads new topics, pause and resume need the embedded log for now; on Kafka, add the plugin to the config file and restart";

impl Ingest {
    /// Answer a swap whose registry write has finished (with `wait`, once it has).
    pub(crate) fn finish_save(&mut self, wait: bool) {
        let Some(saving) = &self.saving else { return };
        let result = if wait {
            saving.done.recv().unwrap_or_else(|_| Err("the registry writer stopped".into()))
        } else {
            match saving.done.try_recv() {
                Ok(result) => result,
                Err(std::sync::mpsc::TryRecvError::Empty) => return,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => Err("the registry writer stopped".into()),
            }
        };
        let Some(saving) = self.saving.take() else { return };
        if let Err(e) = &result {
            tracing::error!(error = %e, "recording a swap in the registry failed; it runs, but a restart brings back what the registry says");
        }
        if let Some((outcome, reply)) = saving.answer {
            let _ = reply.send(result.map(|()| outcome).map_err(|e| {
                AdminError::Failed(format!(
                    "the new version runs, but recording it failed ({e}): a restart brings back the previous one"
                ))
            }));
        }
    }

    /// Write the registry on a thread of its own (after any write still running).
    fn save_in_background(&mut self, encoded: (std::path::PathBuf, Vec<u8>)) {
        self.finish_save(true);
        let (tx, done) = std::sync::mpsc::channel();
        let (path, text) = encoded;
        let spawned = std::thread::Builder::new().name("weir-registry".into()).spawn(move || {
            let _ = tx.send(weir_core::durable::write_atomically(&path, &text).map_err(|e| e.to_string()));
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the registry writer");
        }
        self.saving = Some(PendingSave { done, answer: None });
    }

    /// Take every request waiting and apply it.
    pub(crate) fn handle_admin(&mut self) -> Applied {
        let mut applied = Applied::default();
        self.finish_save(false);
        loop {
            let Some(lifecycle) = &self.lifecycle else { return applied };
            let request = match lifecycle.requests.try_recv() {
                Ok(request) => request,
                Err(_) => return applied,
            };
            let started = std::time::Instant::now();
            let (mut result, reply) = match request {
                AdminRequest::Install(install, reply) => {
                    let (name, on_error) = (install.plugin.info().name.clone(), install.version.on_error);
                    let result = self.install(*install);
                    if result.is_ok() {
                        self.pipeline.set_on_error(&name, on_error);
                    }
                    (result, reply)
                }
                AdminRequest::Pause(name, reply) => (self.pause(&name), reply),
                AdminRequest::Resume(name, reply) => (self.resume(&name), reply),
                AdminRequest::Remove(name, reply) => (self.remove(&name), reply),
                AdminRequest::Replay(name, reply) => (self.replay(&name, &mut applied.outgoing), reply),
                AdminRequest::Purge(name, reply) => (self.purge(&name), reply),
            };
            match &mut result {
                Err(e) => tracing::warn!(error = %e, "admin request refused"),
                Ok(outcome) => {
                    outcome.applied_ms = started.elapsed().as_secs_f64() * 1000.0;
                    applied.changed = true;
                    // A swapped version restores the checkpoints of the one it replaced, so
                    // it needs no checkpoint of its own now; every other change does.
                    applied.checkpoint |= !matches!(outcome.action.as_str(), "swapped" | "unchanged");
                }
            }
            // A swap's answer waits for its registry write (off this thread, so the pause in
            // processing is only the swap itself).
            if let (Ok(outcome), Some(saving)) = (&result, &mut self.saving)
                && saving.answer.is_none()
                && outcome.action == "swapped"
            {
                saving.answer = Some((outcome.clone(), reply));
                continue;
            }
            // The API may have given up waiting; the change stands either way.
            let _ = reply.send(result);
        }
    }

    fn registry(&self) -> Result<std::sync::MutexGuard<'_, Registry>, AdminError> {
        let lifecycle = self.lifecycle.as_ref().ok_or_else(|| AdminError::Unsupported("no admin".into()))?;
        Ok(lifecycle.registry.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn reader(&self, topics: &[String], positions: &PositionMap) -> Result<Box<dyn Source>, AdminError> {
        let factory = self
            .lifecycle
            .as_ref()
            .and_then(|l| l.readers.as_ref())
            .ok_or_else(|| AdminError::Unsupported(NO_READERS.into()))?;
        factory(topics, positions).map_err(|e| AdminError::Failed(format!("opening a reader for {topics:?}: {e}")))
    }

    fn can_read_alone(&self) -> bool {
        self.lifecycle.as_ref().is_some_and(|l| l.readers.is_some())
    }

    /// Where `start` is on each partition of `topics` (empty for `earliest`: from the start).
    fn start_positions(&mut self, topics: &[String], start: StartAt) -> Result<PositionMap, AdminError> {
        let mut positions = PositionMap::new();
        if start == StartAt::Earliest {
            return Ok(positions);
        }
        for topic in topics {
            let offsets = self
                .source
                .start_offsets(topic, start)
                .map_err(|e| AdminError::Failed(format!("finding where {start} is in topic {topic}: {e}")))?;
            for (partition, offset) in offsets {
                positions.insert((topic.clone(), partition), offset);
            }
        }
        Ok(positions)
    }

    fn save(registry: &Registry) -> Result<(), AdminError> {
        registry.save().map_err(|e| AdminError::Failed(format!("recording the change: {e}; nothing changed")))
    }

    fn install(&mut self, install: Install) -> Result<AdminOutcome, AdminError> {
        let Install { plugin, mut version, intent } = install;
        let name = plugin.info().name.clone();
        let label = plugin.info().label();
        let Some(running) = self.pipeline.plugin(&name) else {
            if !matches!(intent, Intent::Deploy { .. }) {
                return Err(AdminError::NotFound(name));
            }
            return self.deploy_new(plugin, version);
        };
        let (old_kind, old_topics, old_fingerprint) =
            (running.info().kind.clone(), running.info().topics.clone(), running.fingerprint().to_string());
        let old_label = running.info().label();
        if matches!(intent, Intent::Deploy { .. }) && running.fingerprint() == plugin.fingerprint() {
            let deploy = self.registry()?.entry(&name).and_then(|e| e.current);
            return Ok(AdminOutcome {
                name,
                action: "unchanged".into(),
                deploy,
                applied_ms: 0.0,
                message: format!("{label} with these parameters is what runs already; nothing changed"),
            });
        }
        let same_tables = match (&old_kind, &plugin.info().kind) {
            (PluginKind::Projection { tables: old }, PluginKind::Projection { tables: new }) => old == new,
            (PluginKind::Handler { .. }, PluginKind::Handler { .. }) => true,
            (PluginKind::Projection { .. }, PluginKind::Handler { .. }) => {
                return Err(AdminError::Conflict(format!(
                    "{name} is a projection and {label} is a handler: a plugin keeps its kind; remove {name} first or deploy under another --name"
                )));
            }
            (PluginKind::Handler { .. }, PluginKind::Projection { .. }) => {
                return Err(AdminError::Conflict(format!(
                    "{name} is a handler and {label} is a projection: a plugin keeps its kind; remove {name} first or deploy under another --name"
                )));
            }
        };
        let is_handler = matches!(old_kind, PluginKind::Handler { .. });
        let swap = match intent {
            Intent::Deploy { take_over } => is_handler || take_over,
            Intent::Rollback => same_tables,
            Intent::Rebuild if is_handler => {
                return Err(AdminError::Conflict(format!(
                    "{name} is a handler: its output is events already emitted, so it is not rebuilt; deploy a new version to change what it does next"
                )));
            }
            Intent::Rebuild => false,
        };
        if swap {
            if !same_tables {
                return Err(AdminError::Conflict(format!(
                    "--take-over needs the same tables, and {label}'s differ from {old_label}'s: {}; deploy without --take-over to rebuild it side by side",
                    describe_table_change(&old_kind, &plugin.info().kind)
                )));
            }
            let new_topics = plugin.info().topics.iter().any(|t| !old_topics.contains(t));
            if new_topics && !self.can_read_alone() {
                return Err(AdminError::Unsupported(NO_READERS.into()));
            }
            let deploy = {
                let mut registry = self.registry()?;
                let mut chain = self.pipeline.taken_over(&name);
                chain.push(old_fingerprint);
                let excess = chain.len().saturating_sub(crate::pipeline::MAX_TAKEN_OVER);
                chain.drain(..excess);
                version.takes_over = chain;
                if version.deploy == 0 {
                    version.deploy = registry.add_version(&name, version.clone());
                } else {
                    registry.set_takes_over(&name, version.deploy, version.takes_over.clone());
                }
                registry.set_current(&name, version.deploy);
                if !self.pipeline.is_rebuilding(&name) {
                    registry.set_building(&name, None);
                }
                let encoded = registry
                    .encode()
                    .map_err(|e| AdminError::Failed(format!("recording the change: {e}; nothing changed")))?;
                (version.deploy, encoded)
            };
            let (deploy, encoded) = deploy;
            // Written before any checkpoint can hold the new version (`start_checkpoint` waits).
            self.save_in_background(encoded);
            let topics = plugin.info().topics.clone();
            self.pipeline.swap(&name, plugin, deploy);
            if new_topics {
                let positions = self.pipeline.positions_of(&name).unwrap_or_default();
                let reader = self.reader(&topics, &positions)?;
                self.pipeline.set_catch_up(&name, reader);
            }
            tracing::info!(plugin = %label, deploy, replaced = %old_label, "hot swap at a batch boundary");
            return Ok(AdminOutcome {
                name,
                action: "swapped".into(),
                deploy: Some(deploy),
                applied_ms: 0.0,
                message: format!(
                    "{label} (deploy {deploy}) replaced {old_label} between two batches and continues from its positions and state"
                ),
            });
        }
        // Side by side.
        if !self.can_read_alone() {
            return Err(AdminError::Unsupported(NO_READERS.into()));
        }
        if let PluginKind::Projection { tables } = &plugin.info().kind {
            self.pipeline.catalog().check_names(&name, tables).map_err(|e| AdminError::Conflict(e.to_string()))?;
        }
        let positions = self.start_positions(&plugin.info().topics.clone(), version.start)?;
        let reader = self.reader(&plugin.info().topics.clone(), &positions)?;
        let deploy = {
            let mut registry = self.registry()?;
            if version.deploy == 0 {
                version.deploy = registry.add_version(&name, version.clone());
            }
            registry.set_building(&name, Some(version.deploy));
            Self::save(&registry)?;
            version.deploy
        };
        let reason = match intent {
            Intent::Deploy { .. } => "deploy",
            Intent::Rollback => "rollback",
            Intent::Rebuild => "rebuild",
        };
        self.pipeline.start_shadow(&name, plugin, deploy, reason, reader);
        Ok(AdminOutcome {
            name,
            action: "rebuilding".into(),
            deploy: Some(deploy),
            applied_ms: 0.0,
            message: format!(
                "{label} (deploy {deploy}) replays from {} into tables of its own while {old_label} keeps serving; queries switch to it when it has caught up",
                version.start
            ),
        })
    }

    fn deploy_new(&mut self, plugin: Plugin, mut version: Version) -> Result<AdminOutcome, AdminError> {
        if !self.can_read_alone() {
            return Err(AdminError::Unsupported(NO_READERS.into()));
        }
        let name = plugin.info().name.clone();
        let label = plugin.info().label();
        if let PluginKind::Projection { tables } = &plugin.info().kind {
            self.pipeline.catalog().check_names(&name, tables).map_err(|e| AdminError::Conflict(e.to_string()))?;
        }
        let topics = plugin.info().topics.clone();
        let positions = self.start_positions(&topics, version.start)?;
        let reader = self.reader(&topics, &positions)?;
        {
            let mut registry = self.registry()?;
            if registry.entry(&name).is_some_and(|e| e.current.is_some()) {
                return Err(AdminError::Conflict(format!("{name} is recorded as deployed but is not running")));
            }
            version.deploy = registry.add_version(&name, version.clone());
            registry.set_current(&name, version.deploy);
            registry.set_paused(&name, false);
            Self::save(&registry)?;
        }
        let start = version.start;
        self.pipeline.add(plugin).map_err(|e| AdminError::Conflict(e.to_string()))?;
        self.pipeline.set_deploy(&name, version.deploy, Vec::new());
        self.pipeline.place(&name, start, positions);
        self.pipeline.set_catch_up(&name, reader);
        // Its tables exist from now on (empty until it has applied something).
        if let Err(e) = self.pipeline.publish() {
            tracing::error!(error = %e, "publishing snapshots failed");
        }
        tracing::info!(plugin = %label, deploy = version.deploy, %start, "plugin deployed");
        Ok(AdminOutcome {
            name,
            action: "deployed".into(),
            deploy: Some(version.deploy),
            applied_ms: 0.0,
            message: format!(
                "{label} deployed (deploy {}); it reads from {start} on a reader of its own and joins the shared feed when it has caught up",
                version.deploy
            ),
        })
    }

    fn pause(&mut self, name: &str) -> Result<AdminOutcome, AdminError> {
        if self.pipeline.plugin(name).is_none() {
            return Err(AdminError::NotFound(name.into()));
        }
        if !self.can_read_alone() {
            return Err(AdminError::Unsupported(NO_READERS.into()));
        }
        if self.pipeline.is_paused(name) {
            return Ok(outcome(name, "paused", format!("{name} was paused already")));
        }
        {
            let mut registry = self.registry()?;
            registry.set_paused(name, true);
            Self::save(&registry)?;
        }
        self.pipeline.set_paused(name, true);
        tracing::info!(plugin = name, "paused");
        Ok(outcome(
            name,
            "paused",
            format!("{name} is paused: it keeps its position and serves its tables while its lag grows"),
        ))
    }

    fn resume(&mut self, name: &str) -> Result<AdminOutcome, AdminError> {
        if self.pipeline.plugin(name).is_none() {
            return Err(AdminError::NotFound(name.into()));
        }
        if !self.pipeline.is_paused(name) {
            return Ok(outcome(name, "resumed", format!("{name} was not paused")));
        }
        let topics = self.pipeline.plugin(name).map(|p| p.info().topics.clone()).unwrap_or_default();
        let positions = self.pipeline.positions_of(name).unwrap_or_default();
        let reader = self.reader(&topics, &positions)?;
        {
            let mut registry = self.registry()?;
            registry.set_paused(name, false);
            Self::save(&registry)?;
        }
        self.pipeline.set_catch_up(name, reader);
        self.pipeline.set_paused(name, false);
        tracing::info!(plugin = name, "resumed");
        Ok(outcome(name, "resumed", format!("{name} resumes from where it paused")))
    }

    fn remove(&mut self, name: &str) -> Result<AdminOutcome, AdminError> {
        if self.pipeline.plugin(name).is_none() {
            return Err(AdminError::NotFound(name.into()));
        }
        {
            let mut registry = self.registry()?;
            registry.remove(name);
            Self::save(&registry)?;
        }
        self.pipeline.remove(name);
        tracing::info!(plugin = name, "removed");
        Ok(outcome(name, "removed", format!("{name} is stopped and its tables are dropped")))
    }
}

impl Ingest {
    /// Every open dead letter of plugin `name`: (partition, offset, the dead letter).
    fn open_dead_letters(&self, name: &str) -> Result<Vec<(u32, u64, Event)>, AdminError> {
        let book = self.pipeline.dead_letters(name).ok_or_else(|| AdminError::NotFound(name.into()))?;
        crate::output::open_dead_letters(self.sink.as_ref(), name, book, usize::MAX, None)
            .map_err(|e| AdminError::Failed(format!("reading {}: {e}", dead_letter_topic(name))))
    }

    /// `weir dlq replay`: each open dead letter runs through the current version, in order;
    /// those that succeed are resolved (recorded with their effects in the next checkpoint),
    /// the others stay.
    fn replay(&mut self, name: &str, outgoing: &mut Vec<crate::output::Outgoing>) -> Result<AdminOutcome, AdminError> {
        let open = self.open_dead_letters(name)?;
        let (places, originals): (Vec<(u32, u64)>, Vec<Event>) =
            open.iter().filter_map(|(p, o, dead)| Some(((*p, *o), original_of(dead)?))).unzip();
        let (done, out) = self.pipeline.redrive(name, &originals);
        outgoing.extend(out);
        let succeeded: Vec<(u32, u64)> = places.iter().zip(&done).filter(|(_, ok)| **ok).map(|(p, _)| *p).collect();
        if let Some(book) = self.pipeline.dead_letters_mut(name) {
            book.resolved.extend(succeeded.iter().copied());
        }
        let label = self.pipeline.plugin(name).map(|p| p.info().label()).unwrap_or_default();
        tracing::info!(plugin = %label, replayed = places.len(), resolved = succeeded.len(), "dead letters replayed");
        Ok(outcome(
            name,
            "replayed",
            format!(
                "{} dead letters of {name} ran through {label}: {} succeeded and are resolved, {} failed again and stay",
                places.len(),
                succeeded.len(),
                places.len() - succeeded.len()
            ),
        ))
    }

    /// `weir dlq purge`: every dead letter of plugin `name` up to now is settled unreplayed.
    fn purge(&mut self, name: &str) -> Result<AdminOutcome, AdminError> {
        let topic = dead_letter_topic(name);
        let ends = self.sink.ends(&topic).map_err(|e| AdminError::Failed(format!("reading {topic}: {e}")))?;
        let book = self.pipeline.dead_letters_mut(name).ok_or_else(|| AdminError::NotFound(name.into()))?;
        let before = book.count(&ends);
        book.purge(&ends);
        tracing::info!(plugin = name, purged = before, "dead letters purged");
        Ok(outcome(name, "purged", format!("{before} dead letters of {name} purged")))
    }
}

fn outcome(name: &str, action: &str, message: String) -> AdminOutcome {
    AdminOutcome { name: name.to_string(), action: action.to_string(), deploy: None, message, applied_ms: 0.0 }
}

/// What differs between two projections' tables, in words.
fn describe_table_change(old: &PluginKind, new: &PluginKind) -> String {
    let (PluginKind::Projection { tables: old }, PluginKind::Projection { tables: new }) = (old, new) else {
        return "one is not a projection".into();
    };
    for table in new {
        match old.iter().find(|t| t.name == table.name) {
            None => return format!("table {} is new", table.name),
            Some(before) if before != table => {
                return format!("table {} changed from {before:?} to {table:?}", table.name);
            }
            Some(_) => {}
        }
    }
    match old.iter().find(|t| !new.iter().any(|n| n.name == t.name)) {
        Some(gone) => format!("table {} is gone", gone.name),
        None => "the tables differ".into(),
    }
}
