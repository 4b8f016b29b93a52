//! What a hostile web page, a host name pointed at loopback, or a client with the token but bad
//! intentions can do to a real `weir serve` (issue 32, items 6, 7, 9 and 10). Each test asks as
//! the attacker would and checks the refusal and that nothing changed.

use std::ffi::OsStr;

use crate::lifecycle::{number, serve};
use crate::support::{WeirProcess, wasm, write_config};

const COUNT: &[u8] = br#"{"sql": "SELECT count(*) AS n FROM seen"}"#;

/// A request written by hand (so the `Host` header is exactly `host`); the status and what
/// followed the headers.
fn raw(addr: &str, method: &str, path: &str, host: &str, body: Option<&[u8]>) -> (u16, String) {
    raw_typed(addr, method, path, host, body, Some("application/json"))
}

/// [`raw`] with this content type (or none) for the body.
fn raw_typed(
    addr: &str,
    method: &str,
    path: &str,
    host: &str,
    body: Option<&[u8]>,
    kind: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(body) = body {
        if let Some(kind) = kind {
            request.push_str(&format!("Content-Type: {kind}\r\n"));
        }
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    let mut bytes = format!("{request}\r\n").into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&bytes).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let code = answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status: {answer:?}"));
    (code, answer.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string()))
}

fn served(extra: &str) -> (tempfile::TempDir, WeirProcess) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("tally", "")], extra);
    let weir = serve(&config);
    (dir, weir)
}

/// Item 6: DNS rebinding. A page on `evil.example`, whose name now resolves to 127.0.0.1, is
/// same-origin with the API to the browser; its requests say `Host: evil.example:PORT`. Before,
/// they were answered (200, every table readable); now 421, unless the name is in
/// `[server] allowed_hosts`.
#[test]
fn a_request_addressed_to_another_host_name_is_refused_unless_allowed() {
    let (_dir, weir) = served("");
    let port = weir.http.rsplit(':').next().unwrap().to_string();
    for host in [format!("evil.example:{port}"), "evil.example".into(), format!("127.0.0.1.evil.example:{port}")] {
        let (code, text) = raw(&weir.http, "POST", "/v1/sql", &host, Some(COUNT));
        assert_eq!(code, 421, "Host: {host}: {text}");
        assert!(text.contains("allowed_hosts"), "{text}");
        let (code, _) = raw(&weir.http, "GET", "/v1/status", &host, None);
        assert_eq!(code, 421, "GET /v1/status with Host: {host}");
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LOCALHOST.:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (code, text) = raw(&weir.http, "POST", "/v1/sql", &host, Some(COUNT));
        assert_eq!(code, 200, "Host: {host}: {text}");
    }
    drop(weir);

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("tally", "")], "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[server]\n", "[server]\nallowed_hosts = [\"weir.internal\"]\n");
    std::fs::write(&config, text).unwrap();
    let weir = WeirProcess::start(&[OsStr::new("serve"), OsStr::new("--config"), config.as_os_str()]);
    let (code, text) = raw(&weir.http, "POST", "/v1/sql", "weir.internal:7070", Some(COUNT));
    assert_eq!(code, 200, "{text}");
    let (code, _) = raw(&weir.http, "POST", "/v1/sql", "evil.example", Some(COUNT));
    assert_eq!(code, 421);
}

/// Item 7: any web page could make the host run SQL: a cross-origin `text/plain` POST (which a
/// browser sends without asking first) was executed. Now a request from another origin is
/// refused on every route but the dashboard's own, and a body must be of the type its route
/// reads, which no page elsewhere can send without the host's consent.
#[test]
fn a_page_of_another_origin_cannot_query_or_change_anything() {
    let (_dir, weir) = served("");
    let auth = format!("Bearer {}", weir.token);
    let evil = ("origin", "http://evil.example");
    let (code, text) = weir.request("POST", "/v1/sql", Some(COUNT), &[evil, ("content-type", "text/plain")]);
    assert_eq!(code, 403, "{text}");
    let (code, text) = weir.request("POST", "/v1/sql", Some(COUNT), &[evil, ("content-type", "application/json")]);
    assert_eq!(code, 403, "{text}");
    let (code, _) = weir.request("GET", "/v1/status", None, &[evil]);
    assert_eq!(code, 403, "a page elsewhere reads the status");
    let (code, _) = weir.request("GET", "/", None, &[evil]);
    assert_eq!(code, 200, "the dashboard's page itself may be loaded");
    // Without an Origin (a browser that strips it), the body types a page can send unasked.
    for kind in [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (code, text) = weir.request("POST", "/v1/sql", Some(COUNT), &[("content-type", kind)]);
        assert_eq!(code, 415, "{kind}: {text}");
        let body = br#"{"type": "Tick", "key": "k", "data": {}}"#;
        let (code, text) = weir.request(
            "POST",
            "/v1/topics/events/events",
            Some(body),
            &[("content-type", kind), ("authorization", &auth)],
        );
        assert_eq!(code, 415, "{kind}: {text}");
    }
    let (code, text) = raw_typed(&weir.http, "POST", "/v1/sql", "127.0.0.1", Some(COUNT), None);
    assert_eq!(code, 415, "no content type: {text}");
    // The dashboard's own page (same origin) still works.
    let own = format!("http://{}", weir.http);
    let (code, text) =
        weir.request("POST", "/v1/sql", Some(COUNT), &[("origin", &own), ("content-type", "application/json")]);
    assert_eq!(code, 200, "{text}");
    assert_eq!(number(&weir, "SELECT count(*) FROM seen"), 0, "something was written");
}

/// Item 9: the host's own topics and headers. With the token, a tick from the year 9999 was
/// accepted on `weir.ticks` (firing every timer, moving handlers' clocks for ever), a journal
/// line could be forged, and `weir-*` headers on input events won in dead-letter listings and
/// switched output ids. Now produce to `weir.*` is refused, and so is an event with a `weir-`
/// header.
#[test]
fn producers_cannot_write_the_hosts_own_topics_or_headers() {
    let (_dir, weir) = served("");
    let tick = br#"{"type": "weir.tick", "time": "9999-01-01T00:00:00Z", "data": {}}"#;
    for topic in ["weir.ticks", "weir.journal.tally", "weir.dlq.tally"] {
        let (code, text) = weir.post(&format!("/v1/topics/{topic}/events"), tick);
        assert_eq!(code, 403, "{topic}: {text}");
        assert!(text.contains("the host's own"), "{text}");
    }
    let forged = b"{\"type\": \"Tick\", \"key\": \"k\", \"data\": {}}\n{\"type\": \"Tick\", \"key\": \"k\", \"headers\": {\"weir-timer\": \"k\"}, \"data\": {}}\n";
    let (code, text) = weir.post("/v1/topics/events/events", forged);
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("event 2 of the body") && text.contains("weir-timer"), "{text}");
    assert_eq!(number(&weir, "SELECT count(*) FROM seen"), 0, "part of a refused body was written");
}

/// Item 10: plugin names without a length limit (past 236 characters the journal topic was
/// invalid, past 255 every checkpoint failed). A name over the limit is refused at deploy,
/// declared or given with `?name=`.
#[test]
fn a_plugin_name_over_the_limit_is_refused_at_deploy() {
    let (_dir, weir) = served("");
    let bytes = std::fs::read(wasm("relay")).unwrap();
    let long = "r".repeat(weir_core::event::MAX_PLUGIN_NAME + 1);
    let auth = format!("Bearer {}", weir.token);
    let (code, text) = weir.request(
        "POST",
        &format!("/v1/plugins?name={long}"),
        Some(&bytes),
        &[("authorization", &auth), ("content-type", "application/wasm")],
    );
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("is not a plugin name (1 to 64"), "{text}");
    let (code, text) = weir.request(
        "POST",
        "/v1/plugins?name=..%2Fescape",
        Some(&bytes),
        &[("authorization", &auth), ("content-type", "application/wasm")],
    );
    assert_eq!(code, 400, "a name that is a path: {text}");
    let plugins = weir.admin("GET", "/v1/plugins", None);
    assert_eq!(plugins.as_array().unwrap().len(), 1, "{plugins:#}");
}
