//! What a plugin instance can reach: the store data behind every instance, the WASI context it
//! gets (nothing from the outside world), and the host imports (`log`, `param`, keyed `state`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::Limits;
use crate::bindings::{host, state, tables, types};

/// Longest state key a plugin may write.
const MAX_STATE_KEY: usize = 4 * 1024;
/// Largest state value a plugin may write in one `put`.
pub(crate) const MAX_STATE_VALUE: usize = 8 << 20;
/// Elements an instance's tables may hold together (a Rust plugin's function table holds a few
/// thousand); each costs the host a pointer or more.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 100_000;

/// State keys starting with this byte are the host's (timers); a plugin's own keys may not.
const HOST_KEY_BYTE: u8 = 0xff;
/// Where a handler's timer `key` is kept in its state: this prefix, then the key.
const TIMER_PREFIX: &[u8] = b"\xffweir.timer/";
/// Where a handler's clock (the time of the latest tick it saw) is kept in its state.
const CLOCK_KEY: &[u8] = b"\xffweir.clock";

/// A timer a handler set (see the WIT `timers` interface).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    /// Its key.
    pub key: String,
    /// When it fires, microseconds since the Unix epoch.
    pub at: i64,
    /// The type of the event it delivers.
    pub event_type: String,
    /// The payload of that event.
    pub payload: Vec<u8>,
    /// The correlation id of that event.
    pub correlation_id: Option<String>,
    /// The id of the event whose handling set it.
    pub set_by: String,
}

impl Timer {
    fn state_key(key: &str) -> Vec<u8> {
        [TIMER_PREFIX, key.as_bytes()].concat()
    }

    /// `at`, the type, the correlation id (empty: none, marked by a flag byte) and the payload.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.event_type.len() + self.payload.len());
        out.extend_from_slice(&self.at.to_le_bytes());
        for text in [&self.event_type, &self.set_by] {
            out.extend_from_slice(&(text.len() as u32).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        match &self.correlation_id {
            Some(c) => {
                out.push(1);
                out.extend_from_slice(&(c.len() as u32).to_le_bytes());
                out.extend_from_slice(c.as_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&self.payload);
        out
    }

    fn decode(state_key: &[u8], value: &[u8]) -> Option<Timer> {
        let key = String::from_utf8(state_key.strip_prefix(TIMER_PREFIX)?.to_vec()).ok()?;
        let at = i64::from_le_bytes(value.get(..8)?.try_into().ok()?);
        let mut rest = &value[8..];
        let text = |rest: &mut &[u8]| -> Option<String> {
            let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let s = String::from_utf8(rest.get(4..4 + len)?.to_vec()).ok()?;
            *rest = &rest[4 + len..];
            Some(s)
        };
        let event_type = text(&mut rest)?;
        let set_by = text(&mut rest)?;
        let (flag, mut tail) = rest.split_first()?;
        let correlation_id = if *flag == 1 { Some(text(&mut tail)?) } else { None };
        Some(Timer { key, at, event_type, payload: tail.to_vec(), correlation_id, set_by })
    }
}
/// Longest plugin log line kept; the rest is cut.
const MAX_LOG_LINE: usize = 8 * 1024;
/// Log lines kept per call; the rest are counted and reported once.
const MAX_LOGS_PER_CALL: usize = 1_000;
/// What stdout and stderr together may hold before the instance is recycled.
pub(crate) const OUTPUT_PIPE_BYTES: usize = 1024 * 1024;

/// A map by state key. foldhash, seeded per process, instead of std's SipHash: a state read or
/// write hashes its key up to three times, and SipHash was 3.6% of the instructions of a
/// minimal projection's wasm path (callgrind); the seed still keeps a plugin from choosing keys
/// that collide.
type StateMap<V> = HashMap<Vec<u8>, V, foldhash::fast::RandomState>;

/// A plugin's durable keyed state. Writes of the running call sit in `pending` until the call
/// returns (commit) or traps (rollback), so a trap never leaves half of a batch behind.
#[derive(Debug, Default)]
pub struct KeyedState {
    committed: StateMap<Vec<u8>>,
    committed_bytes: usize,
    pending: StateMap<Option<Vec<u8>>>,
    pending_bytes: usize,
    /// Committed timers.
    timers: usize,
}

impl KeyedState {
    /// The committed value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.committed.get(key).map(Vec::as_slice)
    }

    /// Number of committed entries.
    pub fn len(&self) -> usize {
        self.committed.len()
    }

    /// True when there is no committed entry.
    pub fn is_empty(&self) -> bool {
        self.committed.is_empty()
    }

    /// Bytes of committed keys and values.
    pub fn bytes(&self) -> usize {
        self.committed_bytes
    }

    /// Every committed entry, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.committed.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// State holding exactly these entries (as restored from a checkpoint).
    pub fn from_entries(entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Self {
        let mut state = KeyedState::default();
        for (key, value) in entries {
            state.committed_bytes += key.len() + value.len();
            let is_timer = key.starts_with(TIMER_PREFIX);
            match state.committed.insert(key.clone(), value) {
                Some(old) => state.committed_bytes -= key.len() + old.len(),
                None => state.timers += usize::from(is_timer),
            }
        }
        state
    }

    /// How many timers are set.
    pub fn timers(&self) -> usize {
        self.timers
    }

    /// The timers due at `now` (microseconds), earliest first (ties by key).
    pub fn due_timers(&self, now: i64) -> Vec<Timer> {
        if self.timers == 0 {
            return Vec::new();
        }
        let mut due: Vec<Timer> = self
            .committed
            .iter()
            .filter(|(k, _)| k.starts_with(TIMER_PREFIX))
            .filter_map(|(k, v)| Timer::decode(k, v))
            .filter(|t| t.at <= now)
            .collect();
        due.sort_by(|a, b| (a.at, &a.key).cmp(&(b.at, &b.key)));
        due
    }

    /// The handler's clock: the time of the latest tick it saw (0 before the first).
    pub fn clock(&self) -> i64 {
        self.read(CLOCK_KEY).and_then(|v| Some(i64::from_le_bytes(v.get(..8)?.try_into().ok()?))).unwrap_or(0)
    }

    /// Move the handler's clock to `now` (a tick's time), committed at once.
    pub(crate) fn advance_clock(&mut self, now: i64) {
        if now > self.clock() {
            self.rollback();
            self.pending.insert(CLOCK_KEY.to_vec(), Some(now.to_le_bytes().to_vec()));
            self.commit();
        }
    }

    /// Mark timer `key` as fired (removed) in the running call's writes.
    pub(crate) fn stage_fired(&mut self, key: &str) {
        self.pending.insert(Timer::state_key(key), None);
    }

    fn read(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.pending.get(key) {
            Some(written) => written.clone(),
            None => self.committed.get(key).cloned(),
        }
    }

    pub(crate) fn commit(&mut self) {
        for (key, value) in self.pending.drain() {
            let key_len = key.len();
            let is_timer = key.starts_with(TIMER_PREFIX);
            let (old, added) = match value {
                Some(value) => {
                    self.committed_bytes += key_len + value.len();
                    (self.committed.insert(key, value), true)
                }
                None => (self.committed.remove(&key), false),
            };
            if is_timer {
                match (&old, added) {
                    (None, true) => self.timers += 1,
                    (Some(_), false) => self.timers -= 1,
                    _ => {}
                }
            }
            if let Some(old) = old {
                self.committed_bytes -= key_len + old.len();
            }
        }
        self.pending_bytes = 0;
    }

    pub(crate) fn rollback(&mut self) {
        self.pending.clear();
        self.pending_bytes = 0;
    }
}

/// Lines a plugin's ring keeps; older ones are dropped.
pub const LOG_RING_LINES: usize = 1_000;

/// One line a plugin logged, as kept in its ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedLine {
    /// Sequence number, increasing over the ring's life.
    pub seq: u64,
    /// Milliseconds since the Unix epoch (the host's clock; the plugin never sees it).
    pub time_ms: u64,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// `name@version` of the instance that logged it.
    pub plugin: String,
    /// The text (cut at the line cap).
    pub message: String,
}

/// The last [`LOG_RING_LINES`] lines a plugin logged, shared between the instances of every
/// version deployed under one name and whoever reads them (the admin API).
#[derive(Debug, Default)]
pub struct LogRing {
    lines: std::collections::VecDeque<LoggedLine>,
    next_seq: u64,
}

impl LogRing {
    fn push(&mut self, level: &'static str, plugin: &str, message: String) {
        let time_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.next_seq += 1;
        if self.lines.len() == LOG_RING_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(LoggedLine { seq: self.next_seq, time_ms, level, plugin: plugin.to_string(), message });
    }

    /// The lines kept whose sequence number is above `seq`, oldest first.
    pub fn after(&self, seq: u64) -> Vec<LoggedLine> {
        self.lines.iter().filter(|l| l.seq > seq).cloned().collect()
    }
}

/// A [`LogRing`] shared between threads.
pub type SharedLogs = Arc<std::sync::Mutex<LogRing>>;

/// The data of one plugin instance's store.
pub(crate) struct PluginStore {
    wasi: WasiCtx,
    resources: ResourceTable,
    pub(crate) limits: MeteredLimits,
    pub(crate) state: KeyedState,
    pub(crate) output: MemoryOutputPipe,
    params: Arc<BTreeMap<String, String>>,
    /// `name@version`, for log lines.
    label: Arc<str>,
    max_state_bytes: usize,
    logs_this_call: usize,
    logs: SharedLogs,
}

impl PluginStore {
    pub(crate) fn new(
        label: Arc<str>,
        params: Arc<BTreeMap<String, String>>,
        caps: &Limits,
        state: KeyedState,
        logs: SharedLogs,
    ) -> Self {
        let output = MemoryOutputPipe::new(OUTPUT_PIPE_BYTES);
        // No preopened directories, environment, arguments, network or name lookup; clocks that
        // stand still and a fixed-seed random stream, so a plugin cannot tell one run from another.
        let wasi = WasiCtx::builder()
            .stdout(output.clone())
            .stderr(output.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(StoppedClock)
            .monotonic_clock(StoppedClock)
            .secure_random(FixedSeedRandom::default())
            .insecure_random(FixedSeedRandom::default())
            .insecure_random_seed(0)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(caps.memory_bytes)
            .trap_on_grow_failure(true)
            .instances(16)
            .tables(64)
            .memories(4)
            .build();
        let limits = MeteredLimits { caps: limits, memory_cap: caps.memory_bytes, memory_bytes: 0, table_elements: 0 };
        PluginStore {
            wasi,
            resources: ResourceTable::new(),
            limits,
            state,
            output,
            params,
            label,
            max_state_bytes: caps.state_bytes,
            logs_this_call: 0,
            logs,
        }
    }

    /// Everything written to stdout/stderr so far.
    pub(crate) fn output_text(&self) -> String {
        String::from_utf8_lossy(&self.output.contents()).into_owned()
    }

    pub(crate) fn start_call(&mut self) {
        self.logs_this_call = 0;
    }

    pub(crate) fn end_call(&mut self) {
        if self.logs_this_call > MAX_LOGS_PER_CALL {
            tracing::warn!(plugin = %self.label, dropped = self.logs_this_call - MAX_LOGS_PER_CALL, "plugin log lines dropped");
        }
    }
}

/// The store's caps, counting what the instance holds as it grows: the memory cap covers all of
/// its linear memories together, and its tables share one element limit, so neither several
/// memories each under the cap nor a table grown without end makes the host allocate more.
pub(crate) struct MeteredLimits {
    caps: StoreLimits,
    memory_cap: usize,
    /// Bytes of linear memory over the instance's memories.
    pub(crate) memory_bytes: usize,
    /// Elements over the instance's tables.
    table_elements: usize,
}

impl ResourceLimiter for MeteredLimits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory_bytes.saturating_add(desired.saturating_sub(current));
        if total > self.memory_cap {
            // Worded as wasmtime's own refusal, which `failure_of_trap` reads as the memory cap.
            wasmtime::bail!(
                "forcing trap when growing memory: the instance's memories would hold {total} bytes together, \
                 over the cap of {} bytes",
                self.memory_cap
            );
        }
        let allowed = self.caps.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory_bytes = total;
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.caps.memory_grow_failed(error)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.caps.table_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.table_elements.saturating_add(desired.saturating_sub(current));
        if total > MAX_TABLE_ELEMENTS {
            wasmtime::bail!(
                "forcing trap when growing a table: the instance's tables would hold {total} elements, \
                 over the limit of {MAX_TABLE_ELEMENTS}"
            );
        }
        let allowed = self.caps.table_growing(current, desired, maximum)?;
        if allowed {
            self.table_elements = total;
        }
        Ok(allowed)
    }

    fn instances(&self) -> usize {
        self.caps.instances()
    }

    fn tables(&self) -> usize {
        self.caps.tables()
    }

    fn memories(&self) -> usize {
        self.caps.memories()
    }
}

impl WasiView for PluginStore {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.resources }
    }
}

impl types::Host for PluginStore {}
impl crate::bindings::handler::weir::plugin::types::Host for PluginStore {}
impl tables::Host for PluginStore {}

impl host::Host for PluginStore {
    fn log(&mut self, level: host::LogLevel, mut message: String) -> wasmtime::Result<()> {
        self.logs_this_call += 1;
        if self.logs_this_call > MAX_LOGS_PER_CALL {
            return Ok(());
        }
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [cut]");
        }
        let plugin = &*self.label;
        let name = match level {
            host::LogLevel::Trace => "trace",
            host::LogLevel::Debug => "debug",
            host::LogLevel::Info => "info",
            host::LogLevel::Warn => "warn",
            host::LogLevel::Error => "error",
        };
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).push(name, plugin, message.clone());
        match level {
            host::LogLevel::Trace => tracing::trace!(target: "weir::plugin", plugin, "{message}"),
            host::LogLevel::Debug => tracing::debug!(target: "weir::plugin", plugin, "{message}"),
            host::LogLevel::Info => tracing::info!(target: "weir::plugin", plugin, "{message}"),
            host::LogLevel::Warn => tracing::warn!(target: "weir::plugin", plugin, "{message}"),
            host::LogLevel::Error => tracing::error!(target: "weir::plugin", plugin, "{message}"),
        }
        Ok(())
    }

    fn param(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self.params.get(&name).cloned())
    }
}

fn refuse_host_key(key: &[u8]) -> wasmtime::Result<()> {
    if key.first() == Some(&HOST_KEY_BYTE) {
        wasmtime::bail!("state keys starting with byte 0xff are the host's (timers)");
    }
    Ok(())
}

impl state::Host for PluginStore {
    fn get(&mut self, key: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        refuse_host_key(&key)?;
        Ok(self.state.read(&key))
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> wasmtime::Result<()> {
        refuse_host_key(&key)?;
        self.stage_put(key, value)
    }

    fn delete(&mut self, key: Vec<u8>) -> wasmtime::Result<()> {
        refuse_host_key(&key)?;
        self.stage_delete(key)
    }
}

impl crate::bindings::handler::weir::plugin::timers::Host for PluginStore {
    fn set(
        &mut self,
        key: String,
        at: i64,
        event_type: String,
        payload: Vec<u8>,
        correlation_id: Option<String>,
        set_by: String,
    ) -> wasmtime::Result<()> {
        let timer = Timer { key, at, event_type, payload, correlation_id, set_by };
        self.stage_put(Timer::state_key(&timer.key), timer.encode())
    }

    fn cancel(&mut self, key: String) -> wasmtime::Result<()> {
        self.stage_delete(Timer::state_key(&key))
    }

    fn now(&mut self) -> wasmtime::Result<i64> {
        Ok(self.state.clock())
    }
}

impl PluginStore {
    fn stage_put(&mut self, key: Vec<u8>, value: Vec<u8>) -> wasmtime::Result<()> {
        if key.len() > MAX_STATE_KEY {
            wasmtime::bail!("state key of {} bytes is over the limit of {MAX_STATE_KEY}", key.len());
        }
        if value.len() > MAX_STATE_VALUE {
            wasmtime::bail!("state value of {} bytes is over the limit of {MAX_STATE_VALUE}", value.len());
        }
        let added = key.len() + value.len();
        let total = self.state.committed_bytes + self.state.pending_bytes + added;
        if total > self.max_state_bytes {
            wasmtime::bail!("state would grow to {total} bytes, over the limit of {}", self.max_state_bytes);
        }
        self.state.pending_bytes += added;
        self.state.pending.insert(key, Some(value));
        Ok(())
    }

    fn stage_delete(&mut self, key: Vec<u8>) -> wasmtime::Result<()> {
        // Checked and counted as a write is: a pending delete holds its key in the host.
        if key.len() > MAX_STATE_KEY {
            wasmtime::bail!("state key of {} bytes is over the limit of {MAX_STATE_KEY}", key.len());
        }
        // A delete shrinks the state, but the batch's pending writes are held in the host.
        let pending = self.state.pending_bytes + key.len();
        if pending > self.max_state_bytes {
            wasmtime::bail!(
                "a batch's state changes would hold {pending} bytes, over the limit of {}",
                self.max_state_bytes
            );
        }
        self.state.pending_bytes = pending;
        self.state.pending.insert(key, None);
        Ok(())
    }
}

/// What a plugin's wait on the monotonic clock (`subscribe-duration`, `subscribe-instant`: what
/// `std::thread::sleep` and `poll` with a timeout use) gets instead of WASI's real-time sleep: a
/// pollable that is ready at once. The sandbox's clocks stand still, so any wait is over as soon
/// as it starts; a plugin cannot hold the ingest thread (where the CPU budget's epoch interrupt
/// does not reach, inside a host call) by sleeping.
pub(crate) fn stop_clock_waits(linker: &mut wasmtime::component::Linker<PluginStore>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::{DynPollable, subscribe};
    fn elapsed(store: &mut PluginStore) -> wasmtime::Result<(Resource<DynPollable>,)> {
        let resource = store.resources.push(Elapsed)?;
        Ok((subscribe(&mut store.resources, resource)?,))
    }
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap("subscribe-duration", |mut store: wasmtime::StoreContextMut<'_, PluginStore>, (_,): (u64,)| {
        elapsed(store.data_mut())
    })?;
    clock.func_wrap("subscribe-instant", |mut store: wasmtime::StoreContextMut<'_, PluginStore>, (_,): (u64,)| {
        elapsed(store.data_mut())
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The monotonic clock interface as wasmtime-wasi defines it (plugins' imports of any 0.2 version
/// resolve to it).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// A pollable that is always ready.
struct Elapsed;

impl wasmtime_wasi::p2::Pollable for Elapsed {
    fn ready<'a, 'b>(&'a mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(std::future::ready(()))
    }
}

/// A wall and monotonic clock fixed at zero.
struct StoppedClock;

impl wasmtime_wasi::HostWallClock for StoppedClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        0
    }
}

/// A deterministic random stream (splitmix64 from a fixed seed): the same for every instance.
#[derive(Default)]
struct FixedSeedRandom {
    state: u64,
}

impl FixedSeedRandom {
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl rand_core::TryRng for FixedSeedRandom {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.next() as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.next())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}
