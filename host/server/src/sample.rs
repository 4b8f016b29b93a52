//! Deterministic event streams, the food of the demo, the tests and the benchmark: order
//! life-cycle events (`OrderPlaced`, `OrderPaid`, `OrderShipped`, `OrderCancelled`) and account
//! transactions (`Transaction`, for the benchmark's minimal projection).
//!
//! Order `k` is placed at step `k`, paid (or, one in ten, cancelled unpaid) at step `k + 2`, and
//! shipped (or, one in ten, cancelled after payment) at step `k + 5`. Payloads are JSON of about
//! 200 bytes. The same seed always gives the same events.

use weir_core::event::{Event, Position};

/// Topic the events are written to.
pub const ORDERS_TOPIC: &str = "orders";

/// Microseconds between two steps of the stream.
const STEP_US: i64 = 1_000;
/// Event time of step 0: 2026-01-01T00:00:00Z.
const EPOCH_US: i64 = 1_767_225_600_000_000;

/// A well-mixed 64-bit value for step `k` of a stream seeded `seed` (splitmix64's finaliser).
fn mix(seed: u64, k: u64, salt: u64) -> u64 {
    let mut z = seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Generates order events.
#[derive(Debug, Clone)]
pub struct OrderStream {
    seed: u64,
    customers: u64,
    step: u64,
    pending: std::collections::VecDeque<Event>,
    offset: u64,
}

impl OrderStream {
    /// A stream over `customers` customers (at least 1).
    pub fn new(seed: u64, customers: u64) -> Self {
        OrderStream { seed, customers: customers.max(1), step: 0, pending: Default::default(), offset: 0 }
    }

    /// The first `n` events.
    pub fn take_events(seed: u64, customers: u64, n: usize) -> Vec<Event> {
        OrderStream::new(seed, customers).take(n).collect()
    }

    fn mix(&self, k: u64, salt: u64) -> u64 {
        mix(self.seed, k, salt)
    }

    /// Amount of order `k` in cents: mostly small, a few large.
    fn amount_cents(&self, k: u64) -> u64 {
        let r = self.mix(k, 1);
        if r.is_multiple_of(50) { 100_000 + r % 400_000 } else { 500 + r % 60_000 }
    }

    fn push(&mut self, event_type: &str, k: u64, fields: String) {
        let order_id = format!("o-{k:09}");
        // Every payload carries the envelope a real producer adds: source, schema, trace id.
        let payload = format!(
            r#"{{{fields},"source":"checkout-service","schema_version":1,"trace_id":"{:016x}{:016x}"}}"#,
            self.mix(k, 20),
            self.mix(self.offset, 21)
        );
        let offset = self.offset;
        self.offset += 1;
        self.pending.push_back(Event {
            id: format!("evt-{offset:012}"),
            event_type: event_type.to_string(),
            key: Some(order_id.clone()),
            payload: payload.into_bytes(),
            content_type: "application/json".to_string(),
            time_us: EPOCH_US + self.step as i64 * STEP_US,
            headers: Vec::new(),
            correlation_id: Some(order_id),
            causation_id: None,
            position: Position { topic: ORDERS_TOPIC.to_string(), partition: 0, offset },
        });
    }

    fn advance(&mut self) {
        let k = self.step;
        let customer = self.mix(k, 2) % self.customers;
        let cents = self.amount_cents(k);
        let items = 1 + self.mix(k, 3) % 3;
        let skus: Vec<String> = (0..items).map(|i| format!("\"sku-{:05}\"", self.mix(k, 10 + i) % 20_000)).collect();
        self.push(
            "OrderPlaced",
            k,
            format!(
                r#""order_id":"o-{k:09}","customer_id":"c-{customer:06}","amount":{}.{:02},"currency":"EUR","skus":[{}],"channel":"{}""#,
                cents / 100,
                cents % 100,
                skus.join(","),
                ["web", "app", "store"][(self.mix(k, 4) % 3) as usize],
            ),
        );
        if let Some(j) = k.checked_sub(2) {
            if self.mix(j, 5) % 10 == 7 {
                self.push(
                    "OrderCancelled",
                    j,
                    format!(r#""order_id":"o-{j:09}","reason":"customer changed their mind""#),
                );
            } else {
                self.push(
                    "OrderPaid",
                    j,
                    format!(r#""order_id":"o-{j:09}","method":"card","psp_reference":"psp-{:016x}""#, self.mix(j, 6)),
                );
            }
        }
        if let Some(j) = k.checked_sub(5)
            && self.mix(j, 5) % 10 != 7
        {
            if self.mix(j, 7) % 10 == 3 {
                self.push("OrderCancelled", j, format!(r#""order_id":"o-{j:09}","reason":"out of stock""#));
            } else {
                self.push(
                    "OrderShipped",
                    j,
                    format!(r#""order_id":"o-{j:09}","carrier":"dhl","tracking":"trk-{:012x}""#, self.mix(j, 8)),
                );
            }
        }
        self.step += 1;
    }
}

impl Iterator for OrderStream {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        while self.pending.is_empty() {
            self.advance();
        }
        self.pending.pop_front()
    }
}

/// Topic transactions are written to.
pub const TRANSACTIONS_TOPIC: &str = "transactions";

/// Generates `Transaction` events over a fixed set of accounts, keyed by account, with JSON
/// payloads of about 200 bytes: transaction `k` moves an amount on account `mix(k) % accounts`.
#[derive(Debug, Clone)]
pub struct TransactionStream {
    seed: u64,
    accounts: u64,
    offset: u64,
}

impl TransactionStream {
    /// A stream over `accounts` accounts (at least 1).
    pub fn new(seed: u64, accounts: u64) -> Self {
        TransactionStream { seed, accounts: accounts.max(1), offset: 0 }
    }

    /// The first `n` events.
    pub fn take_events(seed: u64, accounts: u64, n: usize) -> Vec<Event> {
        TransactionStream::new(seed, accounts).take(n).collect()
    }
}

impl Iterator for TransactionStream {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        let k = self.offset;
        self.offset += 1;
        let mix = |salt: u64| mix(self.seed, k, salt);
        let account = format!("a-{:07}", mix(1) % self.accounts);
        let cents = (mix(2) % 200_000) as i64 - 50_000;
        let sign = if cents < 0 { "-" } else { "" };
        let payload = format!(
            r#"{{"amount":{sign}{}.{:02},"currency":"EUR","merchant":"m-{:05}","reference":"ref-{:016x}","channel":"{}","source":"ledger-service","trace_id":"{:016x}{:016x}"}}"#,
            cents.abs() / 100,
            cents.abs() % 100,
            mix(3) % 50_000,
            mix(4),
            ["card", "transfer", "direct-debit"][(mix(5) % 3) as usize],
            mix(6),
            mix(7),
        );
        Some(Event {
            id: format!("txn-{k:012}"),
            event_type: "Transaction".to_string(),
            key: Some(account),
            payload: payload.into_bytes(),
            content_type: "application/json".to_string(),
            time_us: EPOCH_US + k as i64 * STEP_US,
            headers: Vec::new(),
            correlation_id: None,
            causation_id: None,
            position: Position { topic: TRANSACTIONS_TOPIC.to_string(), partition: 0, offset: k },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_are_deterministic_keyed_and_about_200_bytes() {
        let a = TransactionStream::take_events(3, 1_000, 2_000);
        assert_eq!(a, TransactionStream::take_events(3, 1_000, 2_000));
        let mean = a.iter().map(|e| e.payload.len()).sum::<usize>() / a.len();
        assert!((170..=230).contains(&mean), "mean payload {mean} bytes");
        let accounts: std::collections::BTreeSet<_> = a.iter().map(|e| e.key.clone().unwrap()).collect();
        assert!(accounts.len() > 800, "{} accounts", accounts.len());
        for e in &a {
            let v: serde_json::Value = serde_json::from_slice(&e.payload).expect("payload is JSON");
            assert!(v["amount"].as_f64().is_some(), "{v}");
        }
    }

    #[test]
    fn deterministic_and_about_200_bytes() {
        let a = OrderStream::take_events(7, 100, 3_000);
        let b = OrderStream::take_events(7, 100, 3_000);
        assert_eq!(a, b);
        let mean = a.iter().map(|e| e.payload.len()).sum::<usize>() / a.len();
        assert!((170..=230).contains(&mean), "mean payload {mean} bytes");
        for e in &a {
            serde_json::from_slice::<serde_json::Value>(&e.payload).expect("payload is JSON");
        }
        assert!(a.windows(2).all(|w| w[1].position.offset == w[0].position.offset + 1));
    }
}
