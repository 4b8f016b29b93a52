//! The orders logic, natively through weir-sdk's harness (no wasm): its row changes for the
//! recorded events must match `golden/changes.txt`, the same file the host's test checks the
//! wasm build against. `BLESS=1` rewrites it.

use orders::Orders;
use weir_sdk::testing::ProjectionHarness;
use weir_sdk::{Event, Position, Timestamp};

#[derive(serde::Deserialize)]
struct GoldenEvent {
    offset: u64,
    #[serde(rename = "type")]
    event_type: String,
    key: String,
    time: i64,
    payload: String,
}

fn golden(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

#[test]
fn native_matches_the_golden_row_changes() {
    let text = std::fs::read_to_string(golden("events.jsonl")).expect("events.jsonl");
    let events: Vec<Event> = text
        .lines()
        .map(|line| {
            let g: GoldenEvent = serde_json::from_str(line).unwrap();
            Event {
                id: format!("golden-{}", g.offset),
                event_type: g.event_type,
                key: Some(g.key),
                payload: g.payload.into_bytes(),
                content_type: "application/json".into(),
                time: Timestamp(g.time),
                position: Position { topic: "orders".into(), partition: 0, offset: g.offset },
                ..Event::default()
            }
        })
        .collect();
    let mut harness = ProjectionHarness::<Orders>::new();
    let mut rendered = String::new();
    for chunk in events.chunks(37) {
        for (event, outcome) in chunk.iter().zip(harness.apply(chunk.to_vec())) {
            rendered.push_str(&format!("{} {}:", event.position.offset, event.event_type));
            match outcome {
                Ok(changes) => {
                    rendered.push('\n');
                    for change in changes {
                        rendered.push_str(&format!("  {change}\n"));
                    }
                }
                Err(e) => rendered.push_str(&format!(" refused: {e}\n")),
            }
        }
    }
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(golden("changes.txt"), &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(golden("changes.txt")).unwrap();
    assert!(rendered == expected, "native output differs from golden/changes.txt (BLESS=1 rewrites it)");
}

#[test]
fn life_cycle_rules() {
    let mut harness = ProjectionHarness::<Orders>::new();
    let placed = serde_json::json!({"order_id": "o-1", "customer_id": "c-1", "amount": 10.5});
    let o1 = serde_json::json!({"order_id": "o-1"});
    let out = harness.apply([
        Event::json_event("OrderPlaced", "o-1", &placed),
        Event::json_event("OrderShipped", "o-1", &o1),
        Event::json_event("OrderPaid", "o-1", &o1),
        Event::json_event("OrderPlaced", "o-1", &placed),
        Event::json_event("OrderCancelled", "o-1", &o1),
    ]);
    assert!(out[0].is_ok());
    assert_eq!(out[1].as_ref().unwrap_err().message(), "order o-1 cannot become shipped: it is placed");
    assert!(out[2].is_ok());
    assert_eq!(out[3].as_ref().unwrap_err().message(), "order o-1 was already placed");
    // Cancelling a paid order refunds its revenue.
    let cancel = out[4].as_ref().unwrap();
    assert_eq!(cancel[0].to_string(), r#"upsert customer_revenue("c-1", 1, 1, 1, 0.0, ts(0))"#);
    assert!(cancel[1].to_string().starts_with(r#"upsert orders("o-1", "c-1", "cancelled", 10.5"#));
    // Refused events left no state behind: one order and one customer.
    assert_eq!(harness.state_len(), 2);
}
