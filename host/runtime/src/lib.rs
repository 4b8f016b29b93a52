//! # weir-runtime
//!
//! The plugin runtime: loads WebAssembly components, checks which weir world they implement,
//! and runs batches of events through them inside a sandbox.
//!
//! This crate is the only one that depends on wasmtime (`bindings.rs` holds the host's one
//! `bindgen!`); everything it hands out speaks `weir-core`'s types ([`Event`], [`RowChange`],
//! [`OutgoingEvent`]) and its own ([`Plugin`], [`PluginInfo`], [`EventError`]).
//!
//! Sandbox, per plugin instance: no filesystem, sockets, environment, real clocks or randomness;
//! a memory cap (store limiter), a CPU cap per call (epoch deadline), a cap on output per event.
//! A trap, an exhausted limit or a panic becomes an [`EventError`] naming the plugin, its version
//! and the event position; the instance is discarded and recreated and the plugin's committed
//! state survives. Nothing a plugin does can take the host down.
//!
//! Invariant: the state writes of an event are kept if and only if the event succeeded. A batch
//! commits as a whole when every event in it succeeds; otherwise its writes are rolled back and
//! its events are re-run one at a time, each committing alone.

mod bindings;
mod convert;
mod sandbox;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Cache, CacheConfig, Config, Engine, Store, Trap};

use bindings::{PROJECTOR_EXPORT, REACTOR_EXPORT};
pub use sandbox::{KeyedState, LogRing, LoggedLine, SharedLogs};
use sandbox::{OUTPUT_PIPE_BYTES, PluginStore};
use weir_core::event::{Event, OutgoingEvent, Position};
use weir_core::row::{RowChange, RowChanges, TableSchema};

/// How often the engine's epoch advances; the granularity of the CPU cap.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The caps every plugin instance runs under.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory an instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock time one call (one batch) may take, in milliseconds.
    pub cpu_ms_per_batch: u64,
    /// Output (row changes or emitted events) one event may produce, in bytes.
    pub max_output_bytes_per_event: usize,
    /// Total bytes of keyed state per plugin.
    pub state_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            cpu_ms_per_batch: 5_000,
            max_output_bytes_per_event: 1 << 20,
            state_bytes: 512 << 20,
        }
    }
}

/// What a plugin said about itself when loaded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PluginInfo {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// One line for humans.
    pub description: String,
    /// Topics it reads.
    pub topics: Vec<String>,
    /// Event types it receives; empty means all.
    pub event_types: Vec<String>,
    /// Which world it implements, with what that world declares.
    pub kind: PluginKind,
}

impl PluginInfo {
    /// `name@version`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Whether the plugin wants this event (by topic and type).
    pub fn wants(&self, event: &Event) -> bool {
        self.topics.contains(&event.position.topic)
            && (self.event_types.is_empty()
                || self.event_types.contains(&event.event_type)
                || event.position.topic == TICKS_TOPIC)
    }
}

/// The world a plugin implements.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "world", rename_all = "lowercase")]
pub enum PluginKind {
    /// Writes read-model tables.
    Projection {
        /// The tables, as declared.
        tables: Vec<TableSchema>,
    },
    /// Emits events.
    Handler {
        /// Topics it may emit to.
        emits_to: Vec<String>,
    },
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read plugin file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not WebAssembly at all.
    #[error("{path} is not a WebAssembly file (it starts with {start}); build plugins with `weir plugin build`")]
    NotWasm {
        /// The file.
        path: PathBuf,
        /// Its first bytes.
        start: String,
    },
    /// A core module, not a component.
    #[error(
        "{path} is a core WebAssembly module, not a component; build it for wasm32-wasip2 with `weir plugin build`"
    )]
    CoreModule {
        /// The file.
        path: PathBuf,
    },
    /// Wasmtime refused it.
    #[error("{path} is not a valid component: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Wasmtime's reason.
        message: String,
    },
    /// A component, but of another world.
    #[error(
        "{path} implements neither weir world: it exports [{exports}], but a projection exports {PROJECTOR_EXPORT} and a handler {REACTOR_EXPORT}; build it against weir-sdk"
    )]
    WrongWorld {
        /// The file.
        path: PathBuf,
        /// What it exports instead.
        exports: String,
    },
    /// It imports something the sandbox does not provide.
    #[error("{path} cannot be linked: {message}")]
    Link {
        /// The file.
        path: PathBuf,
        /// Which import failed.
        message: String,
    },
    /// `describe` trapped or returned something unusable.
    #[error("plugin {path}: {message}")]
    Describe {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The engine itself could not start.
    #[error("cannot start the WebAssembly engine: {0}")]
    Engine(String),
}

/// Why a plugin did not process one event. Nothing the event produced is kept.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("plugin {plugin} failed on event {position} ({event_type}): {failure}")]
pub struct EventError {
    /// `name@version`.
    pub plugin: Arc<str>,
    /// The event's position.
    pub position: Position,
    /// The event's type.
    pub event_type: Arc<str>,
    /// What happened.
    pub failure: Failure,
    /// How many times the event was tried (more than once only for host-side failures).
    pub attempts: u32,
}

/// What went wrong with one event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    /// The plugin refused the event (returned an error).
    #[error("refused it: {0}")]
    Refused(String),
    /// The plugin trapped (panic, `unreachable`, stack overflow, ...).
    #[error("trapped: {0}")]
    Trapped(String),
    /// The call ran past its time budget.
    #[error("ran past its CPU budget of {0} ms per batch and was stopped")]
    CpuBudget(u64),
    /// The instance tried to grow memory past its cap (all its memories together).
    #[error("tried to grow its memory past the cap of {0} bytes")]
    MemoryCap(usize),
    /// The instance tried to grow its tables past their element limit (all tables together).
    #[error("tried to grow its tables past the limit of {0} elements")]
    TableLimit(usize),
    /// It handed the host more data in one call than the host copies from a plugin per call
    /// (its output for the batch, or the arguments of one host call): the host stopped copying
    /// there, before checking the output cap, instead of copying all of it first.
    #[error(
        "handed the host more than {limit} bytes in one call (output or host-call arguments); the host copies at most \
         that for this batch, given the cap of {cap} bytes of output per event"
    )]
    CopyLimit {
        /// Bytes the host was ready to copy for the call.
        limit: usize,
        /// The output cap per event.
        cap: usize,
    },
    /// The output of one event was over the cap.
    #[error("produced {bytes} bytes of output, over the cap of {cap} bytes per event")]
    OutputTooLarge {
        /// Bytes produced.
        bytes: usize,
        /// The cap.
        cap: usize,
    },
    /// The output broke the plugin's own declaration (schema, topic) or the WIT contract.
    #[error("produced invalid output: {0}")]
    InvalidOutput(String),
    /// It emitted an event the sink would refuse (topic name, record size).
    #[error("emitted an event the sink refuses: {0}")]
    OutputRefused(String),
    /// No instance could be started (the host's failure, not the event's).
    #[error("could not start an instance: {0}")]
    Start(String),
}

impl Failure {
    /// Whether the failure may be the host's rather than the event's (a busy machine ran the
    /// batch past its CPU budget; an instance could not start), so that trying the event again
    /// may succeed. A plugin's own errors, traps and invalid output are deterministic.
    pub fn is_host_side(&self) -> bool {
        matches!(self, Failure::CpuBudget(_) | Failure::Start(_))
    }

    /// A short name of the kind of failure, for metrics and dead-letter headers.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Refused(_) => "refused",
            Failure::Trapped(_) => "trapped",
            Failure::CpuBudget(_) => "cpu_budget",
            Failure::MemoryCap(_) => "memory_cap",
            Failure::TableLimit(_) => "table_limit",
            Failure::OutputTooLarge { .. } | Failure::CopyLimit { .. } => "output_too_large",
            Failure::InvalidOutput(_) => "invalid_output",
            Failure::OutputRefused(_) => "output_refused",
            Failure::Start(_) => "start",
        }
    }
}

/// The engine and linkers shared by all plugins, and the clock that enforces CPU budgets.
pub struct PluginRuntime {
    engine: Engine,
    projection_linker: Linker<PluginStore>,
    handler_linker: Linker<PluginStore>,
    limits: Limits,
    ticker_stop: Arc<AtomicBool>,
    cache: Option<Cache>,
}

/// Hits and misses of the compiled-component cache since the runtime started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileCacheStats {
    /// Components loaded from the cache without compiling.
    pub hits: usize,
    /// Components compiled (and then stored).
    pub misses: usize,
}

impl PluginRuntime {
    /// A runtime whose compiled components are cached under `cache_dir` (keyed by content hash
    /// and engine), so a restart does not recompile.
    pub fn new(limits: Limits, cache_dir: Option<&Path>) -> Result<Self, LoadError> {
        let engine_error = |e: wasmtime::Error| LoadError::Engine(format!("{e:#}"));
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        if std::env::var_os("WEIR_WASM_PERFMAP").is_some_and(|v| v == "1") {
            // For profiling: name plugin functions for `perf` in /tmp/perf-PID.map.
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let cache = match cache_dir {
            Some(dir) => {
                let mut cache_config = CacheConfig::new();
                cache_config.with_directory(dir);
                Some(Cache::new(cache_config).map_err(engine_error)?)
            }
            None => None,
        };
        config.cache(cache.clone());
        let engine = Engine::new(&config).map_err(engine_error)?;

        let mut projection_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut projection_linker).map_err(engine_error)?;
        sandbox::stop_clock_waits(&mut projection_linker).map_err(engine_error)?;
        bindings::projection::Projection::add_to_linker::<_, HasSelf<_>>(&mut projection_linker, |s| s)
            .map_err(engine_error)?;
        let mut handler_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut handler_linker).map_err(engine_error)?;
        sandbox::stop_clock_waits(&mut handler_linker).map_err(engine_error)?;
        bindings::handler::Handler::add_to_linker::<_, HasSelf<_>>(&mut handler_linker, |s| s).map_err(engine_error)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (ticking_engine, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticking_engine.increment_epoch();
                }
            })
            .map_err(|e| LoadError::Engine(format!("cannot start the epoch thread: {e}")))?;

        Ok(PluginRuntime { engine, projection_linker, handler_linker, limits, ticker_stop, cache })
    }

    /// The compiled-component cache's counters, if there is a cache.
    pub fn compile_cache_stats(&self) -> Option<CompileCacheStats> {
        self.cache.as_ref().map(|c| CompileCacheStats { hits: c.cache_hits(), misses: c.cache_misses() })
    }

    /// The caps plugins run under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Load the component at `path` with these deploy-time parameters.
    pub fn load(&self, path: &Path, params: BTreeMap<String, String>) -> Result<Plugin, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
        self.load_bytes(path, &bytes, params)
    }

    /// Load a component from bytes; `path` names it in errors.
    pub fn load_bytes(&self, path: &Path, bytes: &[u8], params: BTreeMap<String, String>) -> Result<Plugin, LoadError> {
        let path = path.to_owned();
        if !bytes.starts_with(b"\0asm") || bytes.len() < 8 {
            let start = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
            return Err(LoadError::NotWasm {
                path,
                start: if start.is_empty() { "nothing: it is empty".into() } else { start },
            });
        }
        // Bytes 6..8 are the layer: 0 for a core module, 1 for a component.
        if bytes[6..8] == [0, 0] {
            return Err(LoadError::CoreModule { path });
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| LoadError::Invalid { path: path.clone(), message: format!("{e:#}") })?;
        let exports: Vec<String> =
            component.component_type().exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let link_error = |e: wasmtime::Error| LoadError::Link { path: path.clone(), message: format!("{e:#}") };
        let pre = if exports.iter().any(|e| e == PROJECTOR_EXPORT) {
            let pre = self.projection_linker.instantiate_pre(&component).map_err(link_error)?;
            WorldPre::Projection(bindings::projection::ProjectionPre::new(pre).map_err(link_error)?)
        } else if exports.iter().any(|e| e == REACTOR_EXPORT) {
            let pre = self.handler_linker.instantiate_pre(&component).map_err(link_error)?;
            WorldPre::Handler(bindings::handler::HandlerPre::new(pre).map_err(link_error)?)
        } else {
            return Err(LoadError::WrongWorld { path, exports: exports.join(", ") });
        };

        let component = content_hash(bytes);
        let fingerprint = {
            use sha2::{Digest, Sha256};
            let mut hasher = Sha256::new();
            hasher.update(bytes);
            for (name, value) in &params {
                hasher.update((name.len() as u64).to_le_bytes());
                hasher.update(name.as_bytes());
                hasher.update((value.len() as u64).to_le_bytes());
                hasher.update(value.as_bytes());
            }
            hasher.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let file_label: Arc<str> = path.file_stem().map_or("plugin".into(), |s| s.to_string_lossy().into());
        let params = Arc::new(params);
        let mut plugin = Plugin {
            info: PluginInfo {
                name: file_label.to_string(),
                version: String::new(),
                description: String::new(),
                topics: Vec::new(),
                event_types: Vec::new(),
                kind: PluginKind::Handler { emits_to: Vec::new() },
            },
            path: path.clone(),
            fingerprint,
            engine: self.engine.clone(),
            pre,
            live: None,
            parked_state: KeyedState::default(),
            params,
            label: file_label,
            limits: self.limits.clone(),
            instances_started: 0,
            logs: SharedLogs::default(),
            component,
            stop_at_failure: false,
            busy: Duration::ZERO,
            longest_call: Duration::ZERO,
        };
        let info = plugin.describe().map_err(|message| LoadError::Describe { path: path.clone(), message })?;
        validate_info(&info).map_err(|problem| LoadError::Describe {
            path: path.clone(),
            message: format!("{} describes itself wrongly: {problem}", info.label()),
        })?;
        plugin.label = info.label().into();
        plugin.info = info;
        plugin.live = None;
        Ok(plugin)
    }
}

/// SHA-256 of `bytes`, hex.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

enum WorldPre {
    Projection(bindings::projection::ProjectionPre<PluginStore>),
    Handler(bindings::handler::HandlerPre<PluginStore>),
}

enum Exports {
    Projection(bindings::projection::Projection),
    Handler(bindings::handler::Handler),
}

/// A running instance: discarded after any trap.
struct Live {
    store: Store<PluginStore>,
    exports: Exports,
}

/// One loaded plugin with (at most) one live instance and its keyed state.
pub struct Plugin {
    info: PluginInfo,
    path: PathBuf,
    fingerprint: String,
    engine: Engine,
    pre: WorldPre,
    live: Option<Live>,
    /// The state while no instance is live.
    parked_state: KeyedState,
    params: Arc<BTreeMap<String, String>>,
    label: Arc<str>,
    limits: Limits,
    instances_started: u64,
    logs: SharedLogs,
    component: String,
    stop_at_failure: bool,
    /// Time spent in calls into the plugin.
    busy: Duration,
    /// The longest call since [`Plugin::take_longest_call`] last asked.
    longest_call: Duration,
}

/// The header on a timer's event naming the timer.
pub const TIMER_HEADER: &str = "weir-timer";

/// The topic the host writes ticks to; a handler subscribed to it gets its timers fired.
pub const TICKS_TOPIC: &str = "weir.ticks";

/// Tries of an event whose failure may be the host's (see [`Failure::is_host_side`]).
pub const MAX_ATTEMPTS: u32 = 3;
/// Pause before the second try; each later one waits four times longer.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The raw outcome of one call: one entry per event, before the host checks it.
type CallOutput<O> = Vec<Result<O, String>>;

/// One call of a plugin's export over a batch of events.
type BatchCall<'a, O> = dyn Fn(&mut Live, &[Event]) -> wasmtime::Result<CallOutput<O>> + 'a;

/// The host's check of one event's raw output (the event, what it produced).
type Check<'a, O, P> = dyn Fn(&Event, O) -> Result<P, Failure> + 'a;

/// Turns the `n`th event a handler emitted for a cause into the event to write, or says why the
/// sink would refuse it.
pub type Finish<'a> = dyn Fn(&Event, usize, OutgoingEvent) -> Result<Event, String> + 'a;

impl Plugin {
    /// What the plugin declared.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SHA-256 of the component's bytes and its parameters: two plugins with the same
    /// fingerprint turn the same events into the same rows.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// How many instances have been started (1 + the number of recoveries after a trap).
    pub fn instances_started(&self) -> u64 {
        self.instances_started
    }

    /// Bytes of linear memory its live instance holds (0 while none is live).
    pub fn memory_bytes(&self) -> u64 {
        self.live.as_ref().map_or(0, |l| l.store.data().limits.memory_bytes as u64)
    }

    /// Time spent in calls into it since it was loaded.
    pub fn busy(&self) -> Duration {
        self.busy
    }

    /// The longest call into it since the last time this was asked, and the CPU budget a call
    /// has: a call that reaches the budget is stopped.
    pub fn take_longest_call(&mut self) -> (Duration, Duration) {
        (std::mem::take(&mut self.longest_call), Duration::from_millis(self.limits.cpu_ms_per_batch))
    }

    /// SHA-256 of the component's bytes, hex: what the host stores versions by.
    pub fn component(&self) -> &str {
        &self.component
    }

    /// The parameters it was loaded with.
    pub fn params(&self) -> &BTreeMap<String, String> {
        &self.params
    }

    /// Run under another name than the one it declares (`weir plugin deploy --name`): its tables
    /// are then published under that name, and its errors and logs say it. The name is checked
    /// as a declared one is; a refused one changes nothing.
    pub fn rename(&mut self, name: &str) -> Result<(), String> {
        let mut info = self.info.clone();
        info.name = name.to_string();
        validate_info(&info)?;
        self.park();
        self.info = info;
        self.label = self.info.label().into();
        Ok(())
    }

    /// Where its log lines go.
    pub fn logs(&self) -> SharedLogs {
        self.logs.clone()
    }

    /// Send its log lines to `logs` (the ring of the version it replaces).
    pub fn share_logs(&mut self, logs: SharedLogs) {
        self.park();
        self.logs = logs;
    }

    /// Take the committed state out (for the version that takes over from this one), leaving
    /// this plugin empty.
    pub fn take_state(&mut self) -> KeyedState {
        self.park();
        std::mem::take(&mut self.parked_state)
    }

    /// The plugin's committed keyed state.
    pub fn state(&self) -> &KeyedState {
        match &self.live {
            Some(live) => &live.store.data().state,
            None => &self.parked_state,
        }
    }

    /// Replace the committed state (restoring a checkpoint). The live instance, if any, is
    /// dropped so the next call starts from a fresh one over this state.
    pub fn restore_state(&mut self, state: KeyedState) {
        self.park();
        self.parked_state = state;
    }

    /// Run a projection over a batch: one outcome per event, in order.
    ///
    /// # Panics
    /// Never; calling it on a handler gives every event an [`Failure::InvalidOutput`] error.
    pub fn apply(&mut self, events: &[Event]) -> Vec<Result<RowChanges, EventError>> {
        let PluginKind::Projection { tables } = &self.info.kind else {
            return self.refuse_all(events, "a handler cannot apply events as a projection");
        };
        let tables = tables.clone();
        let cap = self.limits.max_output_bytes_per_event;
        self.run(events, &|live, batch| convert::call_apply(live, batch), &|_, changes: Vec<RowChange>| {
            check_size(changes.iter().map(RowChange::size).sum(), cap)?;
            RowChanges::check(&tables, changes).map_err(Failure::InvalidOutput)
        })
    }

    /// Run a handler over a batch: one outcome per event, in order. `finish` turns the `n`th
    /// event emitted for a cause into the event to write (id, time, correlation) and checks it
    /// against the sink; its refusal fails the cause like any invalid output, before the
    /// plugin's state for it is kept.
    pub fn handle(&mut self, events: &[Event], finish: &Finish<'_>) -> Vec<Result<Vec<Event>, EventError>> {
        self.handle_with(events, finish, &|_| {})
    }

    /// Fire the timers due at `tick`'s time, earliest first: each is delivered alone as an event
    /// (type, key, payload and correlation id as set; time: its instant; position: the tick's;
    /// header `weir-timer`). A timer fires once: its removal is kept whether handling it
    /// succeeds or not (then the failure is returned, to be dead-lettered).
    pub fn fire_timers(&mut self, tick: &Event, finish: &Finish<'_>) -> Vec<(Event, Result<Vec<Event>, EventError>)> {
        match &mut self.live {
            Some(live) => live.store.data_mut().state.advance_clock(tick.time_us),
            None => self.parked_state.advance_clock(tick.time_us),
        }
        let due = self.state().due_timers(tick.time_us);
        let mut fired = Vec::with_capacity(due.len());
        for timer in due {
            let event = Event {
                id: format!("timer:{}/{}", timer.key, timer.set_by),
                event_type: timer.event_type,
                key: Some(timer.key.clone()),
                payload: timer.payload,
                content_type: "application/json".into(),
                time_us: timer.at,
                headers: vec![(TIMER_HEADER.to_string(), timer.key.clone().into_bytes())],
                correlation_id: timer.correlation_id,
                causation_id: Some(timer.set_by),
                position: tick.position.clone(),
            };
            let key = timer.key;
            let mut result = self.handle_with(std::slice::from_ref(&event), finish, &|live| {
                live.store.data_mut().state.stage_fired(&key);
            });
            let result = result
                .pop()
                .unwrap_or_else(|| Err(self.event_error(&event, Failure::InvalidOutput("returned no result".into()))));
            if result.is_err() {
                self.remove_timer(&key);
            }
            fired.push((event, result));
        }
        fired
    }

    /// How many timers it has set.
    pub fn timers(&self) -> usize {
        self.state().timers()
    }

    /// Remove timer `key` from the committed state.
    fn remove_timer(&mut self, key: &str) {
        let state = match &mut self.live {
            Some(live) => &mut live.store.data_mut().state,
            None => &mut self.parked_state,
        };
        state.rollback();
        state.stage_fired(key);
        state.commit();
    }

    fn handle_with(
        &mut self,
        events: &[Event],
        finish: &Finish<'_>,
        before: &dyn Fn(&mut Live),
    ) -> Vec<Result<Vec<Event>, EventError>> {
        let PluginKind::Handler { emits_to } = &self.info.kind else {
            return self.refuse_all(events, "a projection cannot handle events as a handler");
        };
        let emits_to = emits_to.clone();
        let cap = self.limits.max_output_bytes_per_event;
        let call = |live: &mut Live, batch: &[Event]| {
            before(live);
            convert::call_handle(live, batch)
        };
        self.run(events, &call, &|cause, emitted: Vec<OutgoingEvent>| {
            check_size(emitted.iter().map(OutgoingEvent::size).sum(), cap)?;
            if let Some(e) = emitted.iter().find(|e| !emits_to.contains(&e.topic)) {
                return Err(Failure::InvalidOutput(format!(
                    "emitted to topic {} but declared only [{}]",
                    e.topic,
                    emits_to.join(", ")
                )));
            }
            emitted
                .into_iter()
                .enumerate()
                .map(|(n, out)| finish(cause, n, out).map_err(Failure::OutputRefused))
                .collect()
        })
    }

    fn refuse_all<O>(&self, events: &[Event], why: &str) -> Vec<Result<O, EventError>> {
        events.iter().map(|e| Err(self.event_error(e, Failure::InvalidOutput(why.to_string())))).collect()
    }

    fn event_error(&self, event: &Event, failure: Failure) -> EventError {
        EventError {
            plugin: self.label.clone(),
            position: event.position.clone(),
            event_type: event.event_type.as_str().into(),
            failure,
            attempts: 1,
        }
    }

    /// Run a batch; on any failure roll it back and run its events one at a time.
    fn run<O, P>(
        &mut self,
        events: &[Event],
        call: &BatchCall<'_, O>,
        check: &Check<'_, O, P>,
    ) -> Vec<Result<P, EventError>> {
        if events.is_empty() {
            return Vec::new();
        }
        let _span = tracing::debug_span!("plugin_call", plugin = %self.label, events = events.len()).entered();
        match self.call_checked(events, call, check) {
            Ok(outputs) => {
                if let Some(live) = &mut self.live {
                    live.store.data_mut().state.commit();
                    if live.store.data().output.contents().len() > OUTPUT_PIPE_BYTES / 2 {
                        self.park();
                    }
                }
                outputs.into_iter().map(Ok).collect()
            }
            Err(failure) => {
                self.rollback(&failure);
                if events.len() == 1 {
                    return vec![self.retry_alone(&events[0], failure, call, check)];
                }
                tracing::debug!(plugin = %self.label, %failure, "batch failed; isolating events");
                let mut results = Vec::with_capacity(events.len());
                for event in events {
                    let result = self.run(std::slice::from_ref(event), call, check);
                    let failed = result.iter().any(Result::is_err);
                    results.extend(result);
                    if failed && self.stop_at_failure {
                        break;
                    }
                }
                results
            }
        }
    }

    /// One event failed alone: a host-side failure is tried again, after a pause, up to
    /// [`MAX_ATTEMPTS`] times in all.
    fn retry_alone<O, P>(
        &mut self,
        event: &Event,
        mut failure: Failure,
        call: &BatchCall<'_, O>,
        check: &Check<'_, O, P>,
    ) -> Result<P, EventError> {
        let mut attempts = 1;
        while failure.is_host_side() && attempts < MAX_ATTEMPTS {
            let pause = RETRY_PAUSE * 4u32.pow(attempts - 1);
            tracing::warn!(plugin = %self.label, position = %event.position, %failure, attempts, ?pause, "trying the event again");
            std::thread::sleep(pause);
            attempts += 1;
            match self.call_checked(std::slice::from_ref(event), call, check) {
                Ok(mut outputs) => {
                    if let Some(live) = &mut self.live {
                        live.store.data_mut().state.commit();
                    }
                    if let Some(output) = outputs.pop() {
                        return Ok(output);
                    }
                    failure = Failure::InvalidOutput("returned no result".into());
                }
                Err(next) => {
                    self.rollback(&next);
                    failure = next;
                }
            }
        }
        let mut error = self.event_error(event, failure);
        error.attempts = attempts;
        Err(error)
    }

    /// Stop a batch at its first failed event (the `stop` error policy): the outcomes then end
    /// there, and the events after it are not run.
    pub fn set_stop_at_failure(&mut self, stop: bool) {
        self.stop_at_failure = stop;
    }

    /// One call; `Ok` only if every event succeeded and passed `check`.
    fn call_checked<O, P>(
        &mut self,
        events: &[Event],
        call: &BatchCall<'_, O>,
        check: &Check<'_, O, P>,
    ) -> Result<Vec<P>, Failure> {
        let ticks = self.limits.cpu_ms_per_batch.div_ceil(EPOCH_TICK.as_millis() as u64) + 1;
        let copy_limit = copy_limit(events.len(), self.limits.max_output_bytes_per_event);
        let live = self.live()?;
        live.store.set_epoch_deadline(ticks);
        live.store.set_hostcall_fuel(copy_limit);
        live.store.data_mut().start_call();
        let started = Instant::now();
        let outcome = call(live, events);
        let elapsed = started.elapsed();
        live.store.data_mut().end_call();
        // What the host was ready to copy in this call, as the store has it.
        let fuel = live.store.hostcall_fuel();
        self.busy += elapsed;
        self.longest_call = self.longest_call.max(elapsed);
        let outputs = outcome.map_err(|e| match self.trap_failure(e) {
            Failure::CopyLimit { cap, .. } => Failure::CopyLimit { limit: fuel, cap },
            other => other,
        })?;
        if outputs.len() != events.len() {
            return Err(Failure::InvalidOutput(format!(
                "returned {} results for a batch of {} events",
                outputs.len(),
                events.len()
            )));
        }
        outputs.into_iter().zip(events).map(|(output, event)| check(event, output.map_err(Failure::Refused)?)).collect()
    }

    /// The live instance, starting one if needed.
    fn live(&mut self) -> Result<&mut Live, Failure> {
        if self.live.is_none() {
            let state = std::mem::take(&mut self.parked_state);
            let mut store = Store::new(
                &self.engine,
                PluginStore::new(self.label.clone(), self.params.clone(), &self.limits, state, self.logs.clone()),
            );
            store.limiter(|data| &mut data.limits);
            store.set_hostcall_fuel(copy_limit(1, self.limits.max_output_bytes_per_event));
            store.epoch_deadline_trap();
            store.set_epoch_deadline(self.limits.cpu_ms_per_batch.div_ceil(EPOCH_TICK.as_millis() as u64) + 1);
            let exports = match &self.pre {
                WorldPre::Projection(pre) => pre.instantiate(&mut store).map(Exports::Projection),
                WorldPre::Handler(pre) => pre.instantiate(&mut store).map(Exports::Handler),
            };
            self.instances_started += 1;
            match exports {
                Ok(exports) => self.live = Some(Live { store, exports }),
                Err(e) => {
                    let failure = match failure_of_trap(e, &store.data().output_text(), &self.limits) {
                        // The component's start code ran out of memory or time: its own doing.
                        f @ (Failure::MemoryCap(_) | Failure::TableLimit(_) | Failure::CpuBudget(_)) => f,
                        other => Failure::Start(other.to_string()),
                    };
                    self.parked_state = store.into_data().state;
                    return Err(failure);
                }
            }
        }
        self.live.as_mut().ok_or_else(|| Failure::Trapped("instance vanished".into()))
    }

    fn trap_failure(&self, error: wasmtime::Error) -> Failure {
        let output = self.live.as_ref().map(|l| l.store.data().output_text()).unwrap_or_default();
        failure_of_trap(error, &output, &self.limits)
    }

    /// Undo the failed call's state writes; discard the instance if it trapped (its memory may
    /// be anything now) or if its stdout/stderr buffer is filling up.
    fn rollback(&mut self, failure: &Failure) {
        let Some(live) = &mut self.live else { return };
        live.store.data_mut().state.rollback();
        // Only a call that returned normally leaves an instance that can be entered again.
        let returned = matches!(
            failure,
            Failure::Refused(_)
                | Failure::OutputTooLarge { .. }
                | Failure::InvalidOutput(_)
                | Failure::OutputRefused(_)
        );
        if !returned || live.store.data().output.contents().len() > OUTPUT_PIPE_BYTES / 2 {
            self.park();
        }
    }

    /// Drop the live instance, keeping its committed state for the next one.
    fn park(&mut self) {
        if let Some(live) = self.live.take() {
            self.parked_state = live.store.into_data().state;
        }
    }

    /// Call `describe` on a fresh instance.
    fn describe(&mut self) -> Result<PluginInfo, String> {
        let live = self.live().map_err(|f| format!("failed to start: {f}"))?;
        let info = convert::call_describe(live).map_err(|e| self.trap_failure(e).to_string());
        self.park();
        info
    }
}

/// The most the host copies from a plugin in one call of `events` events (its output, or one
/// host call's arguments): twice the output cap per event, since the host's copy of a row change
/// is larger than the bytes the cap counts, at least 16 MiB (a state value may be 8 MiB) and at
/// most 128 MiB (wasmtime's own default) unless the cap itself is larger. A batch over it fails
/// and its events run one at a time, each with its own limit. Copying stops at the limit, so a
/// plugin cannot make the host allocate its output before the cap is checked (a million row
/// changes pointing at one string of guest memory).
fn copy_limit(events: usize, cap: usize) -> usize {
    let ceiling = (128usize << 20).max(cap.saturating_mul(2));
    events.saturating_mul(cap).saturating_mul(2).clamp(16 << 20, ceiling)
}

fn check_size(bytes: usize, cap: usize) -> Result<(), Failure> {
    if bytes > cap { Err(Failure::OutputTooLarge { bytes, cap }) } else { Ok(()) }
}

/// Turn a wasmtime error from a call into what a user should read.
fn failure_of_trap(error: wasmtime::Error, output: &str, limits: &Limits) -> Failure {
    if let Some(trap) = error.downcast_ref::<Trap>() {
        match trap {
            Trap::Interrupt => return Failure::CpuBudget(limits.cpu_ms_per_batch),
            Trap::StackOverflow => return Failure::Trapped("stack overflow".into()),
            _ => {}
        }
    }
    let text = format!("{error:#}");
    if text.contains("forcing trap when growing memory") {
        return Failure::MemoryCap(limits.memory_bytes);
    }
    if text.contains("forcing trap when growing a table") {
        return Failure::TableLimit(sandbox::MAX_TABLE_ELEMENTS);
    }
    if text.contains("fuel allocated for hostcalls has been exhausted") {
        let cap = limits.max_output_bytes_per_event;
        return Failure::CopyLimit { limit: copy_limit(1, cap), cap };
    }
    if output.contains("memory allocation of") {
        return Failure::MemoryCap(limits.memory_bytes);
    }
    // A Rust panic prints "panicked at FILE:LINE:COL:\nMESSAGE" before it aborts.
    if let Some(at) = output.rfind("panicked at ") {
        let panic: String = output[at..].trim().replace('\n', " ").chars().take(1_000).collect();
        return Failure::Trapped(panic);
    }
    match error.downcast_ref::<Trap>() {
        Some(trap) => Failure::Trapped(trap.to_string()),
        // A host function refused the call: its reason is the root cause, under wasmtime's
        // backtrace context.
        None => Failure::Trapped(error.root_cause().to_string().lines().next().unwrap_or("unknown trap").to_string()),
    }
}

/// Check what a plugin declared: names, keys, topics.
fn validate_info(info: &PluginInfo) -> Result<(), String> {
    let is_identifier = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    };
    if !is_identifier(&info.name) {
        return Err(format!("plugin name {:?} must be lowercase letters, digits, '_' or '-'", info.name));
    }
    let longest = weir_core::event::MAX_PLUGIN_NAME;
    if info.name.len() > longest {
        return Err(format!(
            "plugin name {:?}... is {} bytes long; the limit is {longest}",
            &info.name[..32],
            info.name.len()
        ));
    }
    if info.topics.is_empty() {
        return Err("it subscribes to no topic".into());
    }
    if let PluginKind::Handler { emits_to } = &info.kind {
        for topic in emits_to {
            if !weir_core::event::valid_topic_name(topic) {
                return Err(format!(
                    "emits_to names {topic:?}, which cannot be a topic: use 1 to 249 characters of a-z, A-Z, 0-9, '.', '_', '-'"
                ));
            }
            if topic.starts_with("weir.") {
                return Err(format!("emits_to names {topic}, but topics starting with \"weir.\" are the host's own"));
            }
        }
    }
    if let PluginKind::Projection { tables } = &info.kind {
        if tables.is_empty() {
            return Err("a projection must declare at least one table".into());
        }
        let mut seen = std::collections::HashSet::new();
        for table in tables {
            let t = &table.name;
            if !is_identifier(t) || t.contains('-') {
                return Err(format!("table name {t:?} must be lowercase letters, digits or '_'"));
            }
            if t.len() > longest {
                return Err(format!("table name {:?}... is {} bytes long; the limit is {longest}", &t[..32], t.len()));
            }
            if !seen.insert(t) {
                return Err(format!("table {t} is declared twice"));
            }
            let mut columns = std::collections::HashSet::new();
            for c in &table.columns {
                if !is_identifier(&c.name) || c.name.contains('-') {
                    return Err(format!(
                        "table {t}: column name {:?} must be lowercase letters, digits or '_'",
                        c.name
                    ));
                }
                if !columns.insert(&c.name) {
                    return Err(format!("table {t}: column {} is declared twice", c.name));
                }
            }
            if table.primary_key.is_empty() {
                return Err(format!("table {t} has no primary key"));
            }
            for k in &table.primary_key {
                match table.columns.iter().find(|c| &c.name == k) {
                    None => {
                        return Err(format!("table {t}: primary-key column {k} is not a column"));
                    }
                    Some(c) if c.nullable => {
                        return Err(format!("table {t}: primary-key column {k} is nullable"));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    Ok(())
}
