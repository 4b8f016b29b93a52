//! The admin token: what every mutating request (deploy, pause, resume, rollback, rebuild,
//! remove, producing events) must carry as `Authorization: Bearer <token>`, and what reads need
//! too when a listener is bound beyond loopback (the Postgres listener takes it as the password).
//!
//! The token comes from the config (`[server] token`) or `WEIR_TOKEN`; without one, the first
//! start generates one into `<data_dir>/token` (mode 0600) and later starts read it back. So that
//! the CLI finds it by itself on the same machine, a running host records where its token file is
//! under `$XDG_STATE_HOME/weir/hosts/` (default `~/.local/state/weir/hosts/`), one file per HTTP
//! address; `weir` reads it when neither `--token` nor `WEIR_TOKEN` is given.
//!
//! This module compares tokens and finds them; it never logs a token itself, only paths.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use weir_core::durable;

/// Bytes of randomness in a generated token.
const TOKEN_BYTES: usize = 24;

/// Why the token could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Reading or writing the token file failed.
    #[error(transparent)]
    Io(#[from] durable::IoError),
    /// The token file holds something that is not a token.
    #[error(
        "{path} does not hold a token (one line of at least 16 printable characters); delete it to have a new one generated"
    )]
    BadTokenFile {
        /// The file.
        path: PathBuf,
    },
    /// The configured token is too weak to guard anything.
    #[error("the configured admin token is {len} characters; use at least 16")]
    Weak {
        /// Its length.
        len: usize,
    },
}

/// The token a host checks, and where it came from.
#[derive(Debug, Clone)]
pub struct AdminToken {
    token: String,
    /// The file it was read from or generated into (`None`: from the config or `WEIR_TOKEN`).
    pub file: Option<PathBuf>,
}

impl AdminToken {
    /// The configured token if there is one, else the one in `<data_dir>/token`, generated there
    /// (mode 0600) on first start.
    pub fn load(configured: Option<&str>, data_dir: &Path) -> Result<AdminToken, AuthError> {
        if let Some(token) = configured.map(str::trim).filter(|t| !t.is_empty()) {
            if token.len() < 16 {
                return Err(AuthError::Weak { len: token.len() });
            }
            return Ok(AdminToken { token: token.to_string(), file: None });
        }
        let path = data_dir.join("token");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let token = text.trim();
                if token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic()) {
                    return Err(AuthError::BadTokenFile { path });
                }
                Ok(AdminToken { token: token.to_string(), file: Some(path) })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = generate()?;
                write_private(&path, format!("{token}\n").as_bytes())?;
                tracing::info!(path = %path.display(), "generated the admin token");
                Ok(AdminToken { token, file: Some(path) })
            }
            Err(e) => Err(durable::at(&path)(e).into()),
        }
    }

    /// A token given as is (tests, embedding).
    pub fn new(token: impl Into<String>) -> AdminToken {
        AdminToken { token: token.into(), file: None }
    }

    /// Whether `given` is the token (compared in time independent of where they differ).
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.token.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The token itself, for clients in this process (the demo, tests).
    pub fn secret(&self) -> &str {
        &self.token
    }

    /// Record, for the CLI on this machine, that the host answering at `http` keeps its token in
    /// [`AdminToken::file`]. Best effort: a failure is logged, not fatal.
    pub fn advertise(&self, http: SocketAddr) {
        let Some(file) = &self.file else { return };
        let Some(dir) = hosts_dir() else { return };
        let target = dir.join(host_file_name(&http.to_string()));
        let absolute = std::path::absolute(file).unwrap_or_else(|_| file.clone());
        let written = std::fs::create_dir_all(&dir)
            .map_err(durable::at(&dir))
            .and_then(|()| write_private(&target, absolute.to_string_lossy().as_bytes()));
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not record where the admin token is for the CLI");
        }
    }
}

/// The token for the host at `url` (`http://HOST:PORT`), as the CLI finds it: `WEIR_TOKEN`, else
/// the file a host on this machine advertised for that address, else `<WEIR_DATA_DIR or
/// ./data>/token`.
pub fn discover(url: &str) -> Option<String> {
    if let Ok(token) = std::env::var("WEIR_TOKEN")
        && !token.trim().is_empty()
    {
        return Some(token.trim().to_string());
    }
    let address = url.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/');
    let address = address.split('/').next().unwrap_or(address).replace("localhost", "127.0.0.1");
    let mut candidates = Vec::new();
    if let Some(dir) = hosts_dir()
        && let Ok(path) = std::fs::read_to_string(dir.join(host_file_name(&address)))
    {
        candidates.push(PathBuf::from(path.trim()));
    }
    let data_dir = std::env::var_os("WEIR_DATA_DIR").map_or_else(|| PathBuf::from("data"), PathBuf::from);
    candidates.push(data_dir.join("token"));
    candidates
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| text.trim().to_string())
        .find(|token| !token.is_empty())
}

fn hosts_dir() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")))?;
    Some(state.join("weir").join("hosts"))
}

fn host_file_name(address: &str) -> String {
    address.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect()
}

/// A fresh token: random bytes from the operating system, hex.
fn generate() -> Result<String, AuthError> {
    use std::io::Read;
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; TOKEN_BYTES];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut bytes)).map_err(durable::at(path))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Write `bytes` to `path` readable by its owner only (0600), atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), durable::IoError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(durable::at(&temp))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(durable::at(&temp))?;
    std::fs::rename(&temp, path).map_err(durable::at(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_is_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = AdminToken::load(None, dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = AdminToken::load(None, dir.path()).unwrap();
        assert!(again.matches(first.secret()));
        assert!(!again.matches("wrong"));
        assert!(matches!(AdminToken::load(Some("short"), dir.path()), Err(AuthError::Weak { len: 5 })));
    }
}
