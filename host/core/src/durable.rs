//! Durable file writes: the one place weir turns bytes into files that survive a crash or a power
//! cut. The embedded log (topic metadata) and the checkpoint writer (table files, plugin state,
//! manifest) both go through it; nothing else calls `sync_all` on a file it wrote whole.
//!
//! **Invariant:** a file written with [`write_atomically`] is, after a crash at any instant,
//! either absent (or its previous version) or complete: bytes go to a temporary file, which is
//! synced, renamed into place, and its directory synced.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A file operation failed; names the file or directory.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct IoError {
    /// The file or directory.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// A `Result` with an [`IoError`].
pub type Result<T, E = IoError> = std::result::Result<T, E>;

/// The error-mapping closure for an operation on `path`.
pub fn at(path: &Path) -> impl FnOnce(std::io::Error) -> IoError + '_ {
    move |source| IoError { path: path.to_owned(), source }
}

/// Write `path` whole with what `fill` writes into it, then sync it. The caller renames or
/// references it only after this returns (for a small file, use [`write_atomically`]). Returns
/// the bytes written.
pub fn write_synced(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<File>) -> std::io::Result<()>,
) -> Result<u64> {
    let file = File::create(path).map_err(at(path))?;
    let mut out = std::io::BufWriter::new(file);
    fill(&mut out).map_err(at(path))?;
    let file = out.into_inner().map_err(|e| at(path)(e.into_error()))?;
    file.sync_all().map_err(at(path))?;
    file.metadata().map(|m| m.len()).map_err(at(path))
}

/// Write `bytes` to `path` so that it is either absent (or as it was) or complete: temporary
/// file, sync, rename, sync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    write_synced(&tmp, |out| out.write_all(bytes))?;
    std::fs::rename(&tmp, path).map_err(at(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Sync a directory so that entries created or renamed in it survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("manifest.json");
        write_atomically(&path, b"first").expect("write");
        write_atomically(&path, b"second").expect("rewrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("manifest.json")]);
    }

    #[test]
    fn errors_name_the_path() {
        let err = write_atomically(Path::new("/nonexistent-dir/x.json"), b"x").unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent-dir/x."), "{err}");
    }
}
