//! Per-plugin keyed state, with the writes of one event kept apart until the event succeeds.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Result};

/// The writes of the event being handled. They are visible to later reads of the same event and
/// reach the host only when the event succeeds, so a refused event leaves state untouched.
#[derive(Default)]
pub(crate) struct StateTxn {
    writes: KeyMap<Option<Vec<u8>>>,
}

/// A map by state key, hashed with [`KeyHasher`].
type KeyMap<V> = HashMap<Vec<u8>, V, BuildHasherDefault<KeyHasher>>;

/// A multiply-rotate hash over 8 bytes at a time (the FxHash scheme), for the maps of one batch:
/// several lookups per event, where SipHash cost more than the rest of the lookup. Its keys come
/// from the plugin's own events; a batch whose keys collide on purpose only slows that plugin,
/// and its CPU budget per batch bounds that.
#[derive(Default)]
struct KeyHasher(u64);

impl KeyHasher {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut le = [0; 8];
            le.copy_from_slice(word);
            self.add(u64::from_le_bytes(le));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut le = [0; 8];
            le[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(le) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        // The multiply leaves the low bits weakest; the table indexes by them.
        self.0 ^ (self.0 >> 31)
    }
}

/// State as the current batch call sees it: values read from the host so far and the writes of
/// the events that succeeded. Reads of a key the batch has seen are answered here, without a
/// host call; writes reach the host once per key, when the batch ends. The host keeps a batch's
/// writes only if the call returns, so holding them back until then changes nothing it sees.
#[derive(Default)]
struct BatchState {
    /// Key → (value as of the last successful event, `None`: absent; written by the batch?).
    seen: KeyMap<(Option<Vec<u8>>, bool)>,
}

std::thread_local! {
    static BATCH: std::cell::RefCell<BatchState> = std::cell::RefCell::new(BatchState::default());
}

impl StateTxn {
    pub(crate) fn get_bytes(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.read(key, |value| value.map(<[u8]>::to_vec))
    }

    /// Run `f` on the value of `key` as this event sees it, without copying it.
    fn read<R>(&self, key: &[u8], f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        if let Some(written) = self.writes.get(key) {
            return f(written.as_deref());
        }
        BATCH.with_borrow_mut(|batch| {
            if let Some((value, _)) = batch.seen.get(key) {
                return f(value.as_deref());
            }
            let value = sys::state_get(key);
            f(batch.seen.entry(key.to_vec()).or_insert((value, false)).0.as_deref())
        })
    }

    pub(crate) fn put_bytes(&mut self, key: &[u8], value: Vec<u8>) {
        self.writes.insert(key.to_vec(), Some(value));
    }

    pub(crate) fn delete(&mut self, key: &[u8]) {
        self.writes.insert(key.to_vec(), None);
    }

    pub(crate) fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.read(key.as_bytes(), |bytes| bytes.map(serde_json::from_slice).transpose())
            .map_err(|e| Error::msg(format!("state entry {key:?} does not decode: {e}")))
    }

    pub(crate) fn put<T: Serialize>(&mut self, key: &str, value: &T) -> Result<()> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| Error::msg(format!("state entry {key:?} does not encode: {e}")))?;
        self.put_bytes(key.as_bytes(), bytes);
        Ok(())
    }

    pub(crate) fn commit(self) {
        if self.writes.is_empty() {
            return;
        }
        BATCH.with_borrow_mut(|batch| {
            for (key, value) in self.writes {
                batch.seen.insert(key, (value, true));
            }
        });
    }
}

/// Start a batch: forget what the previous one saw (the host may have rolled it back).
fn begin_batch() {
    BATCH.with_borrow_mut(|batch| batch.seen.clear());
}

/// End a batch: send every key its successful events wrote, once, with its last value.
fn end_batch() {
    BATCH.with_borrow_mut(|batch| {
        for (key, (value, written)) in batch.seen.drain() {
            match (value, written) {
                (Some(value), true) => sys::state_put(&key, &value),
                (None, true) => sys::state_delete(&key),
                (_, false) => {}
            }
        }
    });
}

/// Run `handle` on each event with its own state transaction, committed only if it succeeds.
pub(crate) fn run_batch<O>(
    events: impl IntoIterator<Item = crate::Event>,
    handle: impl Fn(&mut StateTxn, &crate::Event) -> Result<O>,
) -> Vec<Result<O>> {
    begin_batch();
    let outcomes = events
        .into_iter()
        .map(|event| {
            let mut state = StateTxn::default();
            let outcome = handle(&mut state, &event);
            if outcome.is_ok() {
                state.commit();
            }
            outcome
        })
        .collect();
    end_batch();
    outcomes
}

/// Generates the state and parameter accessors shared by both plugin contexts.
macro_rules! state_accessors {
    ($ctx:ident) => {
        impl $ctx<'_> {
            /// Read a JSON-encoded state entry.
            pub fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> $crate::Result<Option<T>> {
                self.state.get(key)
            }

            /// Write a JSON-encoded state entry. Kept only if this event succeeds.
            pub fn put<T: serde::Serialize>(&mut self, key: &str, value: &T) -> $crate::Result<()> {
                self.state.put(key, value)
            }

            /// Remove a state entry. Kept only if this event succeeds.
            pub fn delete_state(&mut self, key: &str) {
                self.state.delete(key.as_bytes())
            }

            /// Read a raw state entry.
            pub fn get_bytes(&self, key: &[u8]) -> Option<Vec<u8>> {
                self.state.get_bytes(key)
            }

            /// Write a raw state entry. Kept only if this event succeeds.
            pub fn put_bytes(&mut self, key: &[u8], value: Vec<u8>) {
                self.state.put_bytes(key, value)
            }

            /// A parameter given at deploy time.
            pub fn param(&self, name: &str) -> Option<String> {
                $crate::state::sys::param(name)
            }
        }
    };
}
pub(crate) use state_accessors;

/// The host services: the WIT imports on wasm, an in-memory stand-in natively (for tests).
#[cfg(target_arch = "wasm32")]
pub(crate) mod sys {
    use crate::Level;
    use crate::bindings::{host, state};

    pub(crate) fn state_get(key: &[u8]) -> Option<Vec<u8>> {
        state::get(key)
    }
    pub(crate) fn state_put(key: &[u8], value: &[u8]) {
        state::put(key, value)
    }
    pub(crate) fn state_delete(key: &[u8]) {
        state::delete(key)
    }
    pub(crate) fn param(name: &str) -> Option<String> {
        host::param(name)
    }
    pub(crate) fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => host::LogLevel::Trace,
            Level::Debug => host::LogLevel::Debug,
            Level::Info => host::LogLevel::Info,
            Level::Warn => host::LogLevel::Warn,
            Level::Error => host::LogLevel::Error,
        };
        host::log(level, message)
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod sys {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use crate::Level;

    /// What the native stand-in host holds for the current thread.
    #[derive(Default)]
    pub(crate) struct NativeHost {
        pub(crate) state: BTreeMap<Vec<u8>, Vec<u8>>,
        pub(crate) params: BTreeMap<String, String>,
        pub(crate) logs: Vec<(Level, String)>,
        pub(crate) timers: BTreeMap<String, crate::handler::TimerSpec>,
        pub(crate) clock: i64,
    }

    thread_local! {
        pub(crate) static HOST: RefCell<NativeHost> = RefCell::new(NativeHost::default());
    }

    pub(crate) fn state_get(key: &[u8]) -> Option<Vec<u8>> {
        HOST.with_borrow(|h| h.state.get(key).cloned())
    }
    pub(crate) fn state_put(key: &[u8], value: &[u8]) {
        HOST.with_borrow_mut(|h| h.state.insert(key.to_vec(), value.to_vec()));
    }
    pub(crate) fn state_delete(key: &[u8]) {
        HOST.with_borrow_mut(|h| h.state.remove(key));
    }
    pub(crate) fn param(name: &str) -> Option<String> {
        HOST.with_borrow(|h| h.params.get(name).cloned())
    }
    pub(crate) fn log(level: Level, message: &str) {
        HOST.with_borrow_mut(|h| h.logs.push((level, message.to_string())));
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, BuildHasherDefault};

    use super::*;

    #[test]
    fn an_event_reads_its_own_writes_and_a_refused_one_leaves_nothing() {
        let events = ["a", "b", "c"].map(|id| crate::Event { id: id.into(), ..Default::default() });
        let outcomes = run_batch(events, |state, event| {
            let seen: Option<u32> = state.get("n")?;
            state.put("n", &(seen.unwrap_or(0) + 1))?;
            assert_eq!(state.get::<u32>("n")?, Some(seen.unwrap_or(0) + 1), "its own write");
            if event.id == "b" {
                return Err(Error::msg("refused"));
            }
            Ok(seen)
        });
        assert_eq!(outcomes, [Ok(None), Err(Error::msg("refused")), Ok(Some(1))]);
        assert_eq!(sys::state_get(b"n").as_deref(), Some(&b"2"[..]), "written once, at the end of the batch");
    }

    #[test]
    fn each_write_is_kept_or_dropped_by_the_outcome_of_the_event_that_made_it() {
        sys::state_put(b"kept", b"1");
        sys::state_put(b"gone", b"1");
        let events = ["write-fail", "read-write-delete", "twice-fail", "read", "last-fail"]
            .map(|id| crate::Event { id: id.into(), ..Default::default() });
        let outcomes = run_batch(events, |state, event| {
            let refuse = || Err(Error::msg(format!("{} refused", event.id)));
            match event.id.as_str() {
                "write-fail" => {
                    state.put_bytes(b"w", b"1".to_vec());
                    refuse()
                }
                "read-write-delete" => {
                    let seen = state.get_bytes(b"w");
                    state.put_bytes(b"w", b"2".to_vec());
                    state.delete(b"gone");
                    assert_eq!(state.get_bytes(b"gone"), None, "its own delete");
                    Ok(seen)
                }
                "twice-fail" => {
                    state.put_bytes(b"kept", b"5".to_vec());
                    state.put_bytes(b"kept", b"6".to_vec());
                    assert_eq!(state.get_bytes(b"kept").as_deref(), Some(&b"6"[..]));
                    refuse()
                }
                "read" => Ok(state.get_bytes(b"kept").zip(state.get_bytes(b"w")).map(|(k, w)| [k, w].concat())),
                _ => {
                    state.put_bytes(b"w", b"9".to_vec());
                    refuse()
                }
            }
        });
        assert_eq!(outcomes[1], Ok(None), "a failed event's write is not seen by the next");
        assert_eq!(outcomes[3], Ok(Some(b"12".to_vec())), "kept as before the failed event, w as written");
        assert_eq!(sys::state_get(b"w").as_deref(), Some(&b"2"[..]));
        assert_eq!(sys::state_get(b"kept").as_deref(), Some(&b"1"[..]), "both writes of the failed event dropped");
        assert_eq!(sys::state_get(b"gone"), None, "the delete reached the host");
    }

    #[test]
    fn keys_that_differ_only_in_length_or_tail_hash_apart() {
        let hash = |key: &[u8]| BuildHasherDefault::<KeyHasher>::default().hash_one(key);
        let keys: [&[u8]; 6] = [b"", b"\0", b"\0\0", b"account-1", b"account-2", b"account-10"];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(hash(a), hash(b), "{a:?} {b:?}");
            }
        }
    }
}
