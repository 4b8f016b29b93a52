//! # weir-log
//!
//! The embedded durable log: weir's own event store when no broker is configured, and
//! ([`source`]) the [`Source`](weir_core::source::Source) and
//! [`EventSink`](weir_core::source::EventSink) over it.
//!
//! Layout under `<data_dir>/log`: one directory per topic holding `topic.json` (its partition
//! count, fixed at creation) and one directory per partition holding segment files named by the
//! offset of their first record (`00000000000000000000.log`). A segment is a run of frames:
//! `len: u32 | crc32: u32 | body`, the body being the record (offset, time, id, type, key, content
//! type, correlation, causation, headers, payload). All integers are little-endian.
//!
//! Appends to one partition are serialised; a batch is written with one `write` and, under the
//! default fsync policy, made durable before the call returns. Readers take the segment's
//! committed length under the lock and read outside it, so they never see half a batch.
//!
//! **Invariant:** an append returns positions only once its bytes are written (and synced when
//! `fsync = "always"`); a failed append leaves the partition as it was before it.
//! **Invariant:** on open, a frame at the end of a partition's last segment that is short or fails
//! its checksum is a torn write from a crash and is cut off; the same anywhere else is corruption
//! and the log refuses to open, naming the file and byte.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use weir_core::durable::{self, sync_dir};
use weir_core::event::{Event, Position};

pub mod source;

/// Bytes between two entries of a segment's sparse offset index.
const INDEX_INTERVAL: u64 = 8 * 1024;
/// The largest frame body accepted, on write and on read.
pub const MAX_RECORD_BYTES: usize = 16 << 20;
const FRAME_HEADER: usize = 8;
const NONE_LEN: u32 = u32::MAX;

/// Why the log could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Bytes that should hold a complete record do not.
    #[error("{path}: corrupt record at byte {byte}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the frame.
        byte: u64,
        /// What is wrong.
        reason: String,
    },
    /// The topic does not exist.
    #[error("topic {0:?} does not exist in the embedded log")]
    UnknownTopic(String),
    /// The topic has no such partition.
    #[error("topic {topic:?} has {partitions} partitions; there is no partition {partition}")]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// Asked for.
        partition: u32,
        /// How many there are.
        partitions: u32,
    },
    /// The offset is no longer (or not yet) in the partition.
    #[error("offset {offset} is outside {topic}/{partition}, which holds offsets {start}..{end}")]
    OffsetOutOfRange {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Asked for.
        offset: u64,
        /// First offset held.
        start: u64,
        /// Next offset to be written.
        end: u64,
    },
    /// The topic name differs only in case from an existing topic's.
    #[error(
        "invalid topic name {name:?}: {name:?} differs only in case from the existing topic {existing:?}, and topics are directories (one and the same on a case-insensitive file system)"
    )]
    TopicCaseClash {
        /// The name asked for.
        name: String,
        /// The topic that exists.
        existing: String,
    },
    /// Creating the topic would pass `[log] max_topics`.
    #[error(
        "topic {name} does not exist and the embedded log holds {limit} topics already, its limit ([log] max_topics)"
    )]
    TooManyTopics {
        /// The topic.
        name: String,
        /// The limit.
        limit: usize,
    },
    /// The topic name cannot be a directory name.
    #[error("invalid topic name {0:?}: use 1 to 249 characters of a-z, A-Z, 0-9, '.', '_', '-'")]
    InvalidTopicName(String),
    /// One record is larger than the log accepts.
    #[error("event {index} of the batch is {bytes} bytes encoded; the limit is {limit}")]
    RecordTooLarge {
        /// Index in the batch.
        index: usize,
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
}

/// A `Result` with a [`LogError`].
pub type Result<T, E = LogError> = std::result::Result<T, E>;

impl From<durable::IoError> for LogError {
    fn from(e: durable::IoError) -> Self {
        LogError::Io { path: e.path, source: e.source }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io { path: path.to_owned(), source }
}

/// When appended bytes are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Every append is synced before it is acknowledged: survives power loss.
    Always,
    /// Appends are left to the OS: survives a crash of weir, not of the machine.
    Never,
}

/// `[log]`: the embedded log's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Partitions of a topic created without its own setting.
    pub partitions: u32,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Per partition, delete the oldest closed segments while the partition is larger than this.
    pub retention_bytes: Option<u64>,
    /// Delete closed segments whose last write is older than this many hours.
    pub retention_hours: Option<u64>,
    /// When appends reach the disk.
    pub fsync: FsyncPolicy,
    /// Per-topic settings, by topic name.
    pub topics: BTreeMap<String, TopicConfig>,
    /// Topics the log holds at most; writing to a new topic past it is refused (each partition
    /// keeps a file open).
    pub max_topics: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            partitions: 4,
            segment_bytes: 128 << 20,
            retention_bytes: None,
            retention_hours: None,
            fsync: FsyncPolicy::Always,
            topics: BTreeMap::new(),
            max_topics: 1_000,
        }
    }
}

/// `[log.topics.NAME]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Number of partitions (used when the topic is created).
    pub partitions: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct TopicMeta {
    partitions: u32,
}

/// The first and next offsets of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartitionRange {
    /// Partition.
    pub partition: u32,
    /// Oldest offset still held.
    pub start: u64,
    /// Offset the next append gets.
    pub end: u64,
}

/// The embedded log.
pub struct EmbeddedLog {
    dir: PathBuf,
    config: LogConfig,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    appends: Mutex<u64>,
    appended: Condvar,
    round_robin: AtomicU64,
}

struct Topic {
    partitions: Vec<Partition>,
}

struct Partition {
    topic: String,
    id: u32,
    dir: PathBuf,
    inner: Mutex<PartitionLog>,
    /// The lowest offset a reader still needs (`u64::MAX`: none said): retention keeps it.
    floor: std::sync::atomic::AtomicU64,
}

struct PartitionLog {
    segments: Vec<Segment>,
    writer: File,
    next_offset: u64,
    buf: Vec<u8>,
}

/// A batch written to a partition's file but not yet visible.
struct Pending {
    first: u64,
    count: u64,
    start_len: u64,
    bytes: u64,
    new_index: Vec<(u64, u64)>,
}

struct Segment {
    base: u64,
    path: PathBuf,
    len: u64,
    /// (offset, byte) pairs, ascending; the first is (base, 0).
    index: Vec<(u64, u64)>,
}

impl EmbeddedLog {
    /// Open (or create) the log in `dir`, repairing torn tails.
    pub fn open(dir: &Path, config: LogConfig) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut topics = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let meta_path = entry.path().join("topic.json");
            if !meta_path.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let text = std::fs::read(&meta_path).map_err(io(&meta_path))?;
            let meta: TopicMeta = serde_json::from_slice(&text).map_err(|e| LogError::Corrupt {
                path: meta_path.clone(),
                byte: 0,
                reason: e.to_string(),
            })?;
            let partitions = (0..meta.partitions)
                .map(|id| Partition::open(&name, id, &entry.path().join(id.to_string())))
                .collect::<Result<Vec<_>>>()?;
            topics.insert(name, Arc::new(Topic { partitions }));
        }
        Ok(EmbeddedLog {
            dir: dir.to_owned(),
            config,
            topics: RwLock::new(topics),
            appends: Mutex::new(0),
            appended: Condvar::new(),
            round_robin: AtomicU64::new(0),
        })
    }

    /// The settings it runs with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics.get(name).cloned().ok_or_else(|| LogError::UnknownTopic(name.to_string()))
    }

    /// The topic, created with its configured partition count if it does not exist.
    fn topic_or_create(&self, name: &str) -> Result<Arc<Topic>> {
        if let Ok(topic) = self.topic(name) {
            return Ok(topic);
        }
        check_topic_name(name)?;
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        if let Some(topic) = topics.get(name) {
            return Ok(topic.clone());
        }
        // On a case-insensitive file system both names would be one directory.
        if let Some(existing) = topics.keys().find(|t| t.eq_ignore_ascii_case(name)) {
            return Err(LogError::TopicCaseClash { name: name.to_string(), existing: existing.clone() });
        }
        // The host's own topics (dead letters, journals, ticks: a few per plugin) are never
        // refused: refusing one would lose what the host must keep.
        if !is_host_topic(name) && user_topics(&topics) >= self.config.max_topics {
            return Err(LogError::TooManyTopics { name: name.to_string(), limit: self.config.max_topics });
        }
        let count = self.config.topics.get(name).map_or(self.config.partitions, |t| t.partitions).max(1);
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let partitions =
            (0..count).map(|id| Partition::open(name, id, &dir.join(id.to_string()))).collect::<Result<Vec<_>>>()?;
        // topic.json last: a topic without it is ignored on open and recreated.
        let meta_path = dir.join("topic.json");
        let meta = serde_json::to_vec(&TopicMeta { partitions: count }).unwrap_or_default();
        durable::write_atomically(&meta_path, &meta)?;
        tracing::info!(topic = name, partitions = count, "created topic in the embedded log");
        let topic = Arc::new(Topic { partitions });
        topics.insert(name.to_string(), topic.clone());
        Ok(topic)
    }

    /// Create a topic if it does not exist; returns its partition count.
    pub fn create_topic(&self, name: &str) -> Result<u32> {
        Ok(self.topic_or_create(name)?.partitions.len() as u32)
    }

    /// Topic names.
    pub fn topics(&self) -> Vec<String> {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// Readers still need each of these partitions from this offset on: retention deletes no
    /// segment holding an event at or after it. Partitions not named keep their floor.
    pub fn hold(&self, floors: &weir_core::event::PositionMap) {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        for ((topic, partition), offset) in floors {
            if let Some(p) = topics.get(topic).and_then(|t| t.partitions.get(*partition as usize)) {
                p.floor.store(*offset, Ordering::Relaxed);
            }
        }
    }

    /// Whether `event` could be appended to `topic` (its name valid, its record within
    /// [`MAX_RECORD_BYTES`]), without writing it or creating the topic.
    pub fn check(&self, topic: &str, event: &Event) -> Result<()> {
        check_topic_name(topic)?;
        if !is_host_topic(topic) && !self.has_topic(topic) {
            let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
            if !topics.contains_key(topic) && user_topics(&topics) >= self.config.max_topics {
                return Err(LogError::TooManyTopics { name: topic.to_string(), limit: self.config.max_topics });
            }
        }
        let bytes = encoded_len(event);
        if bytes > MAX_RECORD_BYTES {
            return Err(LogError::RecordTooLarge { index: 0, bytes, limit: MAX_RECORD_BYTES });
        }
        Ok(())
    }

    /// Whether the topic exists.
    pub fn has_topic(&self, topic: &str) -> bool {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).contains_key(topic)
    }

    /// Partition ranges of a topic.
    pub fn ranges(&self, topic: &str) -> Result<Vec<PartitionRange>> {
        let topic = self.topic(topic)?;
        Ok(topic.partitions.iter().map(Partition::range).collect())
    }

    /// Append events to `topic` (created if missing), each to the partition its key hashes to
    /// (round robin without a key). An empty id becomes `topic-partition-offset`; a zero time
    /// becomes now. Returns each event's position, in input order, once durable.
    pub fn append(&self, topic_name: &str, events: Vec<Event>) -> Result<Vec<Position>> {
        let mut positions = self.append_all(vec![(topic_name.to_string(), events)])?;
        Ok(positions.pop().unwrap_or_default())
    }

    /// Append to several topics at once, as [`EmbeddedLog::append`] does to one: every event is
    /// written in the order given (topic after topic), then all are synced together, then made
    /// visible; all or nothing. Returns the positions per topic, in input order.
    pub fn append_all(&self, batches: Vec<(String, Vec<Event>)>) -> Result<Vec<Vec<Position>>> {
        let mut prepared = Vec::with_capacity(batches.len());
        for (name, events) in batches {
            let topic = self.topic_or_create(&name)?;
            let count = topic.partitions.len() as u32;
            let mut groups: BTreeMap<u32, Vec<(usize, Event)>> = BTreeMap::new();
            for (index, event) in events.into_iter().enumerate() {
                let partition = match &event.key {
                    Some(key) => partition_for_key(key.as_bytes(), count),
                    None => (self.round_robin.fetch_add(1, Ordering::Relaxed) % u64::from(count)) as u32,
                };
                groups.entry(partition).or_default().push((index, event));
            }
            prepared.push((name, topic, groups));
        }
        let firsts = self.write_groups(&prepared)?;
        let mut all = Vec::with_capacity(prepared.len());
        for ((name, _, groups), firsts) in prepared.iter().zip(firsts) {
            let total = groups.values().map(Vec::len).sum();
            let mut positions = vec![Position::default(); total];
            for ((partition, group), first) in groups.iter().zip(firsts) {
                for (i, (index, _)) in group.iter().enumerate() {
                    positions[*index] =
                        Position { topic: name.clone(), partition: *partition, offset: first + i as u64 };
                }
            }
            all.push(positions);
        }
        *self.appends.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.appended.notify_all();
        Ok(all)
    }

    /// Write every group to its partition, all or nothing: check sizes, lock the partitions (in
    /// one global order: topic name, then partition), write each in the order given, sync them
    /// together (in parallel), then make them visible. Returns each group's first offset, per
    /// topic.
    fn write_groups(&self, batches: &[TopicBatch]) -> Result<Vec<Vec<u64>>> {
        for (_, _, groups) in batches {
            for group in groups.values() {
                for (index, event) in group {
                    let bytes = encoded_len(event);
                    if bytes > MAX_RECORD_BYTES {
                        return Err(LogError::RecordTooLarge { index: *index, bytes, limit: MAX_RECORD_BYTES });
                    }
                }
            }
        }
        // (batch, partition) of every group, and the order to lock them in.
        let mut keys: Vec<(usize, u32)> =
            batches.iter().enumerate().flat_map(|(b, (_, _, groups))| groups.keys().map(move |p| (b, *p))).collect();
        let mut lock_order = keys.clone();
        lock_order.sort_by(|a, b| (&batches[a.0].0, a.1).cmp(&(&batches[b.0].0, b.1)));
        lock_order.dedup_by(|a, b| batches[a.0].0 == batches[b.0].0 && a.1 == b.1);
        let mut guards = Vec::with_capacity(lock_order.len());
        for (b, partition) in &lock_order {
            let target = &batches[*b].1.partitions[*partition as usize];
            guards.push((
                (batches[*b].0.clone(), *partition),
                target,
                target.inner.lock().unwrap_or_else(|e| e.into_inner()),
            ));
        }
        keys.dedup();
        let mut pending = Vec::with_capacity(keys.len());
        let mut written: Vec<usize> = Vec::with_capacity(keys.len());
        for (b, partition) in &keys {
            let group = &batches[*b].2[partition];
            let Some(at) = guards.iter().position(|(k, _, _)| k.0 == batches[*b].0 && k.1 == *partition) else {
                continue;
            };
            let (_, target, log) = &mut guards[at];
            match target.write(log, group, &self.config) {
                Ok(p) => {
                    pending.push(p);
                    written.push(at);
                }
                Err(e) => {
                    for (at, p) in written.iter().zip(&pending).rev() {
                        Partition::undo(&mut guards[*at].2, p);
                    }
                    return Err(e);
                }
            }
        }
        if self.config.fsync == FsyncPolicy::Always {
            let synced: Vec<std::io::Result<()>> = if guards.len() == 1 {
                vec![guards[0].2.writer.sync_data()]
            } else {
                std::thread::scope(|scope| {
                    let handles: Vec<_> =
                        guards.iter().map(|(_, _, log)| scope.spawn(|| log.writer.sync_data())).collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap_or_else(|_| Err(std::io::Error::other("sync thread panicked"))))
                        .collect()
                })
            };
            if let Some(position) = synced.iter().position(Result::is_err) {
                let path = guards[position].2.segments.last().map(|s| s.path.clone()).unwrap_or_default();
                let source = synced
                    .into_iter()
                    .nth(position)
                    .and_then(Result::err)
                    .unwrap_or_else(|| std::io::Error::other("sync failed"));
                for (at, p) in written.iter().zip(&pending).rev() {
                    Partition::undo(&mut guards[*at].2, p);
                }
                return Err(LogError::Io { path, source });
            }
        }
        let mut firsts: Vec<Vec<u64>> = batches.iter().map(|_| Vec::new()).collect();
        for ((b, _), p) in keys.iter().zip(&pending) {
            firsts[*b].push(p.first);
        }
        for (at, p) in written.into_iter().zip(pending) {
            Partition::publish(&mut guards[at].2, p);
        }
        Ok(firsts)
    }

    /// Read events of one partition from `offset`, up to about `max_bytes` (at least one event
    /// if any is there).
    pub fn read(&self, topic_name: &str, partition: u32, offset: u64, max_bytes: usize) -> Result<Vec<Event>> {
        let topic = self.topic(topic_name)?;
        let target = topic.partitions.get(partition as usize).ok_or(LogError::UnknownPartition {
            topic: topic_name.to_string(),
            partition,
            partitions: topic.partitions.len() as u32,
        })?;
        target.read(offset, max_bytes)
    }

    /// A counter that grows with every append, for [`EmbeddedLog::wait`].
    pub fn appends(&self) -> u64 {
        *self.appends.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Block until an append after `seen` (a value of [`EmbeddedLog::appends`]) or `timeout`.
    pub fn wait(&self, seen: u64, timeout: Duration) {
        let guard = self.appends.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.appended.wait_timeout_while(guard, timeout, |n| *n == seen);
    }
}

/// One topic's part of an append: its name, the topic, and per partition the events (with their
/// index in the caller's list).
type TopicBatch = (String, Arc<Topic>, BTreeMap<u32, Vec<(usize, Event)>>);

fn check_topic_name(name: &str) -> Result<()> {
    if weir_core::event::valid_topic_name(name) { Ok(()) } else { Err(LogError::InvalidTopicName(name.to_string())) }
}

/// Partition of a key: murmur2 as Kafka's Java client computes it, so a key lands on the same
/// partition number as Kafka's default partitioner would give it.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

impl Partition {
    fn open(topic: &str, id: u32, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let name = entry.map_err(io(dir))?.file_name().to_string_lossy().into_owned();
            if let Some(base) = name.strip_suffix(".log").and_then(|b| b.parse::<u64>().ok()) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        if bases.is_empty() {
            bases.push(0);
        }
        let mut segments = Vec::with_capacity(bases.len());
        let last = bases.len() - 1;
        for (i, base) in bases.iter().enumerate() {
            segments.push(Segment::recover(&segment_path(dir, *base), *base, i == last)?);
        }
        // Offsets continue across segments.
        for pair in segments.windows(2) {
            let end = pair[0].end_offset()?;
            if end != pair[1].base {
                return Err(LogError::Corrupt {
                    path: pair[1].path.clone(),
                    byte: 0,
                    reason: format!("segment starts at offset {} but the one before ends at {end}", pair[1].base),
                });
            }
        }
        let active = segments.last().ok_or_else(|| LogError::Corrupt {
            path: dir.to_owned(),
            byte: 0,
            reason: "no segment".into(),
        })?;
        let next_offset = active.end_offset()?;
        let writer = OpenOptions::new().append(true).open(&active.path).map_err(io(&active.path))?;
        Ok(Partition {
            topic: topic.to_string(),
            id,
            dir: dir.to_owned(),
            inner: Mutex::new(PartitionLog { segments, writer, next_offset, buf: Vec::new() }),
            floor: std::sync::atomic::AtomicU64::new(u64::MAX),
        })
    }

    fn range(&self) -> PartitionRange {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        PartitionRange { partition: self.id, start: inner.segments[0].base, end: inner.next_offset }
    }

    /// Encode and write `events` after the partition's end, under the caller's lock, without
    /// syncing or making them visible: [`Partition::publish`] or [`Partition::undo`] follows.
    fn write(&self, log: &mut PartitionLog, events: &[(usize, Event)], config: &LogConfig) -> Result<Pending> {
        if log.segments.last().is_some_and(|s| s.len >= config.segment_bytes) {
            self.roll(log, config)?;
        }
        let first = log.next_offset;
        let now_us = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
        log.buf.clear();
        let Some(segment) = log.segments.last() else {
            return Err(LogError::Corrupt { path: self.dir.clone(), byte: 0, reason: "no segment".into() });
        };
        let start_len = segment.len;
        let mut new_index = Vec::new();
        let mut last_indexed = segment.index.last().map_or(0, |(_, b)| *b);
        for (i, (_, event)) in events.iter().enumerate() {
            let offset = first + i as u64;
            let byte = start_len + log.buf.len() as u64;
            if byte >= last_indexed + INDEX_INTERVAL {
                new_index.push((offset, byte));
                last_indexed = byte;
            }
            encode_frame(&mut log.buf, event, offset, now_us, &self.topic, self.id);
        }
        if let Err(source) = log.writer.write_all(&log.buf) {
            let _ = log.writer.set_len(start_len);
            return Err(LogError::Io { path: segment.path.clone(), source });
        }
        let pending = Pending { first, count: events.len() as u64, start_len, bytes: log.buf.len() as u64, new_index };
        if log.buf.capacity() > 4 * MAX_RECORD_BYTES {
            log.buf = Vec::new();
        }
        Ok(pending)
    }

    /// Cut a written but unpublished batch back off.
    fn undo(log: &mut PartitionLog, pending: &Pending) {
        let _ = log.writer.set_len(pending.start_len);
    }

    /// Make a written (and synced) batch visible to readers.
    fn publish(log: &mut PartitionLog, pending: Pending) {
        if let Some(segment) = log.segments.last_mut() {
            segment.len += pending.bytes;
            segment.index.extend(pending.new_index);
        }
        log.next_offset += pending.count;
    }

    /// Close the active segment and start a new one; then apply retention.
    fn roll(&self, log: &mut PartitionLog, config: &LogConfig) -> Result<()> {
        let path = segment_path(&self.dir, log.next_offset);
        log.writer.sync_data().map_err(io(&path))?;
        let writer = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        sync_dir(&self.dir)?;
        log.segments.push(Segment { base: log.next_offset, path, len: 0, index: vec![(log.next_offset, 0)] });
        log.writer = writer;
        let max_age = config.retention_hours.map(|h| Duration::from_secs(h * 3600));
        loop {
            if log.segments.len() < 2 {
                break;
            }
            let total: u64 = log.segments.iter().map(|s| s.len).sum();
            let oldest = &log.segments[0];
            let too_big = config.retention_bytes.is_some_and(|limit| total > limit);
            let too_old = max_age.is_some_and(|age| {
                std::fs::metadata(&oldest.path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|elapsed| elapsed > age)
            });
            // Never a segment holding events a reader still needs.
            let needed = log.segments[1].base > self.floor.load(Ordering::Relaxed);
            if !(too_big || too_old) || needed {
                break;
            }
            let removed = log.segments.remove(0);
            std::fs::remove_file(&removed.path).map_err(io(&removed.path))?;
            tracing::info!(topic = %self.topic, partition = self.id, segment = %removed.path.display(), "retention removed segment");
        }
        Ok(())
    }

    fn read(&self, offset: u64, max_bytes: usize) -> Result<Vec<Event>> {
        let (path, mut byte, end_byte) = {
            let log = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let start = log.segments[0].base;
            if offset < start || offset > log.next_offset {
                return Err(LogError::OffsetOutOfRange {
                    topic: self.topic.clone(),
                    partition: self.id,
                    offset,
                    start,
                    end: log.next_offset,
                });
            }
            if offset == log.next_offset {
                return Ok(Vec::new());
            }
            let at = log.segments.partition_point(|s| s.base <= offset).saturating_sub(1);
            let segment = &log.segments[at];
            let entry = segment.index.partition_point(|(o, _)| *o <= offset).saturating_sub(1);
            let byte = segment.index.get(entry).map_or(0, |(_, b)| *b);
            (segment.path.clone(), byte, segment.len)
        };
        // Opened for this read only: a log of many partitions and segments holds one file
        // descriptor per partition (its writer), not one per segment.
        let file = match File::open(&path) {
            Ok(file) => file,
            // Retention removed the segment since: the offset is no longer there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let log = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                return Err(LogError::OffsetOutOfRange {
                    topic: self.topic.clone(),
                    partition: self.id,
                    offset,
                    start: log.segments[0].base,
                    end: log.next_offset,
                });
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let mut events = Vec::new();
        let mut used = 0usize;
        let mut buf = Vec::new();
        let mut min_read = 64 * 1024;
        while byte < end_byte && used < max_bytes.max(1) {
            let want = (end_byte - byte).min((max_bytes - used).max(min_read) as u64) as usize;
            buf.resize(want, 0);
            file.read_exact_at(&mut buf, byte).map_err(io(&path))?;
            let mut at = 0usize;
            while at + FRAME_HEADER <= buf.len() && used < max_bytes.max(1) {
                let frame_byte = byte + at as u64;
                let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
                if len > MAX_RECORD_BYTES || frame_byte + (FRAME_HEADER + len) as u64 > end_byte {
                    return Err(corrupt(&path, frame_byte, format!("frame of {len} bytes runs past the end")));
                }
                if at + FRAME_HEADER + len > buf.len() {
                    break;
                }
                let body = &buf[at + FRAME_HEADER..at + FRAME_HEADER + len];
                let crc = u32::from_le_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
                if crc32fast::hash(body) != crc {
                    return Err(corrupt(&path, frame_byte, "checksum mismatch".into()));
                }
                at += FRAME_HEADER + len;
                if body_offset(body).is_some_and(|o| o >= offset) {
                    let event =
                        decode_body(body, &self.topic, self.id).map_err(|reason| corrupt(&path, frame_byte, reason))?;
                    used += FRAME_HEADER + len;
                    events.push(event);
                }
            }
            if at == 0 {
                if buf.len() < FRAME_HEADER || min_read > MAX_RECORD_BYTES + FRAME_HEADER {
                    return Err(corrupt(&path, byte, "frame header runs past the end".into()));
                }
                // One frame larger than the read: read all of it next time round.
                let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                min_read = FRAME_HEADER + len;
                continue;
            }
            byte += at as u64;
        }
        Ok(events)
    }
}

/// The byte of the first intact frame (length in bounds, checksum right, offset at or past
/// `expected`) after `from`, if there is one.
fn intact_frame_after(bytes: &[u8], from: usize, expected: u64) -> Option<usize> {
    (from + 1..bytes.len().saturating_sub(FRAME_HEADER - 1)).find(|&at| {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        if len > MAX_RECORD_BYTES || at + FRAME_HEADER + len > bytes.len() {
            return false;
        }
        let body = &bytes[at + FRAME_HEADER..at + FRAME_HEADER + len];
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        crc32fast::hash(body) == crc && body_offset(body).is_some_and(|offset| offset >= expected)
    })
}

fn corrupt(path: &Path, byte: u64, reason: String) -> LogError {
    LogError::Corrupt { path: path.to_owned(), byte, reason }
}

impl Segment {
    /// Open a segment, checking every frame. In the last segment a bad frame with nothing intact
    /// after it is a torn write and is truncated away; anything else is corruption.
    fn recover(path: &Path, base: u64, last: bool) -> Result<Segment> {
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(path).map_err(io(path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(path))?;
        let mut index = vec![(base, 0u64)];
        let mut last_indexed = 0u64;
        let mut expected = base;
        let mut at = 0usize;
        let mut problem = None;
        while at < bytes.len() {
            if at + FRAME_HEADER > bytes.len() {
                problem = Some("frame header cut short".to_string());
                break;
            }
            let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
            if len > MAX_RECORD_BYTES || at + FRAME_HEADER + len > bytes.len() {
                problem = Some(format!("frame of {len} bytes cut short"));
                break;
            }
            let body = &bytes[at + FRAME_HEADER..at + FRAME_HEADER + len];
            let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
            if crc32fast::hash(body) != crc {
                problem = Some("checksum mismatch".into());
                break;
            }
            let offset = body_offset(body).unwrap_or(u64::MAX);
            if offset != expected {
                problem = Some(format!("offset {offset} where {expected} was expected"));
                break;
            }
            if at as u64 >= last_indexed + INDEX_INTERVAL {
                index.push((offset, at as u64));
                last_indexed = at as u64;
            }
            expected += 1;
            at += FRAME_HEADER + len;
        }
        if let Some(reason) = problem {
            if !last {
                return Err(corrupt(path, at as u64, reason));
            }
            // A torn write is the end of the file; intact records after the damage are
            // acknowledged events that cutting would drop.
            if let Some(next) = intact_frame_after(&bytes, at, expected) {
                return Err(corrupt(
                    path,
                    at as u64,
                    format!(
                        "{reason}; intact records follow at byte {next}, so this is damage, not a torn write: the log does not open rather than drop them (restore the segment, or move it aside to give up what it holds)"
                    ),
                ));
            }
            tracing::warn!(
                segment = %path.display(),
                byte = at,
                cut = bytes.len() - at,
                reason,
                "embedded log: truncating a torn write at the end of the partition"
            );
            file.set_len(at as u64).map_err(io(path))?;
            file.sync_all().map_err(io(path))?;
        }
        Ok(Segment { base, path: path.to_owned(), len: at as u64, index })
    }

    fn end_offset(&self) -> Result<u64> {
        // Count the frames after the last index entry.
        let (mut offset, mut byte) = self.index.last().copied().unwrap_or((self.base, 0));
        let mut header = [0u8; FRAME_HEADER];
        let file = File::open(&self.path).map_err(io(&self.path))?;
        while byte < self.len {
            file.read_exact_at(&mut header, byte).map_err(io(&self.path))?;
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
            byte += FRAME_HEADER as u64 + len;
            offset += 1;
        }
        Ok(offset)
    }
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(bytes);
}

fn put_opt(buf: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => put_bytes(buf, b),
        None => buf.extend_from_slice(&NONE_LEN.to_le_bytes()),
    }
}

fn encode_frame(buf: &mut Vec<u8>, event: &Event, offset: u64, now_us: i64, topic: &str, partition: u32) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEADER]);
    buf.extend_from_slice(&offset.to_le_bytes());
    let time = if event.time_us == 0 { now_us } else { event.time_us };
    buf.extend_from_slice(&time.to_le_bytes());
    if event.id.is_empty() {
        put_bytes(buf, format!("{topic}-{partition}-{offset}").as_bytes());
    } else {
        put_bytes(buf, event.id.as_bytes());
    }
    put_bytes(buf, event.event_type.as_bytes());
    put_opt(buf, event.key.as_deref().map(str::as_bytes));
    put_bytes(buf, event.content_type.as_bytes());
    put_opt(buf, event.correlation_id.as_deref().map(str::as_bytes));
    put_opt(buf, event.causation_id.as_deref().map(str::as_bytes));
    buf.extend_from_slice(&(event.headers.len() as u32).to_le_bytes());
    for (name, value) in &event.headers {
        put_bytes(buf, name.as_bytes());
        put_bytes(buf, value);
    }
    put_bytes(buf, &event.payload);
    let len = (buf.len() - start - FRAME_HEADER) as u32;
    let crc = crc32fast::hash(&buf[start + FRAME_HEADER..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The body length [`encode_frame`] will produce (the id is at most `topic-partition-offset`
/// when generated, counted generously).
fn encoded_len(event: &Event) -> usize {
    let opt = |o: &Option<String>| 4 + o.as_ref().map_or(0, String::len);
    let id = if event.id.is_empty() { 64 } else { event.id.len() };
    16 + 4
        + id
        + 4
        + event.event_type.len()
        + opt(&event.key)
        + 4
        + event.content_type.len()
        + opt(&event.correlation_id)
        + opt(&event.causation_id)
        + 4
        + event.headers.iter().map(|(n, v)| 8 + n.len() + v.len()).sum::<usize>()
        + 4
        + event.payload.len()
}

fn body_offset(body: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(body.get(..8)?.try_into().ok()?))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let out = self.bytes.get(self.at..self.at + n).ok_or_else(|| format!("record ends early at +{}", self.at))?;
        self.at += n;
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "short")?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "short")?))
    }
    fn opt(&mut self) -> Result<Option<&'a [u8]>, String> {
        let len = self.u32()?;
        if len == NONE_LEN { Ok(None) } else { self.take(len as usize).map(Some) }
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|e| e.to_string())
    }
    fn opt_string(&mut self) -> Result<Option<String>, String> {
        self.opt()?.map(|b| String::from_utf8(b.to_vec()).map_err(|e| e.to_string())).transpose()
    }
}

fn decode_body(body: &[u8], topic: &str, partition: u32) -> Result<Event, String> {
    let mut r = Reader { bytes: body, at: 0 };
    let offset = r.u64()?;
    let time_us = r.u64()? as i64;
    let id = r.string()?;
    let event_type = r.string()?;
    let key = r.opt_string()?;
    let content_type = r.string()?;
    let correlation_id = r.opt_string()?;
    let causation_id = r.opt_string()?;
    let header_count = r.u32()? as usize;
    let mut headers = Vec::with_capacity(header_count.min(64));
    for _ in 0..header_count {
        let name = r.string()?;
        headers.push((name, r.bytes()?.to_vec()));
    }
    let payload = r.bytes()?.to_vec();
    Ok(Event {
        id,
        event_type,
        key,
        payload,
        content_type,
        time_us,
        headers,
        correlation_id,
        causation_id,
        position: Position { topic: topic.to_string(), partition, offset },
    })
}

/// Whether `name` is one of the host's own topics, which `[log] max_topics` does not count.
fn is_host_topic(name: &str) -> bool {
    name.starts_with(weir_core::event::HOST_TOPIC_PREFIX)
}

/// How many of `topics` count against `[log] max_topics`.
fn user_topics<T>(topics: &BTreeMap<String, T>) -> usize {
    topics.keys().filter(|t| !is_host_topic(t)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 32: at `[log] max_topics` a dead letter's topic was refused like any other, and the
    /// dead letter dropped. The host's own topics are not counted and never refused; a user
    /// topic past the limit is refused by `check` already (so an emitted event for it is a
    /// plugin's failure, dead-lettered, not dropped when written).
    #[test]
    fn the_topic_limit_counts_and_refuses_only_user_topics() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), LogConfig { max_topics: 2, ..LogConfig::default() }).unwrap();
        let one = || vec![Event { id: "x".into(), event_type: "T".into(), ..Event::default() }];
        log.append("a", one()).unwrap();
        log.append("b", one()).unwrap();
        let refused = log.append("c", one()).unwrap_err();
        assert!(matches!(refused, LogError::TooManyTopics { .. }), "{refused}");
        assert!(matches!(log.check("c", &one()[0]), Err(LogError::TooManyTopics { .. })));
        assert!(log.check("b", &one()[0]).is_ok());
        for host_topic in ["weir.dlq.p", "weir.journal.p", "weir.ticks"] {
            assert!(log.check(host_topic, &one()[0]).is_ok(), "{host_topic}");
            log.append(host_topic, one()).unwrap_or_else(|e| panic!("{host_topic}: {e}"));
        }
        assert!(matches!(log.append("d", one()), Err(LogError::TooManyTopics { .. })));
    }

    /// Several topics in one append: positions per topic as for one append each, all readable.
    #[test]
    fn append_all_writes_every_topic_and_gives_their_positions() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), LogConfig { partitions: 2, ..LogConfig::default() }).unwrap();
        let event =
            |key: &str| Event { id: key.into(), key: Some(key.into()), event_type: "T".into(), ..Event::default() };
        let positions = log
            .append_all(vec![
                ("journal".into(), vec![event("j")]),
                ("out".into(), vec![event("a"), event("a"), event("b")]),
            ])
            .unwrap();
        assert_eq!(positions[0].len(), 1);
        assert_eq!(positions[1].len(), 3);
        assert_eq!(positions[1][0].partition, positions[1][1].partition, "one key, one partition");
        assert_eq!(positions[1][1].offset, positions[1][0].offset + 1);
        for (topic, list) in [("journal", &positions[0]), ("out", &positions[1])] {
            for p in list {
                let read = log.read(topic, p.partition, p.offset, 1 << 10).unwrap();
                assert_eq!(read[0].position, *p);
            }
        }
    }

    fn event(i: u64, key: Option<&str>) -> Event {
        Event {
            id: format!("e-{i}"),
            event_type: "Thing".into(),
            key: key.map(str::to_string),
            payload: format!("{{\"n\":{i}}}").into_bytes(),
            content_type: "application/json".into(),
            time_us: 1_000 + i as i64,
            headers: vec![("h".into(), vec![1, 2, 3])],
            correlation_id: Some("c".into()),
            causation_id: None,
            position: Position::default(),
        }
    }

    fn config(partitions: u32) -> LogConfig {
        LogConfig { partitions, fsync: FsyncPolicy::Never, ..LogConfig::default() }
    }

    fn read_all(log: &EmbeddedLog, topic: &str, partition: u32) -> Vec<Event> {
        let mut out = Vec::new();
        loop {
            let next = out.last().map_or(0, |e: &Event| e.position.offset + 1);
            let batch = log.read(topic, partition, next, 1000).unwrap();
            if batch.is_empty() {
                return out;
            }
            out.extend(batch);
        }
    }

    #[test]
    fn murmur2_matches_kafkas_java_client() {
        // Values from Kafka's own test of `Utils.murmur2`.
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            ("abc", 479470107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()) as i32, expected, "{input}");
        }
    }

    #[test]
    fn events_round_trip_with_every_field_and_keys_keep_their_partition() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), config(3)).unwrap();
        let events: Vec<Event> = (0..300).map(|i| event(i, Some(&format!("k{}", i % 7)))).collect();
        let positions = log.append("t", events.clone()).unwrap();
        for (e, p) in events.iter().zip(&positions) {
            assert_eq!(p.partition, partition_for_key(e.key.as_ref().unwrap().as_bytes(), 3));
        }
        let mut seen = 0;
        for partition in 0..3 {
            for got in read_all(&log, "t", partition) {
                let i: usize = got.id[2..].parse().unwrap();
                let mut want = events[i].clone();
                want.position = positions[i].clone();
                assert_eq!(got, want);
                seen += 1;
            }
        }
        assert_eq!(seen, 300);
    }

    #[test]
    fn reopening_keeps_everything_and_continues_offsets_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let small = LogConfig { segment_bytes: 2_000, ..config(1) };
        {
            let log = EmbeddedLog::open(dir.path(), small.clone()).unwrap();
            for chunk in 0..20 {
                log.append("t", (0..10).map(|i| event(chunk * 10 + i, None)).collect()).unwrap();
            }
        }
        let segments = std::fs::read_dir(dir.path().join("t/0")).unwrap().count();
        assert!(segments > 5, "{segments} segments");
        let log = EmbeddedLog::open(dir.path(), small).unwrap();
        assert_eq!(log.ranges("t").unwrap()[0], PartitionRange { partition: 0, start: 0, end: 200 });
        let all = read_all(&log, "t", 0);
        assert_eq!(
            all.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
            (0..200).map(|i| format!("e-{i}")).collect::<Vec<_>>()
        );
        // Reading from the middle starts exactly there.
        assert_eq!(log.read("t", 0, 137, 1).unwrap()[0].id, "e-137");
        log.append("t", vec![event(200, None)]).unwrap();
        assert_eq!(log.ranges("t").unwrap()[0].end, 201);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_corruption_elsewhere_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EmbeddedLog::open(dir.path(), config(1)).unwrap();
            log.append("t", (0..10).map(|i| event(i, None)).collect()).unwrap();
        }
        let segment = dir.path().join("t/0/00000000000000000000.log");
        let full = std::fs::read(&segment).unwrap();
        // Half of the last frame reached the disk.
        std::fs::write(&segment, &full[..full.len() - 5]).unwrap();
        let log = EmbeddedLog::open(dir.path(), config(1)).unwrap();
        assert_eq!(read_all(&log, "t", 0).len(), 9);
        assert_eq!(log.append("t", vec![event(99, None)]).unwrap()[0].offset, 9);
        drop(log);
        // A flipped byte inside a frame of a closed segment is corruption, named by file and byte.
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[30] ^= 0xff;
        std::fs::write(&segment, &bytes).unwrap();
        std::fs::write(dir.path().join("t/0/00000000000000000010.log"), b"").unwrap();
        let err = EmbeddedLog::open(dir.path(), config(1)).err().unwrap().to_string();
        assert!(err.contains("00000000000000000000.log: corrupt record at byte 0: checksum mismatch"), "{err}");
    }

    /// Topic directories of names that differ only in case are one directory on a
    /// case-insensitive file system: the second name is refused, naming the first.
    #[test]
    fn topic_names_differing_only_in_case_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), config(1)).unwrap();
        log.append("Orders", vec![event(0, None)]).unwrap();
        let err = log.append("orders", vec![event(1, None)]).unwrap_err().to_string();
        assert!(err.contains("\"orders\" differs only in case from the existing topic \"Orders\""), "{err}");
        assert_eq!(log.topics(), ["Orders"]);
    }

    /// A damaged frame followed by intact ones in the last segment is not a torn write: cutting
    /// there would drop acknowledged events. The log refuses to open, naming file and byte.
    #[test]
    fn damage_before_intact_records_of_the_last_segment_is_refused_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EmbeddedLog::open(dir.path(), config(1)).unwrap();
            log.append("t", (0..10).map(|i| event(i, None)).collect()).unwrap();
        }
        let segment = dir.path().join("t/0/00000000000000000000.log");
        let mut bytes = std::fs::read(&segment).unwrap();
        let length = bytes.len();
        bytes[30] ^= 0xff;
        std::fs::write(&segment, &bytes).unwrap();
        let err = EmbeddedLog::open(dir.path(), config(1)).err().expect("the log opened over damage").to_string();
        assert!(err.contains("00000000000000000000.log: corrupt record at byte 0: checksum mismatch"), "{err}");
        assert!(err.contains("intact records follow"), "{err}");
        assert_eq!(std::fs::read(&segment).unwrap().len(), length, "the segment was cut");
    }

    #[test]
    fn retention_drops_old_segments_and_reads_before_the_start_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(
            dir.path(),
            LogConfig { segment_bytes: 1_000, retention_bytes: Some(3_000), ..config(1) },
        )
        .unwrap();
        for i in 0..200 {
            log.append("t", vec![event(i, None)]).unwrap();
        }
        let range = log.ranges("t").unwrap()[0];
        assert!(range.start > 0 && range.end == 200, "{range:?}");
        let err = log.read("t", 0, 0, 100).unwrap_err().to_string();
        assert!(err.contains(&format!("offset 0 is outside t/0, which holds offsets {}..200", range.start)), "{err}");
        assert_eq!(read_all_from(&log, range.start).len() as u64, 200 - range.start);
    }

    fn read_all_from(log: &EmbeddedLog, from: u64) -> Vec<Event> {
        let mut out: Vec<Event> = Vec::new();
        let mut next = from;
        loop {
            let batch = log.read("t", 0, next, 1000).unwrap();
            let Some(last) = batch.last() else { return out };
            next = last.position.offset + 1;
            out.extend(batch);
        }
    }

    #[test]
    fn bad_topic_names_and_oversized_records_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), config(1)).unwrap();
        assert!(log.append("../x", vec![event(0, None)]).unwrap_err().to_string().contains("invalid topic name"));
        let mut big = event(1, None);
        big.payload = vec![b'x'; MAX_RECORD_BYTES + 1];
        let err = log.append("t", vec![event(0, None), big]).unwrap_err().to_string();
        assert!(err.contains("event 1 of the batch"), "{err}");
        assert_eq!(log.ranges("t").unwrap()[0].end, 0);
        assert!(read_all(&log, "t", 0).is_empty());
        // Across partitions too: a refused event in one partition writes nothing to the others.
        let wide = EmbeddedLog::open(&dir.path().join("wide"), config(4)).unwrap();
        let mut batch: Vec<Event> = (0..50).map(|i| event(i, Some(&format!("k{i}")))).collect();
        batch[49].payload = vec![b'x'; MAX_RECORD_BYTES + 1];
        assert!(wide.append("w", batch).is_err());
        assert!(wide.ranges("w").unwrap().iter().all(|r| r.end == 0));
    }

    #[test]
    fn the_size_check_matches_the_encoding() {
        let mut buf = Vec::new();
        let e = event(7, Some("key"));
        encode_frame(&mut buf, &e, 0, 0, "t", 0);
        assert_eq!(buf.len() - FRAME_HEADER, encoded_len(&e));
    }
}
