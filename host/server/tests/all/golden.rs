//! Golden test: the orders projection as wasm gives exactly the row changes recorded in
//! `plugins/orders/tests/golden/changes.txt`, which the plugin's native test (weir-sdk's harness,
//! no wasm) checks against too, so native and wasm agree. `BLESS=1` rewrites the files.

use weir_core::event::{Event, Position};
use weir_runtime::Failure;

use crate::support::{load, repo, runtime};

#[derive(serde::Serialize, serde::Deserialize)]
struct GoldenEvent {
    offset: u64,
    #[serde(rename = "type")]
    event_type: String,
    key: String,
    time: i64,
    payload: String,
}

fn golden_dir() -> std::path::PathBuf {
    repo().join("plugins/orders/tests/golden")
}

fn blessing() -> bool {
    std::env::var_os("BLESS").is_some()
}

/// The input events: recorded once from the sample stream plus the demo's bad events.
fn events() -> Vec<Event> {
    let path = golden_dir().join("events.jsonl");
    if blessing() && !path.exists() {
        let mut events = weir_host::sample::OrderStream::take_events(11, 20, 400);
        events.extend(weir_host::demo::bad_events(events.len() as u64));
        let lines: Vec<String> = events
            .iter()
            .map(|e| {
                serde_json::to_string(&GoldenEvent {
                    offset: e.position.offset,
                    event_type: e.event_type.clone(),
                    key: e.key.clone().unwrap_or_default(),
                    time: e.time_us,
                    payload: String::from_utf8_lossy(&e.payload).into_owned(),
                })
                .unwrap()
            })
            .collect();
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with BLESS=1 to create it)", path.display()));
    text.lines()
        .map(|line| {
            let g: GoldenEvent = serde_json::from_str(line).unwrap();
            Event {
                id: format!("golden-{}", g.offset),
                event_type: g.event_type,
                key: Some(g.key),
                payload: g.payload.into_bytes(),
                content_type: "application/json".into(),
                time_us: g.time,
                position: Position { topic: "orders".into(), partition: 0, offset: g.offset },
                ..Event::default()
            }
        })
        .collect()
}

#[test]
fn orders_wasm_matches_the_golden_row_changes() {
    let events = events();
    let runtime = runtime();
    let mut orders = load(&runtime, "orders");
    let mut rendered = String::new();
    // Odd-sized batches, so batch boundaries fall everywhere.
    for chunk in events.chunks(37) {
        for (event, outcome) in chunk.iter().zip(orders.apply(chunk)) {
            rendered.push_str(&format!("{} {}:", event.position.offset, event.event_type));
            match outcome {
                Ok(changes) => {
                    rendered.push('\n');
                    for change in changes {
                        rendered.push_str(&format!("  {change}\n"));
                    }
                }
                Err(e) => match e.failure {
                    Failure::Refused(message) => rendered.push_str(&format!(" refused: {message}\n")),
                    other => panic!("unexpected failure {other}"),
                },
            }
        }
    }
    let path = golden_dir().join("changes.txt");
    if blessing() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(rendered == expected, "wasm output differs from {} (BLESS=1 rewrites it)", path.display());
    assert!(expected.contains("refused: order o-999999999 cannot become paid: it was never placed"));
}
