//! What the SQL front ends measure: per front end (HTTP, Postgres wire, Flight SQL), the queries
//! run, how long each took until its last row was handed over, and the errors by kind. The
//! engine owns one [`QueryStats`]; each front end times the queries it runs with it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use weir_core::meter::{Histogram, LatencyHistogram};

use crate::query::{Result, Rows};

/// Where a query came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontEnd {
    /// `POST /v1/sql`.
    Http,
    /// The Postgres wire protocol.
    Postgres,
    /// Arrow Flight SQL.
    Flight,
}

impl FrontEnd {
    /// Every front end, in the order [`QueryStats::snapshot`] lists them.
    pub const ALL: [FrontEnd; 3] = [FrontEnd::Http, FrontEnd::Postgres, FrontEnd::Flight];

    /// Its name in metrics: `http`, `postgres`, `flight`.
    pub fn name(self) -> &'static str {
        match self {
            FrontEnd::Http => "http",
            FrontEnd::Postgres => "postgres",
            FrontEnd::Flight => "flight",
        }
    }
}

#[derive(Debug, Default)]
struct FrontEndMeter {
    queries: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    latency: LatencyHistogram,
}

/// Counts and latencies of the queries each front end ran.
#[derive(Debug, Default)]
pub struct QueryStats {
    meters: [FrontEndMeter; 3],
}

/// One front end's figures, as read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontEndStats {
    /// Which.
    pub front_end: FrontEnd,
    /// Queries run (finished, failed or abandoned by the client).
    pub queries: u64,
    /// Failed queries by kind of error (`sql`, `read_only`, `timeout`, `memory`, ...).
    pub errors: BTreeMap<&'static str, u64>,
    /// Time from receiving each query to handing over its last row (or its error).
    pub latency: Histogram,
}

impl QueryStats {
    fn meter(&self, front_end: FrontEnd) -> &FrontEndMeter {
        &self.meters[front_end as usize]
    }

    /// Count a query that took `elapsed`, and failed with `error` if it did.
    pub fn record(&self, front_end: FrontEnd, elapsed: Duration, error: Option<&'static str>) {
        let meter = self.meter(front_end);
        meter.queries.fetch_add(1, Ordering::Relaxed);
        meter.latency.observe(elapsed);
        if let Some(kind) = error {
            *meter.errors.lock().unwrap_or_else(|e| e.into_inner()).entry(kind).or_default() += 1;
        }
    }

    /// Time a query begun at `started` whose rows are `rows`: counted once its rows are all handed
    /// over or dropped (at once if it failed to start).
    pub fn timed(self: &Arc<Self>, front_end: FrontEnd, started: Instant, rows: Result<Rows>) -> Result<Rows> {
        match rows {
            Err(error) => {
                self.record(front_end, started.elapsed(), Some(error.kind()));
                Err(error)
            }
            Ok(rows) => {
                let mut timing = Timing { stats: self.clone(), front_end, started, error: None };
                let Rows { schema, batches } = rows;
                // The closure owns the whole clock (not just its `error` field), so the query is
                // counted when the stream is dropped.
                let batches = batches
                    .map(move |batch| {
                        timing.note(&batch);
                        batch
                    })
                    .boxed();
                Ok(Rows { schema, batches })
            }
        }
    }

    /// Every front end's figures.
    pub fn snapshot(&self) -> Vec<FrontEndStats> {
        FrontEnd::ALL
            .iter()
            .map(|&front_end| {
                let meter = self.meter(front_end);
                FrontEndStats {
                    front_end,
                    queries: meter.queries.load(Ordering::Relaxed),
                    errors: meter.errors.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                    latency: meter.latency.snapshot(),
                }
            })
            .collect()
    }
}

/// A running query's clock: it counts the query when its rows are dropped.
struct Timing {
    stats: Arc<QueryStats>,
    front_end: FrontEnd,
    started: Instant,
    error: Option<&'static str>,
}

impl Timing {
    fn note<T>(&mut self, batch: &Result<T>) {
        if let Err(error) = batch {
            self.error = Some(error.kind());
        }
    }
}

impl Drop for Timing {
    fn drop(&mut self) {
        self.stats.record(self.front_end, self.started.elapsed(), self.error);
    }
}
