//! The real `weir` binary, as a user runs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use crate::support::{repo, wasm};

fn weir() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command.current_dir(repo()).stdin(Stdio::null());
    command
}

/// A plain HTTP/1.1 GET; returns (status line, body).
fn get(addr: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// Kills the child when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn version_and_inspect() {
    let out = weir().arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("weir {}", env!("CARGO_PKG_VERSION")));

    let out = weir().args(["plugin", "inspect"]).arg(wasm("orders")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["name"], "orders");
    assert_eq!(info["kind"]["world"], "projection");
    let tables: Vec<&str> =
        info["kind"]["tables"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(tables, ["orders", "customer_revenue"]);
    assert_eq!(info["kind"]["tables"][0]["primary_key"][0], "order_id");

    let out = weir().args(["plugin", "inspect", "Cargo.toml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Cargo.toml is not a WebAssembly file"));
}

#[test]
fn plugin_build_prints_the_component_path() {
    let out = weir().args(["plugin", "build", "plugins/orders"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(path.ends_with("wasm32-wasip2/release/orders.wasm"), "{path}");
    assert!(std::path::Path::new(&path).is_file());

    let out = weir().args(["plugin", "build", "config"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("config has no Cargo.toml"));
}

#[test]
fn demo_prints_answers_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let out = weir()
        .args(["demo", "--no-serve", "--events", "3000", "--pg", "off", "--flight", "off", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("SELECT status, count(*) AS orders"), "{stdout}");
    assert!(stdout.contains(" shipped "), "{stdout}");
    assert!(stdout.contains("orders@0.1.0: 3000 ok, 3 failed"), "{stdout}");
    assert!(stdout.contains("plugin orders@0.1.0 failed on event orders/"), "{stdout}");
    assert!(stdout.contains("(OrderPaid): refused it"), "{stdout}");
    assert!(stdout.contains("wrote 3003 events to the embedded log"), "{stdout}");
}

#[test]
fn serve_loads_configured_plugins_and_answers_http() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhttp = \"127.0.0.1:0\"\npg = \"127.0.0.1:0\"\nflight = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\n[[plugin]]\npath = {:?}\n\n[[plugin]]\npath = {:?}\nparams = {{ threshold = \"10\" }}\n",
            wasm("orders"),
            wasm("high-value-orders")
        ),
    )
    .unwrap();
    let mut child = weir()
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _running = Running(child);
    let addr = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("serving http://").map(|rest| rest.split('/').next().unwrap().to_string()))
        .expect("weir serve never said where it listens");

    let (status, body) = get(&addr, "/v1/plugins");
    assert!(status.contains("200"), "{status}");
    let plugins: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = plugins.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["orders", "high-value-orders"]);

    let (status, body) = get(&addr, "/v1/nope");
    assert!(status.contains("404"), "{status}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"]["message"],
        "no route for GET /v1/nope"
    );

    let (status, body) = get(&addr, "/");
    assert!(status.contains("200") && body.contains("<title>weir</title>"));
}

#[test]
fn config_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[server]\nhttp = \"127.0.0.1:0\"\n\n[limits]\nmemory_byte = 5\n").unwrap();
    let out = weir().args(["serve", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:5:1: unknown field `memory_byte`"), "{stderr}");

    std::fs::write(&config, "[[plugin]]\npath = \"nowhere.wasm\"\n").unwrap();
    let out = weir().args(["serve", "--config"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("loading plugin") && stderr.contains("nowhere.wasm"), "{stderr}");
}

/// The code blocks of README.md's "Write your first plugin", dedented.
fn readme_block(lang: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = &readme[readme.find("## Write your first plugin").expect("README section")..];
    let start = section.find(&format!("```{lang}\n")).expect("code block") + lang.len() + 4;
    let body = &section[start..];
    let end = body.find("```").unwrap();
    body[..end]
        .lines()
        .map(|l| l.strip_prefix("   ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        .trim_end()
        .to_string()
        + "\n"
}

#[test]
fn the_readme_first_plugin_builds_tests_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("channels");
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    let sdk = repo().join("sdk").canonicalize().unwrap();
    // Standalone here (not inside plugins/), so it gets its own [workspace] and an absolute SDK path.
    let manifest = readme_block("toml")
        .replace("path = \"../../sdk\"", &format!("path = {:?}", sdk.display().to_string()))
        + "\n[workspace]\n";
    std::fs::write(crate_dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(crate_dir.join("src/lib.rs"), readme_block("rust")).unwrap();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let test = Command::new(&cargo).current_dir(&crate_dir).args(["test", "--quiet"]).output().unwrap();
    assert!(test.status.success(), "README plugin's native test: {}", String::from_utf8_lossy(&test.stderr));

    let data = tempfile::tempdir().unwrap();
    let out = weir()
        .args(["demo", "--no-serve", "--events", "2000", "--pg", "off", "--flight", "off", "--data-dir"])
        .arg(data.path())
        .arg("--plugin")
        .arg(&crate_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout
            .contains("SELECT count(*) AS rows FROM channels.channel_orders;\n+------+\n| rows |\n+------+\n| 3    |"),
        "{stdout}"
    );
}

#[test]
fn weir_sql_asks_a_running_demo() {
    let data = tempfile::tempdir().unwrap();
    let mut child = weir()
        .args(["demo", "--events", "2000", "--http", "127.0.0.1:0", "--pg", "off", "--flight", "off", "--data-dir"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _running = Running(child);
    let mut lines = BufReader::new(stdout).lines();
    let url = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            line.strip_prefix("serving ").map(|rest| rest.split('/').take(3).collect::<Vec<_>>().join("/"))
        })
        .expect("weir demo never said where it listens");
    // Keep reading what the demo prints, as a terminal would.
    std::thread::spawn(move || lines.for_each(drop));

    let out = weir().args(["sql", "--url", &url, "SELECT count(*) AS n FROM orders.orders"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("| n ") && text.contains("(1 rows)"), "{text}");

    let out = weir()
        .args(["sql", "--url", &url, "--format", "csv", "SELECT status FROM orders WHERE order_id = 'o-000000001'"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "status\nshipped\n");

    let out = weir().args(["sql", "--url", &url, "DELETE FROM orders"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: weir's SQL is read-only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = weir().args(["sql", "--url", "http://127.0.0.1:1", "SELECT 1"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach weir at http://127.0.0.1:1"));
}
