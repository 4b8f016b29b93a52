//! Read-model tables: the rows projections produce, kept as Arrow record batches with a key index.
//!
//! Layout of a [`ReadModelTable`]: sealed, immutable *segments* (one `RecordBatch` each, with a
//! live-row mask) plus a *tail* of rows not yet sealed. A key index maps each primary key to where
//! its live row is. An upsert appends to the tail and marks the old row dead; a delete marks it
//! dead. Publishing a snapshot seals the tail into a new segment and hands out the live rows of each
//! segment (a segment without dead rows is shared as is; one with dead rows is filtered once per
//! change and cached). Compaction rewrites segments that are mostly dead and merges small ones, so
//! neither ingest nor publishing ever copies the whole table.
//!
//! Invariant: a snapshot of a [`ReadModel`] holds every table of one projection at the same event
//! boundary; no event is ever half applied in it.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use std::path::Path;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder, Float64Array, Float64Builder, Int64Array,
    Int64Builder, StringArray, StringBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;

use weir_core::durable;
use weir_core::event::PositionMap;
use weir_core::row::{ColumnType, RowChange, RowChanges, TableSchema, Value};

/// Rows the tail may hold before it is sealed even without a publish.
const MAX_TAIL_ROWS: usize = 64 * 1024;
/// Segments smaller than this are merged together once there are [`MAX_SMALL_SEGMENTS`] of them.
const SMALL_SEGMENT_ROWS: usize = 16 * 1024;
const MAX_SMALL_SEGMENTS: usize = 8;

/// Why a change could not be applied. The change is not applied; nothing else is lost.
#[derive(Debug, thiserror::Error)]
pub enum ReadModelError {
    /// The table is not part of this read model.
    #[error("table {table} is not declared by plugin {plugin}")]
    UnknownTable {
        /// Plugin.
        plugin: String,
        /// Table.
        table: String,
    },
    /// A table file could not be written or read (names the file).
    #[error(transparent)]
    Io(#[from] durable::IoError),
    /// A table file holds something else than a table of this read model (names the file).
    #[error("table file {path} is not valid: {message}")]
    InvalidTableFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Arrow refused to build a batch (a bug, reported rather than a crash).
    #[error("table {table}: {message}")]
    Arrow {
        /// Table.
        table: String,
        /// Arrow's error.
        message: String,
    },
}

/// A `Result` with a [`ReadModelError`].
pub type Result<T, E = ReadModelError> = std::result::Result<T, E>;

/// The Arrow schema of a declared table. Timestamps are microseconds, UTC.
pub(crate) fn arrow_schema(table: &TableSchema) -> SchemaRef {
    let fields: Vec<Field> = table
        .columns
        .iter()
        .map(|c| {
            let data_type = match c.kind {
                ColumnType::String => DataType::Utf8,
                ColumnType::Int64 => DataType::Int64,
                ColumnType::Float64 => DataType::Float64,
                ColumnType::Bool => DataType::Boolean,
                ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                ColumnType::Bytes => DataType::Binary,
            };
            Field::new(&c.name, data_type, c.nullable)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Where a key's live row is: a segment and a row in it. The tail has the id its segment will
/// have when it is sealed, so sealing moves no index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RowLocation {
    segment: u32,
    row: u32,
}

/// Bytes of an encoded key kept inline in the index entry; longer keys are boxed.
const INLINE_KEY: usize = 14;

/// An encoded key as the index holds it: 16 bytes, the key itself inline when it fits (an
/// orders id or an account id does), so looking a key up reads no other memory and most keys
/// cost no allocation of their own. An index entry (key and location) is 24 bytes.
#[derive(Clone)]
enum IndexKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Boxed(Box<Box<[u8]>>),
}

impl IndexKey {
    fn new(key: &[u8]) -> Self {
        if key.len() <= INLINE_KEY {
            let mut bytes = [0u8; INLINE_KEY];
            bytes[..key.len()].copy_from_slice(key);
            IndexKey::Inline { len: key.len() as u8, bytes }
        } else {
            IndexKey::Boxed(Box::new(Box::from(key)))
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            IndexKey::Inline { len, bytes } => &bytes[..*len as usize],
            IndexKey::Boxed(bytes) => bytes,
        }
    }
}

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_bytes())
    }
}

/// Shards of the key index. A key's shard is one bit of its hash, so a restore fills the shards on
/// threads of their own.
const INDEX_SHARDS: usize = 2;

/// Below this many rows a restore indexes them on one thread.
const PARALLEL_INDEX_ROWS: usize = 16_384;

/// Every live row's encoded key and where the row is. Each operation hashes its key once, with
/// a per-process random seed (a plugin cannot pick keys that collide).
#[derive(Debug, Default)]
struct KeyIndex {
    hasher: std::hash::RandomState,
    shards: [IndexShard; INDEX_SHARDS],
}

type IndexShard = hashbrown::HashTable<(IndexKey, RowLocation)>;

impl KeyIndex {
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Bit 48 of the hash: the table inside a shard probes by the low bits and tags entries with
    /// the top seven, so neither is constant within a shard.
    fn shard_of(hash: u64) -> usize {
        (hash >> 48) as usize % INDEX_SHARDS
    }

    fn len(&self) -> usize {
        self.shards.iter().map(IndexShard::len).sum()
    }

    /// Room for `rows` keys spread over the shards, with some slack for an uneven spread.
    fn reserve(&mut self, rows: usize) {
        let per_shard = rows / INDEX_SHARDS + rows / 64 + 16;
        let hasher = &self.hasher;
        for shard in &mut self.shards {
            shard.reserve(per_shard, |(key, _)| hasher.hash_one(key.as_bytes()));
        }
    }

    fn get_mut(&mut self, key: &[u8]) -> Option<&mut RowLocation> {
        let hash = self.hash(key);
        self.shards[Self::shard_of(hash)].find_mut(hash, |(k, _)| k.as_bytes() == key).map(|(_, at)| at)
    }

    fn remove(&mut self, key: &[u8]) -> Option<RowLocation> {
        let hash = self.hash(key);
        let entry = self.shards[Self::shard_of(hash)].find_entry(hash, |(k, _)| k.as_bytes() == key).ok()?;
        Some(entry.remove().0.1)
    }

    /// Point `key` at `at`; returns where it pointed before, if it was in the index.
    fn locate(&mut self, key: &[u8], at: RowLocation) -> Option<RowLocation> {
        let hash = self.hash(key);
        locate_in(&mut self.shards[Self::shard_of(hash)], &self.hasher, hash, key, at)
    }
}

/// [`KeyIndex::locate`] within the shard `hash` picks: one lookup, and the key is copied (boxed
/// if long) only when it is new.
fn locate_in(
    shard: &mut IndexShard,
    hasher: &std::hash::RandomState,
    hash: u64,
    key: &[u8],
    at: RowLocation,
) -> Option<RowLocation> {
    match shard.entry(hash, |(k, _)| k.as_bytes() == key, |(k, _)| hasher.hash_one(k.as_bytes())) {
        hashbrown::hash_table::Entry::Occupied(mut entry) => Some(std::mem::replace(&mut entry.get_mut().1, at)),
        hashbrown::hash_table::Entry::Vacant(entry) => {
            entry.insert((IndexKey::new(key), at));
            None
        }
    }
}

/// A sealed batch of rows. Its rows' keys are not kept beside it: the index holds each key once,
/// and compaction reads the keys it needs back from the batch's columns.
#[derive(Debug)]
struct Segment {
    batch: RecordBatch,
    live: Vec<bool>,
    live_count: usize,
    /// The live rows, cached until the next row of this segment dies.
    filtered: Option<RecordBatch>,
}

impl Segment {
    fn new(batch: RecordBatch) -> Self {
        let n = batch.num_rows();
        Segment { batch, live: vec![true; n], live_count: n, filtered: None }
    }

    fn live_batch(&mut self) -> Result<RecordBatch, ArrowError> {
        if self.live_count == self.live.len() {
            return Ok(self.batch.clone());
        }
        if let Some(filtered) = &self.filtered {
            return Ok(filtered.clone());
        }
        let mask = BooleanArray::from(self.live.clone());
        let filtered = filter_record_batch(&self.batch, &mask)?;
        self.filtered = Some(filtered.clone());
        Ok(filtered)
    }

    fn kill(&mut self, row: u32) {
        if let Some(live) = self.live.get_mut(row as usize)
            && *live
        {
            *live = false;
            self.live_count -= 1;
            self.filtered = None;
        }
    }
}

/// The live rows of one table at one instant.
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    /// Table name.
    pub name: String,
    /// Arrow schema.
    pub(crate) schema: SchemaRef,
    /// The rows, in batches.
    pub(crate) batches: Vec<RecordBatch>,
    /// Total rows.
    pub rows: usize,
}

/// One read-model table with a primary-key index.
#[derive(Debug)]
pub struct ReadModelTable {
    schema: TableSchema,
    arrow: SchemaRef,
    key_columns: Vec<usize>,
    /// Every live row's encoded key, and where the row is.
    index: KeyIndex,
    segments: BTreeMap<u32, Segment>,
    /// The next segment's id (wrapping: ids of live segments never meet again).
    next_segment: u32,
    /// The id the tail's segment will have.
    tail_segment: u32,
    tail: Vec<Vec<Value>>,
    tail_live: Vec<bool>,
    /// Where upserts and deletes encode their key (an update allocates nothing for it).
    key_buffer: Vec<u8>,
}

impl ReadModelTable {
    /// An empty table.
    pub fn new(schema: TableSchema) -> Self {
        let key_columns =
            schema.primary_key.iter().filter_map(|k| schema.columns.iter().position(|c| &c.name == k)).collect();
        ReadModelTable {
            arrow: arrow_schema(&schema),
            schema,
            key_columns,
            index: KeyIndex::default(),
            segments: BTreeMap::new(),
            next_segment: 1,
            tail_segment: 0,
            tail: Vec::new(),
            tail_live: Vec::new(),
            key_buffer: Vec::with_capacity(64),
        }
    }

    /// The declared schema.
    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    /// Live rows.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when the table has no row.
    pub fn is_empty(&self) -> bool {
        self.index.len() == 0
    }

    /// Insert or replace a row (values in column order, checked by [`RowChanges::check`]).
    fn upsert(&mut self, row: Vec<Value>) -> Result<()> {
        let mut key = std::mem::take(&mut self.key_buffer);
        key.clear();
        encode_key_into(&mut key, self.key_columns.iter().map(|&i| &row[i]));
        let at = RowLocation { segment: self.tail_segment, row: self.tail.len() as u32 };
        if let Some(old) = self.locate(&key, at) {
            self.kill_at(old);
        }
        self.key_buffer = key;
        self.tail.push(row);
        self.tail_live.push(true);
        if self.tail.len() >= MAX_TAIL_ROWS {
            self.seal()?;
        }
        Ok(())
    }

    /// Delete the row with this key (values in key order, checked), if there is one.
    fn delete(&mut self, key: &[Value]) -> Result<()> {
        let mut encoded = std::mem::take(&mut self.key_buffer);
        encoded.clear();
        encode_key_into(&mut encoded, key.iter());
        if let Some(old) = self.index.remove(encoded.as_slice()) {
            self.kill_at(old);
        }
        self.key_buffer = encoded;
        Ok(())
    }

    /// Point `key` at `at`; returns where it pointed before, if it was in the index.
    fn locate(&mut self, key: &[u8], at: RowLocation) -> Option<RowLocation> {
        self.index.locate(key, at)
    }

    fn kill_at(&mut self, location: RowLocation) {
        if location.segment == self.tail_segment {
            self.tail_live[location.row as usize] = false;
        } else if let Some(segment) = self.segments.get_mut(&location.segment) {
            segment.kill(location.row);
        }
    }

    /// Make the tail a segment, then compact. When every tail row is live they keep their
    /// places, so the index is already right; otherwise the replaced rows are left out and the
    /// live rows' index entries moved to their new places (so a snapshot never has to filter a
    /// new segment).
    fn seal(&mut self) -> Result<()> {
        let rows = std::mem::take(&mut self.tail);
        let live = std::mem::take(&mut self.tail_live);
        let live_rows = live.iter().filter(|l| **l).count();
        if live_rows > 0 {
            let id = self.tail_segment;
            let rows = if live_rows == rows.len() {
                rows
            } else {
                let rows: Vec<Vec<Value>> =
                    rows.into_iter().zip(live).filter(|(_, live)| *live).map(|(row, _)| row).collect();
                let mut key = std::mem::take(&mut self.key_buffer);
                for (n, row) in rows.iter().enumerate() {
                    key.clear();
                    encode_key_into(&mut key, self.key_columns.iter().map(|&i| &row[i]));
                    if let Some(location) = self.index.get_mut(key.as_slice()) {
                        *location = RowLocation { segment: id, row: n as u32 };
                    }
                }
                self.key_buffer = key;
                rows
            };
            let batch = self.build_batch(rows)?;
            self.segments.insert(id, Segment::new(batch));
            self.tail_segment = self.new_segment_id();
        }
        self.compact()
    }

    fn new_segment_id(&mut self) -> u32 {
        let id = self.next_segment;
        self.next_segment = self.next_segment.wrapping_add(1);
        id
    }

    /// Add `batch` as a segment, pointing the index at its rows (keys read from its columns).
    fn add_segment(&mut self, batch: RecordBatch) {
        let id = self.new_segment_id();
        let columns = KeyColumns::of(&batch, &self.key_columns, &self.schema);
        // The segment is in place first, so that a key twice in the batch (only in a damaged
        // file) leaves the later row live, as an upsert would.
        self.segments.insert(id, Segment::new(batch.clone()));
        let mut key = std::mem::take(&mut self.key_buffer);
        for row in 0..batch.num_rows() {
            key.clear();
            columns.encode_row(&mut key, row);
            if let Some(old) = self.locate(&key, RowLocation { segment: id, row: row as u32 }) {
                self.kill_at(old);
            }
        }
        self.key_buffer = key;
    }

    /// Add `batches` as segments, in order, and index their rows: each shard of the index on a
    /// thread of its own, each thread reading every key and keeping those of its shard, so the
    /// index ends as [`add_segment`](Self::add_segment) one batch after another would leave it.
    fn add_segments(&mut self, batches: Vec<RecordBatch>) {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows < PARALLEL_INDEX_ROWS {
            batches.into_iter().for_each(|batch| self.add_segment(batch));
            return;
        }
        let ids: Vec<u32> = batches.iter().map(|_| self.new_segment_id()).collect();
        let (key_columns, schema) = (&self.key_columns, &self.schema);
        let KeyIndex { hasher, shards } = &mut self.index;
        let hasher = &*hasher;
        let index_shard = |n: usize, shard: &mut IndexShard| {
            let (mut key, mut replaced) = (Vec::with_capacity(64), Vec::new());
            for (batch, &id) in batches.iter().zip(&ids) {
                let columns = KeyColumns::of(batch, key_columns, schema);
                for row in 0..batch.num_rows() {
                    key.clear();
                    columns.encode_row(&mut key, row);
                    let hash = hasher.hash_one(key.as_slice());
                    if KeyIndex::shard_of(hash) == n {
                        let at = RowLocation { segment: id, row: row as u32 };
                        replaced.extend(locate_in(shard, hasher, hash, &key, at));
                    }
                }
            }
            replaced
        };
        let replaced = std::thread::scope(|scope| {
            let (first, rest) = shards.split_at_mut(1);
            let others: Vec<_> =
                rest.iter_mut().enumerate().map(|(n, shard)| scope.spawn(move || index_shard(n + 1, shard))).collect();
            let mut replaced = index_shard(0, &mut first[0]);
            for other in others {
                replaced.extend(other.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
            }
            replaced
        });
        for (id, batch) in ids.into_iter().zip(batches) {
            self.segments.insert(id, Segment::new(batch));
        }
        replaced.into_iter().for_each(|old| self.kill_at(old));
    }

    /// Rewrite segments that are more than half dead; merge small ones once there are many.
    fn compact(&mut self) -> Result<()> {
        let arrow_error = |table: &str| {
            let table = table.to_string();
            move |source: ArrowError| ReadModelError::Arrow { table: table.clone(), message: source.to_string() }
        };
        let mostly_dead: Vec<u32> =
            self.segments.iter().filter(|(_, s)| s.live_count * 2 < s.live.len()).map(|(id, _)| *id).collect();
        let small: Vec<u32> = self
            .segments
            .iter()
            .filter(|(id, s)| s.live_count < SMALL_SEGMENT_ROWS && !mostly_dead.contains(id))
            .map(|(id, _)| *id)
            .collect();
        let mut groups: Vec<Vec<u32>> = mostly_dead.into_iter().map(|id| vec![id]).collect();
        if small.len() >= MAX_SMALL_SEGMENTS {
            groups.push(small);
        }
        for group in groups {
            let mut batches = Vec::new();
            for id in &group {
                if let Some(mut segment) = self.segments.remove(id) {
                    batches.push(segment.live_batch().map_err(arrow_error(&self.schema.name))?);
                }
            }
            let merged = concat_batches(&self.arrow, &batches).map_err(arrow_error(&self.schema.name))?;
            drop(batches);
            if merged.num_rows() > 0 {
                self.add_segment(merged);
            }
        }
        Ok(())
    }

    fn build_batch(&self, rows: Vec<Vec<Value>>) -> Result<RecordBatch> {
        let mut columns: Vec<ColumnBuilder> =
            self.schema.columns.iter().map(|c| ColumnBuilder::new(c.kind, rows.len())).collect();
        for row in rows {
            for (builder, value) in columns.iter_mut().zip(row) {
                builder.append(value);
            }
        }
        let columns: Vec<ArrayRef> = columns.into_iter().map(ColumnBuilder::finish).collect();
        RecordBatch::try_new(self.arrow.clone(), columns)
            .map_err(|source| ReadModelError::Arrow { table: self.schema.name.clone(), message: source.to_string() })
    }

    /// Seal the tail and return the live rows.
    pub fn snapshot(&mut self) -> Result<TableSnapshot> {
        self.seal()?;
        let mut batches = Vec::with_capacity(self.segments.len());
        for segment in self.segments.values_mut() {
            let batch = segment.live_batch().map_err(|source| ReadModelError::Arrow {
                table: self.schema.name.clone(),
                message: source.to_string(),
            })?;
            if batch.num_rows() > 0 {
                batches.push(batch);
            }
        }
        Ok(TableSnapshot {
            name: self.schema.name.clone(),
            schema: self.arrow.clone(),
            rows: self.index.len(),
            batches,
        })
    }

    /// Bytes held by the table's Arrow buffers (segments and cached filtered copies).
    pub fn arrow_bytes(&self) -> usize {
        self.segments
            .values()
            .map(|s| s.batch.get_array_memory_size() + s.filtered.as_ref().map_or(0, |f| f.get_array_memory_size()))
            .sum()
    }
}

/// Bytes the snapshot's rows take as one tightly packed record batch: the yardstick for a
/// table's memory.
pub fn raw_arrow_bytes(table: &TableSnapshot) -> Result<usize> {
    let packed = concat_batches(&table.schema, &table.batches)
        .map_err(|source| ReadModelError::Arrow { table: table.name.clone(), message: source.to_string() })?;
    Ok(packed.get_array_memory_size())
}

/// One Arrow column being built from values already checked against its type (a value of
/// another type, which the check rules out, is appended as null).
enum ColumnBuilder {
    String(StringBuilder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Bool(BooleanBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Bytes(BinaryBuilder),
}

impl ColumnBuilder {
    fn new(kind: ColumnType, rows: usize) -> Self {
        match kind {
            ColumnType::String => ColumnBuilder::String(StringBuilder::with_capacity(rows, rows * 8)),
            ColumnType::Int64 => ColumnBuilder::Int64(Int64Builder::with_capacity(rows)),
            ColumnType::Float64 => ColumnBuilder::Float64(Float64Builder::with_capacity(rows)),
            ColumnType::Bool => ColumnBuilder::Bool(BooleanBuilder::with_capacity(rows)),
            ColumnType::Timestamp => {
                ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"))
            }
            ColumnType::Bytes => ColumnBuilder::Bytes(BinaryBuilder::with_capacity(rows, rows * 8)),
        }
    }

    fn append(&mut self, value: Value) {
        match (self, value) {
            (ColumnBuilder::String(b), Value::String(v)) => b.append_value(v),
            (ColumnBuilder::Int64(b), Value::Int64(v)) => b.append_value(v),
            (ColumnBuilder::Float64(b), Value::Float64(v)) => b.append_value(v),
            (ColumnBuilder::Bool(b), Value::Bool(v)) => b.append_value(v),
            (ColumnBuilder::Timestamp(b), Value::Timestamp(v)) => b.append_value(v),
            (ColumnBuilder::Bytes(b), Value::Bytes(v)) => b.append_value(v),
            (ColumnBuilder::String(b), _) => b.append_null(),
            (ColumnBuilder::Int64(b), _) => b.append_null(),
            (ColumnBuilder::Float64(b), _) => b.append_null(),
            (ColumnBuilder::Bool(b), _) => b.append_null(),
            (ColumnBuilder::Timestamp(b), _) => b.append_null(),
            (ColumnBuilder::Bytes(b), _) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            ColumnBuilder::String(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Bytes(mut b) => Arc::new(b.finish()),
        }
    }
}

/// A compact, unambiguous byte form of a key: per value a tag, then its bytes.
#[cfg(test)]
fn encode_key<'a>(values: impl Iterator<Item = &'a Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    encode_key_into(&mut out, values);
    out
}

/// The encoded key of `values` (a compact, unambiguous byte form: per value a tag, then its
/// bytes, a string's or bytes' length first) appended to `out`.
fn encode_key_into<'a>(out: &mut Vec<u8>, values: impl Iterator<Item = &'a Value>) {
    for value in values {
        match value {
            Value::Null => push_key_part(out, 0, false, &[]),
            Value::String(s) => push_key_part(out, 1, true, s.as_bytes()),
            Value::Int64(v) => push_key_part(out, 2, false, &v.to_le_bytes()),
            Value::Float64(v) => push_key_part(out, 3, false, &v.to_bits().to_le_bytes()),
            Value::Bool(v) => push_key_part(out, 4, false, &[u8::from(*v)]),
            Value::Timestamp(v) => push_key_part(out, 5, false, &v.to_le_bytes()),
            Value::Bytes(b) => push_key_part(out, 6, true, b),
        }
    }
}

/// One value of an encoded key: its tag, its length when it has one (LEB128: one byte below
/// 128), its bytes.
fn push_key_part(out: &mut Vec<u8>, tag: u8, length_prefixed: bool, bytes: &[u8]) {
    out.push(tag);
    if length_prefixed {
        let mut n = bytes.len();
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(bytes);
}

/// A batch's key columns, each looked up by its type once, so that rows' keys can be encoded
/// ([`encode_key`]) straight from the Arrow arrays (restore and compaction build the index this
/// way).
struct KeyColumns<'a>(Vec<KeyColumn<'a>>);

enum KeyColumn<'a> {
    String(&'a StringArray),
    Int64(&'a Int64Array),
    Float64(&'a Float64Array),
    Bool(&'a BooleanArray),
    Timestamp(&'a TimestampMicrosecondArray),
    Bytes(&'a BinaryArray),
    /// Not of its declared type (which the checks rule out): read as nulls.
    Other,
}

impl<'a> KeyColumns<'a> {
    fn of(batch: &'a RecordBatch, key_columns: &[usize], schema: &TableSchema) -> Self {
        KeyColumns(
            key_columns
                .iter()
                .map(|&c| {
                    let any = batch.column(c).as_any();
                    let typed = match schema.columns[c].kind {
                        ColumnType::String => any.downcast_ref().map(KeyColumn::String),
                        ColumnType::Int64 => any.downcast_ref().map(KeyColumn::Int64),
                        ColumnType::Float64 => any.downcast_ref().map(KeyColumn::Float64),
                        ColumnType::Bool => any.downcast_ref().map(KeyColumn::Bool),
                        ColumnType::Timestamp => any.downcast_ref().map(KeyColumn::Timestamp),
                        ColumnType::Bytes => any.downcast_ref().map(KeyColumn::Bytes),
                    };
                    typed.unwrap_or(KeyColumn::Other)
                })
                .collect(),
        )
    }

    /// Append row `row`'s encoded key to `out`.
    fn encode_row(&self, out: &mut Vec<u8>, row: usize) {
        use datafusion::arrow::array::Array;
        for column in &self.0 {
            let null = |array: &dyn Array| array.is_null(row);
            match column {
                KeyColumn::String(a) if !null(*a) => push_key_part(out, 1, true, a.value(row).as_bytes()),
                KeyColumn::Int64(a) if !null(*a) => push_key_part(out, 2, false, &a.value(row).to_le_bytes()),
                KeyColumn::Float64(a) if !null(*a) => {
                    push_key_part(out, 3, false, &a.value(row).to_bits().to_le_bytes())
                }
                KeyColumn::Bool(a) if !null(*a) => push_key_part(out, 4, false, &[u8::from(a.value(row))]),
                KeyColumn::Timestamp(a) if !null(*a) => push_key_part(out, 5, false, &a.value(row).to_le_bytes()),
                KeyColumn::Bytes(a) if !null(*a) => push_key_part(out, 6, true, a.value(row)),
                _ => push_key_part(out, 0, false, &[]),
            }
        }
    }
}

/// The tables of one projection, and the source positions they reflect.
#[derive(Debug)]
pub struct ReadModel {
    plugin: String,
    tables: BTreeMap<String, ReadModelTable>,
    positions: PositionMap,
}

/// One projection's tables at one event boundary.
#[derive(Debug, Clone)]
pub struct ReadModelSnapshot {
    /// The projection's name.
    pub plugin: String,
    /// Its tables.
    pub tables: Vec<TableSnapshot>,
    /// Per (topic, partition), the next offset to apply: every event before it is reflected.
    pub positions: PositionMap,
    /// When it was taken, milliseconds since the Unix epoch.
    pub taken_ms: u64,
}

impl ReadModel {
    /// Empty tables for a projection.
    pub fn new(plugin: &str, tables: &[TableSchema]) -> Self {
        ReadModel {
            plugin: plugin.to_string(),
            tables: tables.iter().map(|t| (t.name.clone(), ReadModelTable::new(t.clone()))).collect(),
            positions: PositionMap::new(),
        }
    }

    /// Apply one event's changes. They were checked against the plugin's declared tables (which
    /// are this read model's) before its state was committed, so they are applied as given.
    pub fn apply(&mut self, changes: RowChanges) -> Result<()> {
        for change in changes {
            match change {
                RowChange::Upsert { table, row } => self.table_mut(&table)?.upsert(row)?,
                RowChange::Delete { table, key } => self.table_mut(&table)?.delete(&key)?,
            }
        }
        Ok(())
    }

    /// Record the source positions the tables now reflect.
    pub fn set_positions(&mut self, positions: &PositionMap) {
        self.positions.clone_from(positions);
    }

    fn table_mut(&mut self, name: &str) -> Result<&mut ReadModelTable> {
        let plugin = &self.plugin;
        self.tables
            .get_mut(name)
            .ok_or_else(|| ReadModelError::UnknownTable { plugin: plugin.clone(), table: name.to_string() })
    }

    /// Every table at this event boundary.
    pub fn snapshot(&mut self) -> Result<ReadModelSnapshot> {
        let tables = self.tables.values_mut().map(ReadModelTable::snapshot).collect::<Result<Vec<_>>>()?;
        let taken_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Ok(ReadModelSnapshot { plugin: self.plugin.clone(), tables, positions: self.positions.clone(), taken_ms })
    }

    /// The tables.
    pub fn tables(&self) -> impl Iterator<Item = &ReadModelTable> {
        self.tables.values()
    }

    /// Replace a table's rows with those of a checkpoint file written by [`write_table_file`].
    /// Returns the rows loaded.
    pub fn load_table_file(&mut self, table: &str, path: &Path) -> Result<usize> {
        let failed = |message: String| ReadModelError::InvalidTableFile { path: path.to_owned(), message };
        let target = self.table_mut(table)?;
        let mut file = std::fs::File::open(path).map_err(durable::at(path))?;
        // The Arrow reader allocates what the file's footer says a batch takes before reading it
        // (found by fuzzing: a damaged length asked for a petabyte and aborted the process).
        let rows_hint = check_ipc_blocks(&mut file).map_err(failed)?;
        // The Arrow reader panics on some malformed files (an integer type of width 0 in the
        // schema, found by fuzzing): a damaged file must be an error, never take the host down.
        let malformed = || "the Arrow reader failed on it (a malformed Arrow IPC file)".to_string();
        let reader = std::panic::catch_unwind(|| FileReader::try_new(std::io::BufReader::new(file), None))
            .map_err(|_| failed(malformed()))?
            .map_err(|e| failed(e.to_string()))?;
        let schema = reader.schema();
        if schema.fields() != target.arrow.fields() {
            return Err(failed(format!(
                "its columns ({}) are not those the plugin declares for {table} ({})",
                schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", "),
                target.arrow.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", "),
            )));
        }
        *target = ReadModelTable::new(target.schema.clone());
        let mut reader = std::panic::AssertUnwindSafe(reader);
        let mut batches = Vec::new();
        let loaded = loop {
            let next = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.next())) {
                Ok(None) => break Ok(()),
                Ok(Some(batch)) => batch.map_err(|e| e.to_string()),
                Err(_) => Err(malformed()),
            };
            // The file's schema object may differ in metadata; rebuild on ours.
            match next.and_then(|b| {
                RecordBatch::try_new(target.arrow.clone(), b.columns().to_vec()).map_err(|e| e.to_string())
            }) {
                Ok(batch) => batches.push(batch),
                Err(message) => break Err(message),
            }
        };
        // A file that fails part way leaves the table empty.
        loaded.map_err(failed)?;
        target.index.reserve(rows_hint);
        target.add_segments(batches);
        Ok(target.len())
    }
}

/// Check that every block an Arrow IPC file's footer lists lies inside the file, so reading it
/// allocates no more than the file holds. Leaves the file at its start. Returns the rows its
/// record batches' headers claim (a hint for sizing the index, at most 8 per byte of the file;
/// 0 for a header it cannot read).
fn check_ipc_blocks(file: &mut std::fs::File) -> std::result::Result<usize, String> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |e: std::io::Error| e.to_string();
    let size = file.seek(SeekFrom::End(0)).map_err(io)?;
    // ... footer, footer length (4 bytes, little endian), the magic `ARROW1`.
    if size < 16 {
        return Err(format!("{size} bytes is too short for an Arrow IPC file"));
    }
    let mut tail = [0u8; 10];
    file.seek(SeekFrom::End(-10)).map_err(io)?;
    file.read_exact(&mut tail).map_err(io)?;
    let footer_len = i32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let footer_len = u64::try_from(footer_len).map_err(|_| format!("its footer length {footer_len} is negative"))?;
    if footer_len > size - 16 {
        return Err(format!("its footer length {footer_len} is past its size of {size} bytes"));
    }
    let mut footer = vec![0u8; footer_len as usize];
    file.seek(SeekFrom::Start(size - 10 - footer_len)).map_err(io)?;
    file.read_exact(&mut footer).map_err(io)?;
    let footer = datafusion::arrow::ipc::root_as_footer(&footer).map_err(|e| format!("its footer: {e}"))?;
    let blocks = footer.recordBatches().into_iter().flatten().chain(footer.dictionaries().into_iter().flatten());
    for block in blocks {
        let end = i128::from(block.offset()) + i128::from(block.metaDataLength()) + i128::from(block.bodyLength());
        if block.offset() < 0 || block.metaDataLength() < 0 || block.bodyLength() < 0 || end > i128::from(size) {
            return Err(format!(
                "a block at {} ({} + {} bytes) is outside its {size} bytes",
                block.offset(),
                block.metaDataLength(),
                block.bodyLength()
            ));
        }
    }
    let mut rows = 0u64;
    for block in footer.recordBatches().into_iter().flatten().chain(footer.dictionaries().into_iter().flatten()) {
        let (offset, length, body) =
            (block.offset() as u64, block.metaDataLength() as usize, block.bodyLength() as usize);
        rows = rows.saturating_add(batch_rows(file, offset, length, body, size.saturating_mul(8))?);
    }
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    Ok(rows.min(size.saturating_mul(8)) as usize)
}

/// The row count in the header of the batch message at `offset` (`length` bytes of metadata:
/// the continuation marker, the header's length, the header; then `body` bytes), once the
/// header passed [`crate::ipc::check_message`] (no compression, at most `max_rows` rows); 0 for a
/// dictionary batch.
fn batch_rows(
    file: &mut std::fs::File,
    offset: u64,
    length: usize,
    body: usize,
    max_rows: u64,
) -> std::result::Result<u64, String> {
    use std::io::{Read, Seek, SeekFrom};
    let at = |why: String| format!("the batch at {offset}: {why}");
    let mut metadata = vec![0u8; length];
    if length < 8 {
        return Err(at(format!("{length} bytes of metadata")));
    }
    file.seek(SeekFrom::Start(offset)).and_then(|_| file.read_exact(&mut metadata)).map_err(|e| at(e.to_string()))?;
    let header_len = i32::from_le_bytes([metadata[4], metadata[5], metadata[6], metadata[7]]);
    let header = usize::try_from(header_len)
        .ok()
        .and_then(|n| metadata[8..].get(..n))
        .ok_or_else(|| at(format!("a header length of {header_len}")))?;
    crate::ipc::check_message(header, body, max_rows).map_err(at)?;
    Ok(datafusion::arrow::ipc::root_as_message(header)
        .ok()
        .and_then(|m| m.header_as_record_batch())
        .map_or(0, |b| u64::try_from(b.length()).unwrap_or(0)))
}

/// Write one table of a snapshot as an Arrow IPC file, synced before returning (the checkpoint
/// writer renames nothing: the manifest written after it is what makes it count). Returns the
/// bytes written.
pub fn write_table_file(table: &TableSnapshot, path: &Path) -> Result<u64> {
    Ok(durable::write_synced(path, |out| {
        let mut writer = FileWriter::try_new(out, &table.schema).map_err(std::io::Error::other)?;
        for batch in &table.batches {
            writer.write(batch).map_err(std::io::Error::other)?;
        }
        writer.finish().map_err(std::io::Error::other)
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::row::Column;

    fn schema() -> TableSchema {
        TableSchema {
            name: "t".into(),
            description: String::new(),
            columns: vec![
                Column { name: "id".into(), kind: ColumnType::String, nullable: false },
                Column { name: "n".into(), kind: ColumnType::Int64, nullable: true },
            ],
            primary_key: vec!["id".into()],
        }
    }

    /// Keys read back from Arrow columns (restore) encode exactly as keys from values (upserts),
    /// or a restored table would take an upsert of an existing row for a new row.
    #[test]
    fn keys_from_columns_encode_as_keys_from_values() {
        let kinds = [
            ColumnType::String,
            ColumnType::Int64,
            ColumnType::Float64,
            ColumnType::Bool,
            ColumnType::Timestamp,
            ColumnType::Bytes,
        ];
        let schema = TableSchema {
            name: "all_kinds".into(),
            description: String::new(),
            columns: kinds
                .iter()
                .enumerate()
                .map(|(i, &kind)| Column { name: format!("c{i}"), kind, nullable: true })
                .collect(),
            primary_key: (0..kinds.len()).map(|i| format!("c{i}")).collect(),
        };
        let rows = vec![
            vec![
                Value::String("a".into()),
                Value::Int64(-7),
                Value::Float64(1.5),
                Value::Bool(true),
                Value::Timestamp(42),
                Value::Bytes(vec![0, 1]),
            ],
            vec![Value::Null; kinds.len()],
            vec![
                // Longer than fits inline in the index, with lengths of two LEB128 bytes.
                Value::String("x".repeat(200)),
                Value::Int64(0),
                Value::Float64(f64::NAN),
                Value::Bool(false),
                Value::Timestamp(-1),
                Value::Bytes(vec![7; 300]),
            ],
            vec![
                Value::String(String::new()),
                Value::Int64(i64::MAX),
                Value::Float64(-0.0),
                Value::Bool(false),
                Value::Null,
                Value::Bytes(Vec::new()),
            ],
        ];
        let table = ReadModelTable::new(schema.clone());
        let batch = table.build_batch(rows.clone()).unwrap();
        let columns = KeyColumns::of(&batch, &table.key_columns, &schema);
        let from_columns: Vec<Vec<u8>> = (0..rows.len())
            .map(|row| {
                let mut key = Vec::new();
                columns.encode_row(&mut key, row);
                key
            })
            .collect();
        let from_values: Vec<Vec<u8>> = rows.iter().map(|row| encode_key(row.iter())).collect();
        assert_eq!(from_columns, from_values);
        for key in &from_values {
            assert_eq!(IndexKey::new(key).as_bytes(), key.as_slice());
        }
        // An index entry stays 24 bytes: a 16-byte key (inline up to 14 bytes) and its location.
        assert_eq!(std::mem::size_of::<(IndexKey, RowLocation)>(), 24);
    }

    fn rows(table: &mut ReadModelTable) -> BTreeMap<String, Option<i64>> {
        let snap = table.snapshot().unwrap();
        let mut out = BTreeMap::new();
        for batch in &snap.batches {
            let ids = batch.column(0).as_any().downcast_ref::<datafusion::arrow::array::StringArray>().unwrap();
            let ns = batch.column(1).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap();
            for i in 0..batch.num_rows() {
                use datafusion::arrow::array::Array;
                out.insert(ids.value(i).to_string(), (!ns.is_null(i)).then(|| ns.value(i)));
            }
        }
        assert_eq!(snap.rows, out.len());
        out
    }

    #[test]
    fn upserts_replace_and_deletes_remove_across_segments() {
        let mut table = ReadModelTable::new(schema());
        let mut truth = BTreeMap::new();
        // Many publishes with overlapping keys: exercises tail, segments, filtering and compaction.
        for round in 0..40i64 {
            for i in 0..500i64 {
                // Some keys too long to be kept inline in the index.
                let key = format!("k{}{}", (i * 7 + round * 13) % 900, if i % 3 == 0 { "-long-key-name" } else { "" });
                if (i + round) % 11 == 0 {
                    table.delete(&[Value::String(key.clone())]).unwrap();
                    truth.remove(&key);
                } else {
                    let n = if i % 5 == 0 { None } else { Some(round * 1000 + i) };
                    table.upsert(vec![Value::String(key.clone()), n.map_or(Value::Null, Value::Int64)]).unwrap();
                    truth.insert(key, n);
                }
            }
            assert_eq!(rows(&mut table), truth, "after round {round}");
        }
        assert!(table.segments.len() < MAX_SMALL_SEGMENTS + 2, "{} segments", table.segments.len());
    }

    #[test]
    fn wrong_values_are_refused_before_they_reach_a_read_model() {
        let good = RowChange::Upsert { table: "t".into(), row: vec![Value::String("a".into()), Value::Int64(1)] };
        let bad = RowChange::Upsert { table: "t".into(), row: vec![Value::String("b".into()), Value::Bool(true)] };
        let err = RowChanges::check(&[schema()], vec![good.clone(), bad]).unwrap_err();
        assert_eq!(err, "table t: column n expects int64 but got bool");
        let err = RowChanges::check(&[schema()], vec![RowChange::Delete { table: "nope".into(), key: vec![] }]);
        assert_eq!(err.unwrap_err(), "table nope is not one this plugin declared");
        let mut model = ReadModel::new("p", &[schema()]);
        model.apply(RowChanges::check(&[schema()], vec![good]).unwrap()).unwrap();
        assert_eq!(model.snapshot().unwrap().tables[0].rows, 1);
    }

    #[test]
    fn a_restore_indexes_on_threads_what_one_thread_would() {
        // 40,000 rows in three batches, the first 10,000 keys again in the third: no checkpoint
        // holds a key twice, but a damaged file may, and it must load as one thread loads it.
        let table = ReadModelTable::new(schema());
        let batch = |keys: std::ops::Range<i64>| {
            table.build_batch(keys.map(|i| vec![Value::String(format!("k{}", i % 30_000)), Value::Int64(i)]).collect())
        };
        let batches = vec![batch(0..15_000).unwrap(), batch(15_000..30_000).unwrap(), batch(30_000..40_000).unwrap()];
        const { assert!(40_000 >= PARALLEL_INDEX_ROWS) };
        let mut serial = ReadModelTable::new(schema());
        batches.iter().cloned().for_each(|b| serial.add_segment(b));
        let mut parallel = ReadModelTable::new(schema());
        parallel.add_segments(batches);
        let entries = |t: &ReadModelTable| {
            let mut entries: Vec<(Vec<u8>, RowLocation)> =
                t.index.shards.iter().flat_map(|s| s.iter().map(|(k, at)| (k.as_bytes().to_vec(), *at))).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries
        };
        assert_eq!(parallel.len(), 30_000);
        assert_eq!(entries(&parallel), entries(&serial));
        // Every key sits in the shard its hash picks, and both shards hold keys.
        for (n, shard) in parallel.index.shards.iter().enumerate() {
            assert!(shard.len() > 10_000, "shard {n} holds {} keys", shard.len());
            assert!(shard.iter().all(|(k, _)| KeyIndex::shard_of(parallel.index.hash(k.as_bytes())) == n));
        }
        // Lookups find what the threads put in: an upsert replaces, a delete removes.
        parallel.upsert(vec![Value::String("k5".into()), Value::Int64(-5)]).unwrap();
        parallel.delete(&[Value::String("k29999".into())]).unwrap();
        let after = rows(&mut parallel);
        assert_eq!((after.len(), after["k5"], after.get("k29999")), (29_999, Some(-5), None));
        assert_eq!(after["k7"], Some(30_007));
        assert_eq!(rows(&mut serial).len(), 30_000);
    }

    #[test]
    fn a_table_written_to_a_checkpoint_file_loads_back_with_its_key_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = ReadModel::new("p", &[schema()]);
        for i in 0..1000 {
            let row = vec![Value::String(format!("k{}", i % 300)), Value::Int64(i)];
            model
                .apply(RowChanges::check(&[schema()], vec![RowChange::Upsert { table: "t".into(), row }]).unwrap())
                .unwrap();
        }
        let snapshot = model.snapshot().unwrap();
        let path = dir.path().join("t.arrow");
        write_table_file(&snapshot.tables[0], &path).unwrap();
        // The index is sized from the rows the file's batch headers give.
        assert_eq!(check_ipc_blocks(&mut std::fs::File::open(&path).unwrap()), Ok(300));
        let mut restored = ReadModel::new("p", &[schema()]);
        assert_eq!(restored.load_table_file("t", &path).unwrap(), 300);
        let t = restored.tables.get_mut("t").unwrap();
        assert_eq!(rows(t), rows(model.tables.get_mut("t").unwrap()));
        // The index works: an upsert replaces, a delete removes.
        t.upsert(vec![Value::String("k1".into()), Value::Int64(-1)]).unwrap();
        t.delete(&[Value::String("k2".into())]).unwrap();
        let after = rows(t);
        assert_eq!((after.len(), after["k1"], after.get("k2")), (299, Some(-1), None));
    }
}
