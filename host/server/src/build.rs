//! `weir plugin build`: compile a plugin crate to a wasm32-wasip2 component with cargo.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The target plugins compile to.
pub const PLUGIN_TARGET: &str = "wasm32-wasip2";

/// Why a plugin could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The directory is not a crate.
    #[error("{0} has no Cargo.toml: a plugin is a Rust crate depending on weir-sdk")]
    NotACrate(PathBuf),
    /// cargo could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// cargo failed (its diagnostics were printed above).
    #[error("building {dir} for {PLUGIN_TARGET} failed ({status}); see cargo's messages above")]
    Cargo {
        /// The crate.
        dir: PathBuf,
        /// cargo's exit status.
        status: std::process::ExitStatus,
    },
    /// cargo succeeded but made no .wasm (e.g. the crate is not a `cdylib`).
    #[error("building {0} produced no .wasm file: add `[lib] crate-type = [\"cdylib\", \"rlib\"]` to its Cargo.toml")]
    NoArtifact(PathBuf),
}

/// Build the plugin crate in `dir` (release profile) and return the path of its `.wasm`.
/// cargo's progress and errors go to this process's stderr.
pub fn build_plugin(dir: &Path) -> Result<PathBuf, BuildError> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(BuildError::NotACrate(dir.to_owned()));
    }
    let manifest = manifest.canonicalize().unwrap_or(manifest);
    ensure_target(dir);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(&cargo)
        .current_dir(dir)
        .args(["build", "--release", "--target", PLUGIN_TARGET, "--message-format=json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(&manifest)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| BuildError::Spawn { program: cargo.clone(), source })?;
    if !output.status.success() {
        return Err(BuildError::Cargo { dir: dir.to_owned(), status: output.status });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| {
            msg["reason"] == "compiler-artifact" && msg["manifest_path"].as_str().map(Path::new) == Some(&manifest)
        })
        .flat_map(|msg| msg["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
        .ok_or_else(|| BuildError::NoArtifact(dir.to_owned()))
}

/// Add the wasm target through rustup when it is missing (rustup does not always honour
/// `rust-toolchain.toml`'s `targets` for a toolchain that is already installed).
fn ensure_target(dir: &Path) {
    let installed =
        Command::new("rustup").current_dir(dir).args(["target", "list", "--installed"]).stderr(Stdio::null()).output();
    if let Ok(out) = installed
        && out.status.success()
        && !String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == PLUGIN_TARGET)
    {
        let _ = Command::new("rustup").current_dir(dir).args(["target", "add", PLUGIN_TARGET]).status();
    }
}
