//! Checkpoints: each plugin's read-model tables, keyed state and source positions, written
//! together so a restart resumes exactly where the checkpoint left off.
//!
//! Layout under `<data_dir>/checkpoints`: one directory per checkpoint, named by its sequence
//! number, holding `<plugin>/<table>.arrow` (Arrow IPC files), `<plugin>/state.bin` and
//! `manifest.json`. Every file is synced before the manifest is renamed into place, and the
//! manifest names everything the checkpoint holds.
//!
//! This module is the one checkpoint writer: every file goes through `weir_core::durable` (the
//! table files are encoded by `weir-sql`, which knows Arrow), and the manifest is written last.
//!
//! **Architecture Invariant:** a checkpoint exists if and only if its `manifest.json` does, and
//! the manifest is the last thing written; so a crash at any instant leaves the previous complete
//! checkpoint, and a directory without a manifest is debris to delete.
//!
//! A complete checkpoint that turns out not to be valid when restored (a corrupt manifest, state
//! or table file: a disk that lied, or a hand that edited it) is set aside as
//! `<seq>.corrupt`, with a warning naming it, and the previous complete one is restored instead.
//! An I/O failure is not corruption: it is reported and the host does not start.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use weir_core::durable::{self, sync_dir};
use weir_core::event::PositionMap;
use weir_runtime::KeyedState;
use weir_sql::readmodel::ReadModelError;

use crate::pipeline::{Pipeline, PluginCapture};

/// Version of the manifest layout.
const FORMAT: u32 = 1;

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file operation failed (the disk, not the checkpoint): names the file or directory.
    #[error(transparent)]
    Io(#[from] durable::IoError),
    /// A checkpoint on disk is not valid: its manifest, or a file not being what the manifest
    /// says.
    #[error("checkpoint {path} is not valid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A read model could not be captured or restored (a bug, reported rather than a crash).
    #[error(transparent)]
    Table(ReadModelError),
    /// Where the topics the host writes to end could not be read (the broker is down).
    #[error("reading where the output topics end: {0}")]
    Outputs(String),
    /// The thread that writes checkpoints could not be started.
    #[error("cannot start the checkpoint thread: {0}")]
    Thread(std::io::Error),
}

impl From<ReadModelError> for CheckpointError {
    fn from(e: ReadModelError) -> Self {
        match e {
            ReadModelError::Io(e) => CheckpointError::Io(e),
            ReadModelError::InvalidTableFile { path, message } => CheckpointError::Invalid { path, message },
            other => CheckpointError::Table(other),
        }
    }
}

/// A `Result` with a [`CheckpointError`].
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io(durable::at(path)(source))
}

fn invalid(path: &Path, message: impl Into<String>) -> CheckpointError {
    CheckpointError::Invalid { path: path.to_owned(), message: message.into() }
}

/// `[checkpoint]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Milliseconds between checkpoints while events flow (one is also written on shutdown).
    pub interval_ms: u64,
    /// Complete checkpoints kept; older ones are deleted.
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig { interval_ms: 5_000, keep: 2 }
    }
}

/// `manifest.json`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Layout version.
    pub format: u32,
    /// Sequence number (the directory's name).
    pub seq: u64,
    /// Milliseconds since the Unix epoch when it was taken.
    pub created_ms: u64,
    /// One entry per plugin.
    pub plugins: Vec<PluginCheckpoint>,
    /// The end of each partition of every topic the host writes to (handlers' outputs,
    /// dead-letter topics) when it was taken: after a crash, what lies past them was written
    /// after this checkpoint and is read back so as not to be written twice.
    #[serde(default)]
    pub outputs: Vec<PartitionPosition>,
}

/// One plugin in a [`Manifest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginCheckpoint {
    /// Plugin name.
    pub name: String,
    /// `name@version`.
    pub label: String,
    /// Fingerprint of the component and parameters that produced this state.
    pub fingerprint: String,
    /// Next offset per partition.
    pub positions: Vec<PartitionPosition>,
    /// Table files.
    pub tables: Vec<TableFile>,
    /// State file, relative to the checkpoint directory.
    pub state_file: String,
    /// Entries in the state file.
    pub state_entries: usize,
    /// Which of its dead letters are settled.
    #[serde(default)]
    pub dead_letters: crate::output::DeadLetterBook,
}

/// The next offset of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionPosition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Next offset to process.
    pub next_offset: u64,
}

/// One table in a [`PluginCheckpoint`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableFile {
    /// Table name.
    pub table: String,
    /// File, relative to the checkpoint directory.
    pub file: String,
    /// Rows.
    pub rows: usize,
    /// Bytes.
    pub bytes: u64,
}

/// What writing one checkpoint took.
#[derive(Debug, Clone, Copy)]
pub struct WriteStats {
    /// Sequence number written.
    pub seq: u64,
    /// Rows over all tables.
    pub rows: usize,
    /// Bytes over all files.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: std::time::Duration,
}

/// What restoring took.
#[derive(Debug, Clone)]
pub struct RestoreStats {
    /// Sequence number restored.
    pub seq: u64,
    /// Plugins put back.
    pub restored: Vec<String>,
    /// Plugins starting over, with why.
    pub rebuilt: Vec<(String, String)>,
    /// Rows loaded.
    pub rows: usize,
    /// Wall time.
    pub elapsed: std::time::Duration,
    /// Newer checkpoints that were not valid and were set aside, with why.
    pub set_aside: Vec<(PathBuf, String)>,
    /// Where the topics the host writes to ended when it was taken.
    pub outputs: PositionMap,
}

/// The checkpoints of one data directory.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
    keep: usize,
}

impl CheckpointStore {
    /// Checkpoints in `dir` (created if missing), keeping `keep` complete ones.
    pub fn open(dir: &Path, keep: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(CheckpointStore { dir: dir.to_owned(), keep: keep.max(1) })
    }

    /// Sequence numbers of the directories present, ascending.
    fn sequences(&self) -> Result<Vec<u64>> {
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            if let Ok(seq) = entry.file_name().to_string_lossy().parse::<u64>() {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        Ok(seqs)
    }

    fn path_of(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}"))
    }

    /// The complete checkpoints (those with a manifest), newest first, after deleting debris
    /// (directories without a manifest) newer than the newest complete one.
    fn complete(&self) -> Result<Vec<PathBuf>> {
        let mut complete = Vec::new();
        for seq in self.sequences()?.into_iter().rev() {
            let dir = self.path_of(seq);
            if dir.join("manifest.json").is_file() {
                complete.push(dir);
            } else if complete.is_empty() {
                tracing::info!(dir = %dir.display(), "removing an incomplete checkpoint");
                std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
            }
        }
        Ok(complete)
    }

    /// The newest complete checkpoint's manifest, after deleting debris newer than it.
    pub fn latest(&self) -> Result<Option<(Manifest, PathBuf)>> {
        match self.complete()?.into_iter().next() {
            Some(dir) => Ok(Some((read_manifest(&dir)?, dir))),
            None => Ok(None),
        }
    }

    /// Each plugin's fingerprint in the newest complete checkpoint (none: empty).
    pub fn fingerprints(&self) -> Result<std::collections::BTreeMap<String, String>> {
        Ok(match self.latest() {
            Ok(Some((manifest, _))) => manifest.plugins.into_iter().map(|p| (p.name, p.fingerprint)).collect(),
            Ok(None) | Err(CheckpointError::Invalid { .. }) => Default::default(),
            Err(e) => return Err(e),
        })
    }

    /// The sequence number the next checkpoint gets.
    pub fn next_seq(&self) -> Result<u64> {
        Ok(self.sequences()?.last().map_or(1, |s| s + 1))
    }

    /// Write a checkpoint of `captures` as number `seq`, then prune old ones.
    pub fn write(&self, seq: u64, captures: &[PluginCapture], outputs: &PositionMap) -> Result<WriteStats> {
        let started = Instant::now();
        let dir = self.path_of(seq);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut plugins = Vec::with_capacity(captures.len());
        let (mut rows, mut bytes) = (0, 0);
        for capture in captures {
            let plugin_dir = dir.join(&capture.name);
            std::fs::create_dir_all(&plugin_dir).map_err(io(&plugin_dir))?;
            let mut tables = Vec::new();
            for table in capture.snapshot.iter().flat_map(|s| &s.tables) {
                let file = format!("{}/{}.arrow", capture.name, table.name);
                let size = weir_sql::readmodel::write_table_file(table, &dir.join(&file))?;
                rows += table.rows;
                bytes += size;
                tables.push(TableFile { table: table.name.clone(), file, rows: table.rows, bytes: size });
            }
            let state_file = format!("{}/state.bin", capture.name);
            let state_bytes = encode_state(&capture.state);
            bytes += state_bytes.len() as u64;
            let state_path = dir.join(&state_file);
            durable::write_synced(&state_path, |out| std::io::Write::write_all(out, &state_bytes))?;
            sync_dir(&plugin_dir)?;
            plugins.push(PluginCheckpoint {
                name: capture.name.clone(),
                label: capture.label.clone(),
                fingerprint: capture.fingerprint.clone(),
                positions: to_partition_positions(&capture.positions),
                tables,
                state_file,
                state_entries: capture.state.len(),
                dead_letters: capture.dead_letters.clone(),
            });
        }
        let created_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let manifest = Manifest { format: FORMAT, seq, created_ms, plugins, outputs: to_partition_positions(outputs) };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| invalid(&dir, e.to_string()))?;
        sync_dir(&dir)?;
        durable::write_atomically(&dir.join("manifest.json"), &text)?;
        sync_dir(&self.dir)?;
        self.prune(seq)?;
        Ok(WriteStats { seq, rows, bytes, elapsed: started.elapsed() })
    }

    /// Delete all but the newest `keep` checkpoints up to `latest`.
    fn prune(&self, latest: u64) -> Result<()> {
        let older: Vec<u64> = self.sequences()?.into_iter().filter(|s| *s <= latest).collect();
        let excess = older.len().saturating_sub(self.keep);
        for seq in &older[..excess] {
            let dir = self.path_of(*seq);
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(())
    }

    /// Put every plugin of `pipeline` back where the latest checkpoint left it. A plugin whose
    /// fingerprint changed since (new code or parameters), or that the checkpoint does not know,
    /// starts from the beginning of its topics. A latest checkpoint that is not valid is set aside
    /// (renamed `<seq>.corrupt`, with a warning naming it) and the previous complete one is
    /// restored instead; with none left, the error is returned.
    pub fn restore(&self, pipeline: &mut Pipeline) -> Result<Option<RestoreStats>> {
        let candidates = self.complete()?;
        let mut set_aside = Vec::new();
        for dir in candidates {
            match self.restore_from(&dir, pipeline) {
                Ok(mut stats) => {
                    stats.set_aside = set_aside;
                    return Ok(Some(stats));
                }
                Err((CheckpointError::Invalid { path, message }, touched)) => {
                    for name in &touched {
                        pipeline.reset_plugin(name);
                    }
                    let aside = dir.with_extension("corrupt");
                    tracing::warn!(
                        checkpoint = %dir.display(), file = %path.display(), error = %message, moved_to = %aside.display(),
                        "checkpoint is not valid; set aside, restoring the previous one"
                    );
                    std::fs::rename(&dir, &aside).map_err(io(&dir))?;
                    sync_dir(&self.dir)?;
                    set_aside.push((aside, format!("{}: {message}", path.display())));
                }
                Err((e, _)) => return Err(e),
            }
        }
        if let Some((aside, why)) = set_aside.last() {
            return Err(invalid(aside, format!("no valid checkpoint is left to restore ({why})")));
        }
        Ok(None)
    }

    /// Restore from one checkpoint directory. On error, also returns the plugins it had already
    /// put back, so the caller can reset them.
    fn restore_from(
        &self,
        dir: &Path,
        pipeline: &mut Pipeline,
    ) -> std::result::Result<RestoreStats, (CheckpointError, Vec<String>)> {
        let started = Instant::now();
        let mut touched = Vec::new();
        let manifest = read_manifest(dir).map_err(|e| (e, Vec::new()))?;
        let mut stats = RestoreStats {
            seq: manifest.seq,
            restored: Vec::new(),
            rebuilt: Vec::new(),
            rows: 0,
            elapsed: started.elapsed(),
            set_aside: Vec::new(),
            outputs: from_partition_positions(&manifest.outputs),
        };
        let names: Vec<(String, String)> =
            pipeline.plugins().map(|p| (p.info().name.clone(), p.fingerprint().to_string())).collect();
        for (name, fingerprint) in names {
            let Some(saved) = manifest.plugins.iter().find(|p| p.name == name) else {
                stats.rebuilt.push((name, "not in the checkpoint".into()));
                continue;
            };
            // Its own state, or the state of a version it took over from (a swap, a handler
            // upgraded in the config file) since that checkpoint.
            if saved.fingerprint != fingerprint && !pipeline.accepts(&name, &saved.fingerprint) {
                stats.rebuilt.push((name, format!("its code or parameters changed since {}", saved.label)));
                continue;
            }
            touched.push(name.clone());
            let rows = restore_plugin(dir, saved, pipeline).map_err(|e| (e, touched.clone()))?;
            stats.rows += rows;
            stats.restored.push(name);
        }
        stats.elapsed = started.elapsed();
        Ok(stats)
    }
}

fn to_partition_positions(positions: &PositionMap) -> Vec<PartitionPosition> {
    positions
        .iter()
        .map(|((topic, partition), next)| PartitionPosition {
            topic: topic.clone(),
            partition: *partition,
            next_offset: *next,
        })
        .collect()
}

fn from_partition_positions(positions: &[PartitionPosition]) -> PositionMap {
    positions.iter().map(|p| ((p.topic.clone(), p.partition), p.next_offset)).collect()
}

/// Read and check a checkpoint's manifest.
fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("manifest.json");
    let text = std::fs::read(&path).map_err(io(&path))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| invalid(&path, e.to_string()))?;
    if manifest.format != FORMAT {
        return Err(invalid(&path, format!("format {} is not {FORMAT}", manifest.format)));
    }
    Ok(manifest)
}

/// Put one plugin back as `saved` describes it; returns the rows loaded.
fn restore_plugin(dir: &Path, saved: &PluginCheckpoint, pipeline: &mut Pipeline) -> Result<usize> {
    let state_path = dir.join(&saved.state_file);
    let state = decode_state(&state_path)?;
    if state.len() != saved.state_entries {
        return Err(invalid(
            &state_path,
            format!("{} state entries where the manifest says {}", state.len(), saved.state_entries),
        ));
    }
    let positions = from_partition_positions(&saved.positions);
    let files: Vec<(String, PathBuf)> = saved.tables.iter().map(|t| (t.table.clone(), dir.join(&t.file))).collect();
    let rows = pipeline.restore_plugin(
        &saved.name,
        positions,
        KeyedState::from_entries(state),
        saved.dead_letters.clone(),
        &files,
    )?;
    let expected: usize = saved.tables.iter().map(|t| t.rows).sum();
    if rows != expected {
        return Err(invalid(
            dir,
            format!("plugin {}: {rows} rows loaded where the manifest says {expected}", saved.name),
        ));
    }
    Ok(rows)
}

/// `count: u64`, then per entry `key_len: u32, key, value_len: u32, value`, little-endian.
fn encode_state(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let size: usize = entries.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(8 + size);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (key, value) in entries {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

fn decode_state(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let short = || invalid(path, "state file ends early");
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let out = bytes.get(at..at + n).ok_or_else(short)?;
        at += n;
        Ok(out)
    };
    let count = u64::from_le_bytes(take(8)?.try_into().map_err(|_| short())?);
    let mut entries = Vec::with_capacity((count as usize).min(1 << 20));
    for _ in 0..count {
        let len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| short())?) as usize;
        let key = take(len)?.to_vec();
        let len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| short())?) as usize;
        entries.push((key, take(len)?.to_vec()));
    }
    if at != bytes.len() {
        return Err(invalid(path, "state file has bytes after its last entry"));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_round_trip_and_truncation_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let entries = vec![(b"a".to_vec(), b"1".to_vec()), (Vec::new(), vec![0; 300])];
        let path = dir.path().join("state.bin");
        std::fs::write(&path, encode_state(&entries)).unwrap();
        assert_eq!(decode_state(&path).unwrap(), entries);
        let bytes = encode_state(&entries);
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(decode_state(&path).unwrap_err().to_string().contains("state file ends early"));
    }

    #[test]
    fn only_complete_checkpoints_count_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 2).unwrap();
        assert!(store.latest().unwrap().is_none());
        for seq in 1..=4 {
            store.write(seq, &[], &PositionMap::new()).unwrap();
        }
        // A crash while writing number 5: files but no manifest.
        std::fs::create_dir_all(dir.path().join(format!("{:020}/p", 5))).unwrap();
        let (manifest, _) = store.latest().unwrap().unwrap();
        assert_eq!(manifest.seq, 4);
        assert_eq!(store.sequences().unwrap(), vec![3, 4]);
        assert_eq!(store.next_seq().unwrap(), 5);
    }
}
