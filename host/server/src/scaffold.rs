//! `weir plugin new`: write a plugin crate that tests, builds and deploys as it is: a projection
//! or a handler over the `orders` topic, from the templates in `host/server/templates/`, depending
//! on the weir SDK by absolute path and pinned to the toolchain of the repository it came from.
//!
//! It only writes files, and only into a directory that is new or empty; it never runs cargo.

use std::path::{Path, PathBuf};

use weir_core::durable;

/// The toolchain the generated crate pins: the same as this repository's.
const RUST_TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");

/// Names the generated crate's code must not take for its plugin type: the prelude's, which the
/// SDK's macros use unqualified in the crate they expand in.
const PRELUDE_NAMES: &[&str] = &[
    "AsMut",
    "AsRef",
    "Box",
    "Clone",
    "Copy",
    "Default",
    "Drop",
    "Eq",
    "Err",
    "Extend",
    "Fn",
    "FnMut",
    "FnOnce",
    "From",
    "FromIterator",
    "Into",
    "IntoIterator",
    "Iterator",
    "None",
    "Ok",
    "Option",
    "Ord",
    "PartialEq",
    "PartialOrd",
    "Result",
    "Send",
    "Sized",
    "Some",
    "String",
    "Sync",
    "ToOwned",
    "ToString",
    "TryFrom",
    "TryInto",
    "Unpin",
    "Vec",
];

/// Names that cannot name a crate's library: Rust's keywords and the crates every plugin links.
const RESERVED_NAMES: &[&str] = &[
    "abstract",
    "alloc",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "core",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "proc_macro",
    "pub",
    "ref",
    "return",
    "self",
    "serde",
    "serde_json",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "weir_sdk",
    "where",
    "while",
    "yield",
];

/// Which plugin to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginTemplate {
    /// Events to rows: orders placed and their amount per customer, in one table.
    Projection,
    /// Events to events: orders over 100 passed on to a topic of its own.
    Handler,
}

impl PluginTemplate {
    /// The template of its `src/lib.rs`.
    fn source(self) -> &'static str {
        match self {
            PluginTemplate::Projection => include_str!("../templates/projection.rs.txt"),
            PluginTemplate::Handler => include_str!("../templates/handler.rs.txt"),
        }
    }
}

impl std::fmt::Display for PluginTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginTemplate::Projection => "projection",
            PluginTemplate::Handler => "handler",
        })
    }
}

/// Why the crate could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name cannot name a crate, a plugin and its table.
    #[error("{name:?} cannot name a plugin: {why}")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The directory holds something already.
    #[error("{dir} already exists and is not empty; give a new or empty directory")]
    NotEmpty {
        /// The directory.
        dir: PathBuf,
    },
    /// The path exists and is a file.
    #[error("{path} exists and is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// No weir SDK at the path the crate would depend on.
    #[error("{path} is not the weir SDK ({why}); pass --sdk PATH or set WEIR_SDK to a weir checkout's sdk directory")]
    NoSdk {
        /// Where it was looked for.
        path: PathBuf,
        /// What is missing there.
        why: String,
    },
    /// Reading or writing a file failed; names the file.
    #[error(transparent)]
    Io(#[from] durable::IoError),
}

/// A `Result` with a [`ScaffoldError`].
pub type Result<T, E = ScaffoldError> = std::result::Result<T, E>;

/// Write a new plugin crate named `name` into `dir` (default `./<name>`), which must be new or
/// empty, and return that directory. The crate depends on the SDK at `sdk`, else at `WEIR_SDK`,
/// else in the checkout this binary was built from.
pub fn new_plugin(name: &str, kind: PluginTemplate, dir: Option<&Path>, sdk: Option<&Path>) -> Result<PathBuf> {
    check_name(name)?;
    let sdk = find_sdk(sdk)?;
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    ensure_empty_dir(&dir)?;

    let source = kind.source();
    let plugin_type = type_name(name, source);
    let table = format!("{}_counts", name.replace('-', "_"));
    let kind_name = kind.to_string();
    let sdk_text = sdk.to_str().ok_or_else(|| ScaffoldError::NoSdk {
        path: sdk.clone(),
        why: "its path is not UTF-8, which Cargo.toml cannot hold".to_string(),
    })?;
    // The placeholders are upper case and the name lower case, so no value is mistaken for a
    // placeholder; the SDK path, which could be anything, goes in last.
    let fill = |template: &str| {
        template
            .replace("__TYPE_NAME__", &plugin_type)
            .replace("__TABLE__", &table)
            .replace("__NAME__", name)
            .replace("__KIND__", &kind_name)
            .replace("__SDK_PATH__", &toml::Value::String(sdk_text.to_string()).to_string())
    };
    let files = [
        ("Cargo.toml", fill(include_str!("../templates/Cargo.toml.txt"))),
        ("rust-toolchain.toml", RUST_TOOLCHAIN.to_string()),
        (".gitignore", "/target\n".to_string()),
        ("README.md", fill(include_str!("../templates/README.md.txt"))),
        ("src/lib.rs", fill(source)),
    ];
    let src = dir.join("src");
    std::fs::create_dir_all(&src).map_err(durable::at(&src))?;
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(durable::at(&path))?;
    }
    Ok(dir)
}

/// A plugin name: lowercase ASCII letters, digits, `-` and `_`, starting with a letter, and not
/// a name Rust or the crate's dependencies already use.
fn check_name(name: &str) -> Result<()> {
    let bad = |why| Err(ScaffoldError::BadName { name: name.to_string(), why });
    if !name.starts_with(|c: char| c.is_ascii_lowercase())
        || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return bad("use lowercase ASCII letters, digits, '-' and '_', starting with a letter");
    }
    if RESERVED_NAMES.contains(&name.replace('-', "_").as_str()) {
        return bad("it is a Rust keyword or the name of a crate every plugin links");
    }
    Ok(())
}

/// The SDK directory, absolute: `given`, else `WEIR_SDK`, else this checkout's `sdk/`.
fn find_sdk(given: Option<&Path>) -> Result<PathBuf> {
    let path = match (given, std::env::var_os("WEIR_SDK")) {
        (Some(path), _) => path.to_path_buf(),
        (None, Some(env)) if !env.is_empty() => PathBuf::from(env),
        (None, _) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk"),
    };
    let no_sdk = |why: String| ScaffoldError::NoSdk { path: path.clone(), why };
    let absolute = path.canonicalize().map_err(|e| no_sdk(e.to_string()))?;
    let manifest = absolute.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|e| no_sdk(format!("{}: {e}", manifest.display())))?;
    let table: toml::Table = text.parse().map_err(|e| no_sdk(format!("{}: {e}", manifest.display())))?;
    let package = table.get("package").and_then(|p| p.get("name")).and_then(toml::Value::as_str);
    if package != Some("weir-sdk") {
        return Err(no_sdk(format!("{} is not the manifest of the weir-sdk package", manifest.display())));
    }
    Ok(absolute)
}

/// Create `dir` unless it exists; refuse it if it holds anything.
fn ensure_empty_dir(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ScaffoldError::NotEmpty { dir: dir.to_path_buf() });
            }
            Ok(())
        }
        Err(_) if dir.exists() && !dir.is_dir() => Err(ScaffoldError::NotADirectory { path: dir.to_path_buf() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(durable::at(dir))?;
            Ok(())
        }
        Err(e) => Err(durable::at(dir)(e).into()),
    }
}

/// The plugin type's name: the name in UpperCamelCase (`high-value` → `HighValue`), with `Plugin`
/// after it when the template or the prelude already uses that identifier.
fn type_name(name: &str, template: &str) -> String {
    let camel: String = name
        .split(['-', '_'])
        .flat_map(|part| {
            let mut chars = part.chars();
            chars.next().map(|first| first.to_ascii_uppercase()).into_iter().chain(chars)
        })
        .collect();
    let taken = PRELUDE_NAMES.contains(&camel.as_str())
        || template.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).any(|word| word == camel);
    if taken { format!("{camel}Plugin") } else { camel }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_sdk() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk")
    }

    #[test]
    fn writes_a_projection_crate_depending_on_the_sdk() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("big-spenders");
        let sdk = repo_sdk();
        let written =
            new_plugin("big-spenders", PluginTemplate::Projection, Some(dir.as_path()), Some(sdk.as_path())).unwrap();
        assert_eq!(written, dir);
        for file in ["Cargo.toml", "rust-toolchain.toml", ".gitignore", "README.md", "src/lib.rs"] {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            for placeholder in ["__NAME__", "__TYPE_NAME__", "__TABLE__", "__KIND__", "__SDK_PATH__"] {
                assert!(!text.contains(placeholder), "{file} still holds {placeholder}");
            }
        }

        let manifest: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap().parse().unwrap();
        assert_eq!(manifest["package"]["name"].as_str(), Some("big-spenders"));
        assert_eq!(manifest["package"]["edition"].as_str(), Some("2024"));
        assert!(manifest["workspace"].as_table().unwrap().is_empty(), "a workspace of its own");
        let sdk = sdk.canonicalize().unwrap();
        assert_eq!(manifest["dependencies"]["weir-sdk"]["path"].as_str(), sdk.to_str());
        let crate_types = manifest["lib"]["crate-type"].as_array().unwrap();
        assert_eq!(crate_types.iter().filter_map(toml::Value::as_str).collect::<Vec<_>>(), ["cdylib", "rlib"]);

        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains("pub struct BigSpenders;"));
        assert!(lib.contains(r#"ProjectionInfo::new("big-spenders", env!("CARGO_PKG_VERSION"))"#));
        assert!(lib.contains(r#"as "big_spenders_counts" key(customer_id)"#));
        assert!(lib.contains("weir_sdk::export_projection!(BigSpenders);"));
        let toolchain = std::fs::read_to_string(dir.join("rust-toolchain.toml")).unwrap();
        assert!(toolchain.contains("wasm32-wasip2"));
    }

    #[test]
    fn writes_a_handler_crate_into_an_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        new_plugin("alerts", PluginTemplate::Handler, Some(dir.path()), Some(repo_sdk().as_path())).unwrap();
        let lib = std::fs::read_to_string(dir.path().join("src/lib.rs")).unwrap();
        assert!(lib.contains("impl Handler for Alerts {"));
        assert!(lib.contains(r#"pub const OUT_TOPIC: &str = "alerts-out";"#));
        assert!(lib.contains("weir_sdk::export_handler!(Alerts);"));
    }

    #[test]
    fn a_type_name_the_template_uses_gets_a_suffix() {
        assert_eq!(type_name("order-placed", PluginTemplate::Handler.source()), "OrderPlacedPlugin");
        assert_eq!(type_name("result", ""), "ResultPlugin");
        assert_eq!(type_name("vip_orders-2", ""), "VipOrders2");
    }

    #[test]
    fn names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["", "Orders", "2fast", "-x", "my orders", "ordérs", "fn", "weir-sdk", "self"] {
            let out = dir.path().join("out");
            let refused = new_plugin(name, PluginTemplate::Projection, Some(out.as_path()), Some(repo_sdk().as_path()));
            assert!(matches!(refused, Err(ScaffoldError::BadName { .. })), "{name:?} was accepted");
            assert!(!out.exists(), "{name:?} wrote files");
        }
    }

    #[test]
    fn a_non_empty_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let refused = new_plugin("orders2", PluginTemplate::Projection, Some(dir.path()), Some(repo_sdk().as_path()));
        assert!(matches!(refused, Err(ScaffoldError::NotEmpty { .. })));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing was written");
    }

    #[test]
    fn a_directory_without_the_sdk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let not_sdk = tempfile::tempdir().unwrap();
        let out = dir.path().join("orders2");
        let refused = new_plugin("orders2", PluginTemplate::Handler, Some(out.as_path()), Some(not_sdk.path()));
        let error = refused.unwrap_err();
        assert!(matches!(error, ScaffoldError::NoSdk { .. }));
        assert!(error.to_string().contains("pass --sdk PATH or set WEIR_SDK"), "{error}");
        assert!(!out.exists());
    }
}
