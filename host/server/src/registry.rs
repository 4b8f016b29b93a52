//! The plugin registry: every version of every plugin deployed to this host, what serves now,
//! what is being rebuilt, and what is paused, so that a restart brings back exactly the plugins
//! that ran before it.
//!
//! Layout under the data directory: `components/<sha256>.wasm` (each deployed component once, by
//! content hash) and `plugins.json` (the entries), rewritten atomically on every change.
//!
//! Plugins listed in the config file are recorded here too, as deploys with origin `config`: a
//! `[[plugin]]` whose component and parameters the registry already holds keeps whatever was
//! deployed on top of it since (CLI deploys persist over an unchanged config); a changed one is a
//! new deploy; one no longer listed stops, unless a CLI deploy replaced it.
//!
//! It knows nothing of the pipeline: the ingest loop tells it what happened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::status::VersionRecord;
use weir_core::durable;
use weir_core::event::StartAt;

/// Version of the registry's layout.
const FORMAT: u32 = 1;

/// Why the registry could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A file operation failed; names the file.
    #[error(transparent)]
    Io(#[from] durable::IoError),
    /// `plugins.json` is not what this host writes.
    #[error("{path} is not a valid plugin registry: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A `Result` with a [`RegistryError`].
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Where a version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A `[[plugin]]` of the config file.
    Config,
    /// `POST /v1/plugins` (`weir plugin deploy`).
    Api,
}

/// One deployed version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Version {
    /// Deploy number under this name, from 1.
    pub deploy: u32,
    /// SHA-256 of the component, hex.
    pub component: String,
    /// The version the plugin declared.
    pub version: String,
    /// Milliseconds since the Unix epoch.
    pub deployed_ms: u64,
    /// Deploy-time parameters.
    pub params: BTreeMap<String, String>,
    /// Where it starts without a checkpoint of its own.
    pub start: StartAt,
    /// Where it came from.
    pub origin: Origin,
    /// Whether the config file's path was a crate directory or `.wasm` file (config deploys: the
    /// path, to recognise it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_path: Option<PathBuf>,
    /// The checkpoint fingerprints of the versions it took over from, directly or through other
    /// swaps (handlers and `--take-over` projections): a checkpoint of one of them is this
    /// version's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub takes_over: Vec<String>,
    /// What an event it fails on does.
    #[serde(default)]
    pub on_error: crate::output::OnError,
}

/// One plugin name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The name plugins run under.
    pub name: String,
    /// Every version deployed, oldest first.
    pub versions: Vec<Version>,
    /// The deploy serving now (`None`: removed).
    pub current: Option<u32>,
    /// A deploy being rebuilt beside the current one (started again after a restart).
    #[serde(default)]
    pub building: Option<u32>,
    /// Paused: keeps its position and tables, processes nothing.
    #[serde(default)]
    pub paused: bool,
}

impl Entry {
    /// The version with deploy number `deploy`.
    pub fn version(&self, deploy: u32) -> Option<&Version> {
        self.versions.iter().find(|v| v.deploy == deploy)
    }

    /// The version serving now.
    pub fn current_version(&self) -> Option<&Version> {
        self.current.and_then(|d| self.version(d))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    format: u32,
    plugins: Vec<Entry>,
}

/// The registry of one data directory.
#[derive(Debug)]
pub struct Registry {
    file: PathBuf,
    components: PathBuf,
    entries: Vec<Entry>,
}

impl Registry {
    /// Open (or start) the registry of `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Registry> {
        let file = data_dir.join("plugins.json");
        let components = data_dir.join("components");
        std::fs::create_dir_all(&components).map_err(durable::at(&components))?;
        let entries = match std::fs::read(&file) {
            Ok(bytes) => {
                let parsed: RegistryFile = serde_json::from_slice(&bytes)
                    .map_err(|e| RegistryError::Invalid { path: file.clone(), message: e.to_string() })?;
                if parsed.format != FORMAT {
                    return Err(RegistryError::Invalid {
                        path: file,
                        message: format!("format {} is not {FORMAT}", parsed.format),
                    });
                }
                parsed.plugins
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(durable::at(&file)(e).into()),
        };
        Ok(Registry { file, components, entries })
    }

    /// Every plugin name ever deployed.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry of `name`.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    fn entry_mut(&mut self, name: &str) -> &mut Entry {
        if let Some(i) = self.entries.iter().position(|e| e.name == name) {
            return &mut self.entries[i];
        }
        self.entries.push(Entry {
            name: name.to_string(),
            versions: Vec::new(),
            current: None,
            building: None,
            paused: false,
        });
        let last = self.entries.len() - 1;
        &mut self.entries[last]
    }

    /// Keep `bytes` as `components/<hash>.wasm` (once per content); returns the file.
    pub fn store_component(&self, hash: &str, bytes: &[u8]) -> Result<PathBuf> {
        let path = self.component_path(hash);
        if !path.is_file() {
            durable::write_atomically(&path, bytes)?;
        }
        Ok(path)
    }

    /// The file of component `hash`.
    pub fn component_path(&self, hash: &str) -> PathBuf {
        self.components.join(format!("{hash}.wasm"))
    }

    /// Record a new version of `name` (not yet serving); returns its deploy number.
    pub fn add_version(&mut self, name: &str, mut version: Version) -> u32 {
        let entry = self.entry_mut(name);
        version.deploy = entry.versions.iter().map(|v| v.deploy).max().unwrap_or(0) + 1;
        let deploy = version.deploy;
        entry.versions.push(version);
        deploy
    }

    /// The deploy of `name` with this component and parameters from the config file, if the
    /// registry has it.
    pub fn find_config_version(&self, name: &str, component: &str, params: &BTreeMap<String, String>) -> Option<u32> {
        self.entry(name)?
            .versions
            .iter()
            .rev()
            .find(|v| v.origin == Origin::Config && v.component == component && &v.params == params)
            .map(|v| v.deploy)
    }

    /// Make `deploy` the version of `name` serving now (and no longer one being built).
    pub fn set_current(&mut self, name: &str, deploy: u32) {
        let entry = self.entry_mut(name);
        entry.current = Some(deploy);
        if entry.building == Some(deploy) {
            entry.building = None;
        }
    }

    /// Record the checkpoint fingerprints `deploy` of `name` accepts as its own.
    pub fn set_takes_over(&mut self, name: &str, deploy: u32, chain: Vec<String>) {
        if let Some(version) = self.entry_mut(name).versions.iter_mut().find(|v| v.deploy == deploy) {
            version.takes_over = chain;
        }
    }

    /// Record that `deploy` of `name` is being rebuilt beside the current one (`None`: not any
    /// more).
    pub fn set_building(&mut self, name: &str, deploy: Option<u32>) {
        self.entry_mut(name).building = deploy;
    }

    /// Record `name` paused or not.
    pub fn set_paused(&mut self, name: &str, paused: bool) {
        self.entry_mut(name).paused = paused;
    }

    /// Record `name` removed (its versions stay listed; deploying it again starts a new one).
    pub fn remove(&mut self, name: &str) {
        let entry = self.entry_mut(name);
        entry.current = None;
        entry.building = None;
        entry.paused = false;
    }

    /// The deploy `rollback` returns to: the newest version older than the current one.
    pub fn previous(&self, name: &str) -> Option<u32> {
        let entry = self.entry(name)?;
        let current = entry.current?;
        entry.versions.iter().map(|v| v.deploy).filter(|d| *d < current).max()
    }

    /// The versions of `name` as the API shows them.
    pub fn records(&self, name: &str) -> Option<Vec<VersionRecord>> {
        let entry = self.entry(name)?;
        Some(
            entry
                .versions
                .iter()
                .map(|v| VersionRecord {
                    deploy: v.deploy,
                    component: v.component.clone(),
                    version: v.version.clone(),
                    deployed_ms: v.deployed_ms,
                    params: v.params.clone(),
                    start: v.start,
                    origin: match v.origin {
                        Origin::Config => "config".into(),
                        Origin::Api => "api".into(),
                    },
                    current: entry.current == Some(v.deploy),
                })
                .collect(),
        )
    }

    /// Write the registry (atomically).
    pub fn save(&self) -> Result<()> {
        let (path, text) = self.encode()?;
        durable::write_atomically(&path, &text)?;
        Ok(())
    }

    /// The file and what [`Registry::save`] would write to it, to write elsewhere (off a thread
    /// that must not wait for the disk) with `weir_core::durable::write_atomically`.
    pub fn encode(&self) -> Result<(PathBuf, Vec<u8>)> {
        let file = RegistryFile { format: FORMAT, plugins: self.entries.clone() };
        let text = serde_json::to_vec_pretty(&file)
            .map_err(|e| RegistryError::Invalid { path: self.file.clone(), message: e.to_string() })?;
        Ok((self.file.clone(), text))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(component: &str, origin: Origin) -> Version {
        Version {
            deploy: 0,
            component: component.into(),
            version: "0.1.0".into(),
            deployed_ms: 1,
            params: BTreeMap::new(),
            start: StartAt::Earliest,
            origin,
            config_path: None,
            takes_over: Vec::new(),
            on_error: Default::default(),
        }
    }

    #[test]
    fn versions_are_numbered_kept_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::open(dir.path()).unwrap();
        let first = registry.add_version("orders", version("aa", Origin::Config));
        registry.set_current("orders", first);
        let second = registry.add_version("orders", version("bb", Origin::Api));
        registry.set_building("orders", Some(second));
        registry.set_paused("orders", true);
        registry.save().unwrap();

        let mut again = Registry::open(dir.path()).unwrap();
        let entry = again.entry("orders").unwrap();
        assert_eq!((first, second), (1, 2));
        assert_eq!((entry.current, entry.building, entry.paused), (Some(1), Some(2), true));
        assert_eq!(again.find_config_version("orders", "aa", &BTreeMap::new()), Some(1));
        assert_eq!(again.find_config_version("orders", "bb", &BTreeMap::new()), None);
        again.set_current("orders", 2);
        assert_eq!(again.previous("orders"), Some(1));
        assert_eq!(again.entry("orders").unwrap().building, None);
        let records = again.records("orders").unwrap();
        assert!(records[1].current && !records[0].current);
    }

    #[test]
    fn a_registry_that_is_not_json_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("plugins.json"), "{").unwrap();
        let error = Registry::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains("plugins.json is not a valid plugin registry"), "{error}");
    }
}
