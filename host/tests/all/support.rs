//! Shared test support: building plugins once per test binary, loading them, making events.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use weir_host::event::{Event, Position};
use weir_host::plugin::{Limits, Plugin, PluginRuntime};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The fixture crates' directory.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

/// Build (once) and return the .wasm of a fixture (by directory name) or example plugin.
pub fn wasm(name: &str) -> PathBuf {
    static BUILT: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let mut dirs: Vec<PathBuf> = vec![repo().join("plugins/orders"), repo().join("plugins/high-value-orders")];
        dirs.extend(fixture_names().into_iter().map(|n| fixtures_dir().join(n)));
        dirs.into_iter()
            .map(|dir| {
                let name = dir.file_name().unwrap().to_string_lossy().into_owned();
                let wasm = weir_host::build::build_plugin(&dir).unwrap_or_else(|e| panic!("building {name}: {e}"));
                (name, wasm)
            })
            .collect()
    });
    built.get(name).unwrap_or_else(|| panic!("no plugin or fixture named {name}")).clone()
}

/// Names of the fixture crates (directories with a Cargo.toml, but `common`, their shared library).
pub fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").is_file() && e.file_name() != "common")
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Limits small enough for hostile tests to finish quickly.
pub fn test_limits() -> Limits {
    Limits { memory_bytes: 32 << 20, cpu_ms_per_batch: 500, max_output_bytes_per_event: 1 << 20, state_bytes: 64 << 20 }
}

/// A runtime with test limits and no cache.
pub fn runtime() -> PluginRuntime {
    PluginRuntime::new(test_limits(), None).expect("runtime")
}

/// Load a plugin or fixture by name.
pub fn load(runtime: &PluginRuntime, name: &str) -> Plugin {
    runtime.load(&wasm(name), BTreeMap::new()).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// An event on the `fixtures` topic.
pub fn fixture_event(offset: u64, event_type: &str) -> Event {
    Event {
        id: format!("e-{offset}"),
        event_type: event_type.to_string(),
        key: Some(format!("k-{offset}")),
        payload: b"{}".to_vec(),
        content_type: "application/json".into(),
        position: Position { topic: "fixtures".into(), partition: 0, offset },
        ..Event::default()
    }
}

/// Events at offsets `0..n` of type `Normal`, except `Misbehave` at `bad`.
pub fn batch_with(n: u64, bad: &[(u64, &str)]) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let kind = bad.iter().find(|(o, _)| *o == i).map_or("Normal", |(_, k)| *k);
            fixture_event(i, kind)
        })
        .collect()
}
