//! # weir-kafka
//!
//! Kafka / Redpanda as a [`Source`] (and consumer-group [`GroupMember`]) and an [`EventSink`]:
//! the only crate that depends on rdkafka. Its public API speaks `weir-core` types and its own
//! [`KafkaConfig`]; no rdkafka type leaves it.
//!
//! The consumer joins a group and subscribes to the plugins' topics. When the group assigns it
//! partitions, each one starts at the later of weir's own checkpointed position (the lowest of
//! the plugins that read it) and the group's committed offset — later, because another member may
//! have read on since this one last held the partition; a partition nobody has read starts at
//! `start` (earliest or latest). After each checkpoint the checkpointed positions are committed
//! to the group, so standard lag tools see them.
//!
//! Revocation is a hand-over: the rebalance callback only records which partitions go (and polls
//! stop returning events); the ingest loop finishes the batch on hand, writes a checkpoint, and
//! calls [`GroupMember::hand_over`], which commits that checkpoint's positions synchronously and only
//! then unassigns. librdkafka lets the group wait for that unassign (within the poll interval), so
//! the next owner starts exactly where this one stopped: no event is applied by both.
//!
//! Messages map to events by the CloudEvents Kafka binding (`ce_id`, `ce_type`, `ce_source`,
//! `ce_time`, `content-type`, plus `correlation_id` / `causation_id`); a message without `ce_type`
//! is read as plain JSON whose `type_field` and `id_field` give the type and id.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Timestamp};
use serde::{Deserialize, Serialize};

use weir_core::event::{Event, Position, PositionMap, StartAt};
use weir_core::source::{EventSink, GroupMember, PartitionEnd, Result, Source, SourceError};

/// Where a partition weir has never read starts, when the group has no committed offset either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartPosition {
    /// The oldest event still held.
    Earliest,
    /// Only events written from now on.
    Latest,
}

/// `[kafka]`: present means Kafka is the source (instead of the embedded log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Consumer group.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Start of a partition without weir or group positions.
    #[serde(default = "default_start")]
    pub start: StartPosition,
    /// Group session timeout; lower means faster rebalances after a member dies.
    #[serde(default)]
    pub session_timeout_ms: Option<u64>,
    /// For plain JSON messages (no `ce_type` header): the payload field holding the event type.
    #[serde(default = "default_type_field")]
    pub type_field: String,
    /// For plain JSON messages: the payload field holding the event id.
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// Produce with the idempotent producer (no duplicates from producer retries).
    #[serde(default = "default_true")]
    pub idempotent_producer: bool,
    /// Any other librdkafka setting, passed as is (security.protocol, sasl.*, ssl.*, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_group() -> String {
    "weir".into()
}
fn default_start() -> StartPosition {
    StartPosition::Earliest
}
fn default_type_field() -> String {
    "type".into()
}
fn default_id_field() -> String {
    "id".into()
}
fn default_true() -> bool {
    true
}

fn kafka_error(context: &str, e: KafkaError) -> SourceError {
    SourceError::Kafka(format!("{context}: {e}"))
}

/// What the consumer's callbacks share with the source.
#[derive(Default)]
struct Shared {
    /// Next offset per partition that weir has read before (from its checkpoint or this run).
    known: PositionMap,
    /// Positions in the latest durable checkpoint, safe to commit.
    checkpointed: PositionMap,
    /// The last client error, until a message arrives.
    last_error: Option<String>,
    /// Set by a rebalance; taken by the source.
    rebalanced: bool,
    /// Partitions revoked by the group and not yet handed over.
    revoking: Option<Vec<(String, i32)>>,
    /// Where assigned partitions start (the later of weir's and the group's position), for the
    /// pipeline to raise its plugins' positions to; taken by [`GroupMember::take_floors`].
    floors: PositionMap,
    /// The consumer is closing: revocations are handed over at once (the final checkpoint is
    /// already written).
    closing: bool,
}

impl Shared {
    /// Commit the checkpointed positions of `partitions` synchronously (or `positions` if given).
    fn commit_handover<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        partitions: &[(String, i32)],
        positions: Option<&PositionMap>,
    ) {
        let positions = positions.unwrap_or(&self.checkpointed);
        let mut commit = TopicPartitionList::new();
        for (topic, partition) in partitions {
            if let Some(next) = positions.get(&(topic.clone(), *partition as u32)) {
                let _ = commit.add_partition_offset(topic, *partition, Offset::Offset(*next as i64));
            }
        }
        if commit.count() > 0
            && let Err(e) = consumer.commit(&commit, CommitMode::Sync)
        {
            tracing::warn!(error = %e, "kafka: committing the positions of revoked partitions failed");
        }
    }
}

/// Give `partitions` back to the group (after their positions are committed).
fn unassign<C: ConsumerContext>(consumer: &BaseConsumer<C>, partitions: &[(String, i32)]) {
    let result = match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => {
            let mut list = TopicPartitionList::new();
            for (topic, partition) in partitions {
                list.add_partition(topic, *partition);
            }
            consumer.incremental_unassign(&list)
        }
        _ => consumer.unassign(),
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "kafka: unassigning partitions failed");
    }
}

struct GroupContext {
    shared: Arc<Mutex<Shared>>,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
        if let Ok(mut shared) = self.shared.lock() {
            shared.last_error = Some(format!("{error}: {reason}"));
        }
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.rebalanced = true;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: Vec<(String, i32)> =
                    tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
                // Another member may have read on since this one last held a partition: start at
                // the later of weir's own position and the group's committed offset.
                let committed = match consumer.committed_offsets(tpl.clone(), Duration::from_secs(5)) {
                    Ok(list) => Some(list),
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka: reading the group's committed offsets failed; starting at weir's own positions");
                        None
                    }
                };
                let committed_at = |topic: &str, partition: i32| {
                    committed
                        .as_ref()
                        .and_then(|c| c.find_partition(topic, partition))
                        .and_then(|e| e.offset().to_raw())
                        .filter(|o| *o >= 0)
                        .map(|o| o as u64)
                };
                let mut starts = Vec::new();
                for (topic, partition) in &partitions {
                    let key = (topic.clone(), *partition as u32);
                    let own = shared.known.get(&key).copied();
                    let group = committed_at(topic, *partition);
                    if let Some(own) = own {
                        let next = own.max(group.unwrap_or(0));
                        let _ = tpl.set_partition_offset(topic, *partition, Offset::Offset(next as i64));
                        starts.push((topic.clone(), *partition, next));
                    }
                    // Events before the group's position were applied by this member or another:
                    // no plugin here applies them again, and no commit goes below it.
                    if let Some(group) = group {
                        let floor = shared.floors.entry(key).or_insert(0);
                        *floor = (*floor).max(group);
                    }
                }
                tracing::info!(?partitions, ?starts, "kafka: partitions assigned");
                let result = match consumer.rebalance_protocol() {
                    RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
                    _ => consumer.assign(tpl),
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "kafka: assigning partitions failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions: Vec<(String, i32)> =
                    tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
                tracing::info!(?partitions, "kafka: partitions revoked");
                if shared.closing {
                    shared.commit_handover(consumer, &partitions, None);
                    unassign(consumer, &partitions);
                } else {
                    // Handed over by the ingest loop once its work on them is checkpointed.
                    shared.revoking.get_or_insert_with(Vec::new).extend(partitions);
                }
            }
            other => {
                tracing::error!(error = ?other, "kafka: rebalance failed; giving the assignment up");
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "kafka: unassigning partitions failed");
                }
            }
        }
    }
}

/// A consumer-group member reading the plugins' topics.
pub struct KafkaSource {
    consumer: BaseConsumer<GroupContext>,
    /// A client with no partitions of its own, for partition ends: the consumer's own requests
    /// wait behind its long-polling fetches.
    meta: BaseConsumer,
    shared: Arc<Mutex<Shared>>,
    config: KafkaConfig,
    ends: Vec<PartitionEnd>,
    ends_read: Option<Instant>,
    /// Topics to subscribe to at the first poll: joining the group only once the caller polls
    /// means no rebalance waits on a member that is still finding its plugins' start positions.
    unsubscribed: Vec<String>,
}

impl KafkaSource {
    /// A member of the group for `topics`; it joins at the first poll. `known` holds the positions
    /// weir has checkpointed (next offset per partition).
    pub fn new(config: &KafkaConfig, topics: &[String], known: PositionMap) -> Result<Self> {
        let shared = Arc::new(Mutex::new(Shared { checkpointed: known.clone(), known, ..Shared::default() }));
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "auto.offset.reset",
                match config.start {
                    StartPosition::Earliest => "earliest",
                    StartPosition::Latest => "latest",
                },
            );
        if let Some(ms) = config.session_timeout_ms {
            client.set("session.timeout.ms", ms.to_string());
        }
        for (key, value) in &config.properties {
            client.set(key, value);
        }
        let consumer: BaseConsumer<GroupContext> = client
            .create_with_context(GroupContext { shared: shared.clone() })
            .map_err(|e| kafka_error("creating the consumer", e))?;
        let mut meta = ClientConfig::new();
        meta.set("bootstrap.servers", &config.brokers).set("group.id", format!("{}-meta", config.group_id));
        for (key, value) in &config.properties {
            meta.set(key, value);
        }
        let meta: BaseConsumer = meta.create().map_err(|e| kafka_error("creating the metadata client", e))?;
        Ok(KafkaSource {
            consumer,
            meta,
            shared,
            config: config.clone(),
            ends: Vec::new(),
            ends_read: None,
            unsubscribed: topics.to_vec(),
        })
    }
}

/// A record as an event: CloudEvents headers map to fields; a plain JSON record's type and id
/// come from its payload's fields named in `config`.
fn to_event(config: &KafkaConfig, message: &BorrowedMessage<'_>) -> Event {
    let position = Position {
        topic: message.topic().to_string(),
        partition: message.partition().max(0) as u32,
        offset: message.offset().max(0) as u64,
    };
    let payload = message.payload().unwrap_or_default().to_vec();
    let mut event = Event {
        key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        content_type: "application/json".into(),
        time_us: match message.timestamp() {
            Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) => record_time_us(ms),
            Timestamp::NotAvailable => 0,
        },
        ..Event::default()
    };
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            let value = header.value.unwrap_or_default();
            let text = || String::from_utf8_lossy(value).into_owned();
            match header.key {
                "ce_id" => event.id = text(),
                "ce_type" => event.event_type = text(),
                "ce_time" => {
                    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(&text()) {
                        event.time_us = time.timestamp_micros();
                    }
                }
                "content-type" | "ce_datacontenttype" => event.content_type = text(),
                "correlation_id" | "ce_correlationid" => event.correlation_id = Some(text()),
                "causation_id" | "ce_causationid" => event.causation_id = Some(text()),
                _ => event.headers.push((header.key.to_string(), value.to_vec())),
            }
        }
    }
    if event.event_type.is_empty() || event.id.is_empty() {
        // Plain JSON: take the type and id from the payload's fields.
        let json: Option<serde_json::Value> = serde_json::from_slice(&payload).ok();
        let field = |name: &str| {
            json.as_ref().and_then(|j| j.get(name)).and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        };
        if event.event_type.is_empty() {
            event.event_type = field(&config.type_field).unwrap_or_else(|| position.topic.clone());
        }
        if event.id.is_empty() {
            event.id = field(&config.id_field)
                .unwrap_or_else(|| format!("{}-{}-{}", position.topic, position.partition, position.offset));
        }
    }
    event.payload = payload;
    event.position = position;
    event
}

impl Source for KafkaSource {
    fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        if !self.unsubscribed.is_empty() {
            let names: Vec<&str> = self.unsubscribed.iter().map(String::as_str).collect();
            self.consumer.subscribe(&names).map_err(|e| kafka_error("subscribing", e))?;
            self.unsubscribed.clear();
        }
        if self.revoking() {
            return Ok(events);
        }
        let deadline = Instant::now() + wait;
        while events.len() < max {
            let timeout =
                if events.is_empty() { deadline.saturating_duration_since(Instant::now()) } else { Duration::ZERO };
            let polled = self.consumer.poll(timeout);
            if polled.is_none() && self.revoking() {
                // A rebalance revoked partitions: stop here so the caller can hand them over.
                break;
            }
            match polled {
                Some(Ok(message)) => events.push(to_event(&self.config, &message)),
                Some(Err(e)) => {
                    if events.is_empty() {
                        return Err(kafka_error("consuming", e));
                    }
                    break;
                }
                None => break,
            }
        }
        if !events.is_empty() {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            shared.last_error = None;
            // One map update per partition seen, not per event.
            let mut highest: Vec<(&str, u32, u64)> = Vec::new();
            for event in &events {
                let p = &event.position;
                match highest.iter_mut().find(|(t, n, _)| *n == p.partition && *t == p.topic) {
                    Some(entry) => entry.2 = entry.2.max(p.offset + 1),
                    None => highest.push((p.topic.as_str(), p.partition, p.offset + 1)),
                }
            }
            for (topic, partition, end) in highest {
                let next = shared.known.entry((topic.to_string(), partition)).or_insert(0);
                *next = (*next).max(end);
            }
        }
        Ok(events)
    }

    fn ends(&mut self) -> Vec<PartitionEnd> {
        let rebalanced = std::mem::take(&mut self.shared.lock().unwrap_or_else(|e| e.into_inner()).rebalanced);
        if !rebalanced && self.ends_read.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return self.ends.clone();
        }
        let mut ends = Vec::new();
        for (topic, partition) in self.assignment() {
            if let Ok((_, high)) = self.meta.fetch_watermarks(&topic, partition as i32, Duration::from_millis(500)) {
                ends.push(PartitionEnd { topic, partition, end: high.max(0) as u64 });
            }
        }
        self.ends = ends;
        self.ends_read = Some(Instant::now());
        self.ends.clone()
    }

    fn checkpointed(&mut self, positions: &PositionMap) -> Result<()> {
        let assigned = self.assignment();
        let mut commit = TopicPartitionList::new();
        for ((topic, partition), next) in positions {
            if assigned.iter().any(|(t, p)| t == topic && p == partition) {
                commit
                    .add_partition_offset(topic, *partition as i32, Offset::Offset(*next as i64))
                    .map_err(|e| kafka_error("committing", e))?;
            }
        }
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).checkpointed.clone_from(positions);
        if commit.count() > 0 {
            self.consumer.commit(&commit, CommitMode::Async).map_err(|e| kafka_error("committing", e))?;
        }
        Ok(())
    }

    fn assignment(&self) -> Vec<(String, u32)> {
        self.consumer
            .assignment()
            .map(|tpl| tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition().max(0) as u32)).collect())
            .unwrap_or_default()
    }

    fn start_offsets(&mut self, topic: &str, start: StartAt) -> Result<Vec<(u32, u64)>> {
        let timeout = Duration::from_secs(5);
        let metadata =
            self.consumer.fetch_metadata(Some(topic), timeout).map_err(|e| kafka_error("reading metadata", e))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(SourceError::Kafka(format!(
                "topic {topic} has no partitions yet; cannot find where {start} is"
            )));
        }
        let mut watermarks = Vec::with_capacity(partitions.len());
        for &partition in &partitions {
            let (low, high) = self
                .consumer
                .fetch_watermarks(topic, partition, timeout)
                .map_err(|e| kafka_error("reading watermarks", e))?;
            watermarks.push((partition, low.max(0) as u64, high.max(0) as u64));
        }
        let at_time = match start {
            StartAt::Time(us) => {
                let mut list = TopicPartitionList::new();
                for &partition in &partitions {
                    list.add_partition_offset(topic, partition, Offset::Offset(us.div_euclid(1000).max(0)))
                        .map_err(|e| kafka_error("looking up offsets by time", e))?;
                }
                Some(
                    self.consumer
                        .offsets_for_times(list, timeout)
                        .map_err(|e| kafka_error("looking up offsets by time", e))?,
                )
            }
            _ => None,
        };
        Ok(watermarks
            .into_iter()
            .map(|(partition, low, high)| {
                let offset = match start {
                    StartAt::Earliest => low,
                    StartAt::Latest => high,
                    StartAt::Time(_) => at_time
                        .as_ref()
                        .and_then(|list| list.find_partition(topic, partition))
                        .and_then(|e| e.offset().to_raw())
                        .filter(|o| *o >= 0)
                        .map_or(high, |o| o as u64),
                };
                (partition as u32, offset)
            })
            .collect())
    }

    fn start_from(&mut self, positions: &PositionMap) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        for (key, next) in positions {
            shared.known.insert(key.clone(), *next);
        }
    }

    fn group(&mut self) -> Option<&mut dyn GroupMember> {
        Some(self)
    }

    fn describe(&self) -> String {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = format!(
            "kafka {} group {} ({} partitions assigned)",
            self.config.brokers,
            self.config.group_id,
            self.assignment().len()
        );
        if let Some(error) = &shared.last_error {
            text.push_str(&format!("; last error: {error}"));
        }
        text
    }
}

impl GroupMember for KafkaSource {
    fn take_floors(&mut self) -> PositionMap {
        std::mem::take(&mut self.shared.lock().unwrap_or_else(|e| e.into_inner()).floors)
    }

    fn revoking(&self) -> bool {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).revoking.is_some()
    }

    fn hand_over(&mut self, positions: Option<&PositionMap>) -> Result<()> {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(partitions) = shared.revoking.take() {
            shared.commit_handover(&self.consumer, &partitions, positions);
            if let Some(positions) = positions {
                shared.checkpointed.clone_from(positions);
            }
            unassign(&self.consumer, &partitions);
            tracing::info!(?partitions, "kafka: revoked partitions handed over");
        }
        Ok(())
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Closing the consumer revokes everything; hand over at once, at the last checkpoint.
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.closing = true;
        if let Some(partitions) = shared.revoking.take() {
            shared.commit_handover(&self.consumer, &partitions, None);
            unassign(&self.consumer, &partitions);
        }
    }
}

/// Writes events to Kafka, one message per event in the CloudEvents binary binding.
pub struct KafkaSink {
    producer: FutureProducer,
    config: KafkaConfig,
    /// The producer's `message.max.bytes`: the largest record it sends.
    max_record_bytes: usize,
    /// A consumer outside any group, assigned the partition each [`EventSink::read`] asks for.
    reader: Mutex<Option<BaseConsumer>>,
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Bytes a record carries beyond its key, payload and the event's headers: the CloudEvents
/// headers weir adds (names and values), the record's own framing, counted generously.
const RECORD_OVERHEAD: usize = 256;

/// How long [`EventSink::read`] waits for the next record before taking the partition's end as
/// reached. (It does not trust the high watermark: some brokers report it short of the last
/// records of a batch.)
const READ_IDLE: Duration = Duration::from_millis(500);

impl KafkaSink {
    /// A producer to the configured brokers.
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("enable.idempotence", if config.idempotent_producer { "true" } else { "false" })
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000");
        for (key, value) in &config.properties {
            client.set(key, value);
        }
        let producer = client.create().map_err(|e| kafka_error("creating the producer", e))?;
        let max_record_bytes = config
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
        Ok(KafkaSink { producer, config: config.clone(), max_record_bytes, reader: Mutex::new(None) })
    }

    fn reader(&self) -> Result<std::sync::MutexGuard<'_, Option<BaseConsumer>>> {
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        if reader.is_none() {
            let mut client = ClientConfig::new();
            client
                .set("bootstrap.servers", &self.config.brokers)
                .set("group.id", format!("{}-reader", self.config.group_id))
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "false")
                .set("fetch.wait.max.ms", "100");
            for (key, value) in &self.config.properties {
                client.set(key, value);
            }
            *reader = Some(client.create().map_err(|e| kafka_error("creating a reader", e))?);
        }
        Ok(reader)
    }
}

/// Bytes one record of `event` takes against `message.max.bytes`, counted generously.
fn record_size(event: &Event) -> usize {
    RECORD_OVERHEAD
        + event.id.len()
        + event.event_type.len()
        + event.content_type.len()
        + event.key.as_ref().map_or(0, String::len)
        + event.correlation_id.as_ref().map_or(0, String::len)
        + event.causation_id.as_ref().map_or(0, String::len)
        + event.headers.iter().map(|(n, v)| n.len() + v.len() + 8).sum::<usize>()
        + event.payload.len()
}

impl EventSink for KafkaSink {
    fn append(&self, topic: &str, events: Vec<Event>) -> Result<Vec<Position>> {
        let mut deliveries = Vec::with_capacity(events.len());
        for event in &events {
            let time = chrono::DateTime::from_timestamp_micros(if event.time_us == 0 {
                chrono::Utc::now().timestamp_micros()
            } else {
                event.time_us
            })
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
            let id = if event.id.is_empty() { uuid_like() } else { event.id.clone() };
            let mut headers = OwnedHeaders::new()
                .insert(Header { key: "ce_specversion", value: Some("1.0") })
                .insert(Header { key: "ce_id", value: Some(id.as_str()) })
                .insert(Header { key: "ce_type", value: Some(event.event_type.as_str()) })
                .insert(Header { key: "ce_source", value: Some("weir") })
                .insert(Header { key: "ce_time", value: Some(time.as_str()) })
                .insert(Header { key: "content-type", value: Some(event.content_type.as_str()) });
            if let Some(c) = &event.correlation_id {
                headers = headers.insert(Header { key: "correlation_id", value: Some(c.as_str()) });
            }
            if let Some(c) = &event.causation_id {
                headers = headers.insert(Header { key: "causation_id", value: Some(c.as_str()) });
            }
            for (name, value) in &event.headers {
                headers = headers.insert(Header { key: name.as_str(), value: Some(value.as_slice()) });
            }
            let mut record = FutureRecord::to(topic).payload(&event.payload).headers(headers);
            if let Some(key) = &event.key {
                record = record.key(key.as_str());
            }
            let delivery = self.producer.send_result(record).map_err(|(e, _)| kafka_error("producing", e))?;
            deliveries.push(delivery);
        }
        let mut positions = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match futures::executor::block_on(delivery) {
                Ok(Ok(done)) => positions.push(Position {
                    topic: topic.to_string(),
                    partition: done.partition.max(0) as u32,
                    offset: done.offset.max(0) as u64,
                }),
                Ok(Err((e, _))) => return Err(kafka_error("delivering", e)),
                Err(_) => {
                    return Err(SourceError::Kafka("the producer was dropped before delivery".into()));
                }
            }
        }
        Ok(positions)
    }

    fn check(&self, topic: &str, event: &Event) -> Result<()> {
        if !weir_core::event::valid_topic_name(topic) {
            return Err(SourceError::Invalid(format!(
                "invalid topic name {topic:?}: use 1 to 249 characters of a-z, A-Z, 0-9, '.', '_', '-'"
            )));
        }
        let bytes = record_size(event);
        if bytes > self.max_record_bytes {
            return Err(SourceError::TooLarge(format!(
                "a record of about {bytes} bytes (id, type, key, headers and payload) is over the producer's message.max.bytes of {}",
                self.max_record_bytes
            )));
        }
        Ok(())
    }

    fn ends(&self, topic: &str) -> Result<Vec<(u32, u64)>> {
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| kafka_error("reading topic metadata", e))?;
        let mut ends = Vec::new();
        for t in metadata.topics().iter().filter(|t| t.name() == topic && t.error().is_none()) {
            for p in t.partitions() {
                let (_, high) = self
                    .producer
                    .client()
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                    .map_err(|e| kafka_error("reading a partition's end", e))?;
                ends.push((p.id().max(0) as u32, high.max(0) as u64));
            }
        }
        ends.sort_unstable();
        Ok(ends)
    }

    fn read(&self, topic: &str, partition: u32, offset: u64, max_bytes: usize) -> Result<Vec<Event>> {
        let guard = self.reader()?;
        let Some(reader) = guard.as_ref() else { return Ok(Vec::new()) };
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition as i32, Offset::Offset(offset as i64))
            .map_err(|e| kafka_error("assigning a partition to read", e))?;
        reader.assign(&assignment).map_err(|e| kafka_error("assigning a partition to read", e))?;
        let mut events = Vec::new();
        let mut bytes = 0;
        while bytes < max_bytes {
            match reader.poll(READ_IDLE) {
                None => break,
                Some(Ok(message)) => {
                    if message.offset() < offset as i64 {
                        continue;
                    }
                    let event = to_event(&self.config, &message);
                    bytes += record_size(&event);
                    events.push(event);
                }
                Some(Err(e)) => return Err(kafka_error("reading", e)),
            }
        }
        // No fetching in the background until the next read.
        let _ = reader.unassign();
        Ok(events)
    }
}

/// An id for an event produced without one: time and a process-wide counter.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = chrono::Utc::now().timestamp_micros();
    format!("weir-{now:x}-{:x}-{:x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A record's timestamp (milliseconds, set by any producer) in microseconds, saturating where it
/// does not fit.
fn record_time_us(ms: i64) -> i64 {
    ms.saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::record_time_us;

    /// Any producer sets the timestamp; one near `i64::MAX` must not overflow the conversion.
    #[test]
    fn record_timestamps_at_the_edges_do_not_overflow() {
        assert_eq!(record_time_us(1_700_000_000_123), 1_700_000_000_123_000);
        assert_eq!(record_time_us(i64::MAX), i64::MAX);
        assert_eq!(record_time_us(i64::MIN), i64::MIN);
    }
}
