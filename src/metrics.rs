//! Counters for monitoring, kept in atomics and written out in the
//! Prometheus text exposition format (version 0.0.4).
//!
//! The counts are this process's since it started: an API process counts
//! the jobs it submits and cancels, a pool the jobs its workers ran and the
//! workers it replaced, any process the store calls that failed. Gauges
//! (pool size, workers by state, pending and running jobs) are read when a
//! snapshot is taken, by the caller, and passed in as [`Gauges`].
//!
//! Hooks are one call each at the place the event happens; none blocks on
//! more than a short lock, so they are safe on the pool's thread.

use crate::job::{Outcome, Submit};
use once_cell::sync::Lazy;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the job duration histogram's buckets.
pub const BUCKETS: [f64; 15] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];

/// Series kept per metric; label values beyond fold into [`OTHER`], so a
/// stream of distinct operation names or error codes cannot grow memory.
pub const MAX_SERIES: usize = 1000;
pub const OTHER: &str = "_other";

/// A counter with labels: one atomic per label set.
#[derive(Default)]
struct Counter {
    series: RwLock<HashMap<Vec<String>, Arc<AtomicU64>>>,
}

impl Counter {
    fn add(&self, labels: &[&str], n: u64) {
        let key: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        if let Some(c) = self.series.read().get(&key) {
            c.fetch_add(n, Ordering::Relaxed);
            return;
        }
        let mut series = self.series.write();
        let key = if series.len() >= MAX_SERIES && !series.contains_key(&key) { vec![OTHER.to_string(); labels.len()] } else { key };
        series.entry(key).or_default().fetch_add(n, Ordering::Relaxed);
    }

    fn read(&self) -> Vec<(Vec<String>, u64)> {
        let mut v: Vec<_> = self.series.read().iter().map(|(k, c)| (k.clone(), c.load(Ordering::Relaxed))).collect();
        v.sort();
        v
    }
}

/// One operation's job durations.
#[derive(Default)]
struct Histogram {
    /// Not cumulative: each observation counts in the first bucket that holds it.
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| s <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Histograms {
    by_operation: RwLock<HashMap<String, Arc<Histogram>>>,
}

impl Histograms {
    fn observe(&self, operation: &str, d: Duration) {
        if let Some(h) = self.by_operation.read().get(operation) {
            h.observe(d);
            return;
        }
        let mut m = self.by_operation.write();
        let key = if m.len() >= MAX_SERIES && !m.contains_key(operation) { OTHER } else { operation };
        m.entry(key.to_string()).or_default().observe(d);
    }
}

#[derive(Default)]
struct Registry {
    submitted: Counter,
    rejected: Counter,
    completed: Counter,
    failed: Counter,
    cancelled: Counter,
    restarts: Counter,
    store_errors: Counter,
    store_calls: Counter,
    durations: Histograms,
}

static METRICS: Lazy<Registry> = Lazy::new(Registry::default);

/// A submit's answer: accepted (by operation) or refused (by reason).
pub fn submitted(operation: &str, r: &Submit) {
    match r {
        Submit::Accepted => METRICS.submitted.add(&[operation], 1),
        Submit::Full { .. } => rejected("CAPACITY_EXCEEDED"),
        Submit::Duplicate(_) => rejected("DUPLICATE_JOB"),
        Submit::UnknownDependency(_) => rejected("UNKNOWN_DEPENDENCY"),
        // Counted where they are refused, before the store.
        Submit::UnknownOperation | Submit::NotSigned => {}
    }
}

/// A submit refused before or by the store (`POOL_UNAVAILABLE`, `STORE_UNAVAILABLE`, ...).
pub fn rejected(code: &str) {
    METRICS.rejected.add(&[code], 1);
}

fn code_of(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Completed(_) | Outcome::CompletedJson(_) => None,
        Outcome::Failed(e) => Some(e.code.clone()),
        Outcome::Cancelled => Some("CANCELLED".to_string()),
    }
}

/// A job a worker ran, ended: counted by [`JobEnd::record`] once its
/// outcome is written (a job cancelled meanwhile counts as cancelled only).
pub struct JobEnd {
    operation: Arc<str>,
    code: Option<String>,
    elapsed: Duration,
}

impl JobEnd {
    pub fn of(operation: &Arc<str>, outcome: &Outcome, started: Instant) -> JobEnd {
        JobEnd { operation: operation.clone(), code: code_of(outcome), elapsed: started.elapsed() }
    }

    /// The outcome written in the end, when the store took another (a
    /// failure in place of a result it refused).
    pub fn written(mut self, outcome: &Outcome) -> JobEnd {
        self.code = code_of(outcome);
        self
    }

    pub fn record(self) {
        let op = &*self.operation;
        match &self.code {
            None => METRICS.completed.add(&[op], 1),
            Some(code) => METRICS.failed.add(&[op, code], 1),
        }
        METRICS.durations.observe(op, self.elapsed);
    }
}

/// A pending or running job was cancelled through this process.
pub fn job_cancelled() {
    METRICS.cancelled.add(&[], 1);
}

/// A worker ended and is replaced: "crashed", "killed" (timeout, cancel,
/// lost lease, protocol error), "recycled" (its job quota or memory limit)
/// or "setup_failed". An empty reason (the pool is stopping) counts nothing.
pub fn worker_restarted(reason: &str) {
    if !reason.is_empty() {
        METRICS.restarts.add(&[reason], 1);
    }
}

/// A store call failed (unreachable, timed out, refused); `operation` is
/// what the call was for ("claim", "finish", ...).
/// A call to a database store, by what it was for (each a round trip or a
/// transaction): what a host costs its database.
pub fn store_call(operation: &str) {
    METRICS.store_calls.add(&[operation], 1);
}

pub fn store_error(operation: &str) {
    METRICS.store_errors.add(&[operation], 1);
}

/// What a snapshot reads at the time it is taken.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    /// Worker slots of this process's pool; 0 without a pool.
    pub pool_size: usize,
    /// This pool's workers by state (idle, busy, starting, ...).
    pub workers: Vec<(String, usize)>,
    /// Pending and running jobs in the store; None when it cannot say.
    pub pending: Option<usize>,
    pub running: Option<usize>,
    /// Whether the store answered the snapshot's read.
    pub store_up: bool,
}

/// One sample: its full name (with `_bucket`, `_sum`, ... for a histogram).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// A metric with its HELP and TYPE lines.
#[derive(Clone, Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: &'static str,
    pub samples: Vec<Sample>,
}

fn counter(name: &'static str, help: &'static str, keys: &[&'static str], c: &Counter) -> Family {
    let mut samples: Vec<Sample> = c
        .read()
        .into_iter()
        .map(|(vals, n)| Sample {
            name: name.to_string(),
            labels: keys.iter().copied().zip(vals).collect(),
            value: n as f64,
        })
        .collect();
    if keys.is_empty() && samples.is_empty() {
        samples.push(Sample { name: name.to_string(), labels: vec![], value: 0.0 });
    }
    Family { name, help, kind: "counter", samples }
}

fn gauge(name: &'static str, help: &'static str, samples: Vec<(Vec<(&'static str, String)>, f64)>) -> Family {
    let samples = samples.into_iter().map(|(labels, value)| Sample { name: name.to_string(), labels, value }).collect();
    Family { name, help, kind: "gauge", samples }
}

fn durations() -> Family {
    let name = "asyncjobs_job_duration_seconds";
    let mut ops: Vec<(String, Arc<Histogram>)> =
        METRICS.durations.by_operation.read().iter().map(|(k, h)| (k.clone(), h.clone())).collect();
    ops.sort_by(|a, b| a.0.cmp(&b.0));
    let mut samples = Vec::new();
    for (op, h) in ops {
        // Read the count first: the buckets then hold at least as many.
        let count = h.count.load(Ordering::Relaxed);
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += h.buckets[i].load(Ordering::Relaxed);
            samples.push(Sample {
                name: format!("{name}_bucket"),
                labels: vec![("operation", op.clone()), ("le", format_value(*le))],
                value: cumulative.min(count) as f64,
            });
        }
        samples.push(Sample {
            name: format!("{name}_bucket"),
            labels: vec![("operation", op.clone()), ("le", "+Inf".into())],
            value: count as f64,
        });
        let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        samples.push(Sample { name: format!("{name}_sum"), labels: vec![("operation", op.clone())], value: sum });
        samples.push(Sample { name: format!("{name}_count"), labels: vec![("operation", op)], value: count as f64 });
    }
    Family { name, help: "Run time of the jobs this process's workers ran, from dispatch to outcome.", kind: "histogram", samples }
}

/// Every metric now: the counters, the histogram and the gauges given.
pub fn snapshot(g: &Gauges) -> Vec<Family> {
    let m = &*METRICS;
    let mut out = vec![
        counter("asyncjobs_jobs_submitted_total", "Jobs accepted by this process, by operation.", &["operation"], &m.submitted),
        counter("asyncjobs_jobs_rejected_total", "Submits refused by this process, by error code.", &["code"], &m.rejected),
        counter(
            "asyncjobs_jobs_completed_total",
            "Jobs this process's workers completed, by operation.",
            &["operation"],
            &m.completed,
        ),
        counter(
            "asyncjobs_jobs_failed_total",
            "Jobs this process's workers failed, by operation and error code.",
            &["operation", "code"],
            &m.failed,
        ),
        counter("asyncjobs_jobs_cancelled_total", "Pending or running jobs cancelled through this process.", &[], &m.cancelled),
        durations(),
        counter(
            "asyncjobs_worker_restarts_total",
            "Worker processes this pool replaced, by reason (crashed, killed, recycled, setup_failed).",
            &["reason"],
            &m.restarts,
        ),
        counter("asyncjobs_store_errors_total", "Store calls that failed, by what they were for.", &["operation"], &m.store_errors),
        counter("asyncjobs_store_calls_total", "Calls to a database store, by what they were for.", &["operation"], &m.store_calls),
        gauge("asyncjobs_store_up", "1 when the store answered this read, else 0.", vec![(vec![], f64::from(u8::from(g.store_up)))]),
        gauge("asyncjobs_pool_size", "Worker slots of this process's pool (0 without a pool).", vec![(vec![], g.pool_size as f64)]),
        gauge(
            "asyncjobs_workers",
            "This pool's workers by state.",
            g.workers.iter().map(|(s, n)| (vec![("state", s.clone())], *n as f64)).collect(),
        ),
    ];
    if let Some(n) = g.pending {
        out.push(gauge("asyncjobs_jobs_pending", "Jobs waiting for a worker, in the store.", vec![(vec![], n as f64)]));
    }
    if let Some(n) = g.running {
        out.push(gauge("asyncjobs_jobs_running", "Jobs running, in the store.", vec![(vec![], n as f64)]));
    }
    out
}

/// A value as Prometheus reads it: integers without a fraction, +Inf, NaN.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The families in the text exposition format, version 0.0.4.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for s in &f.samples {
            out.push_str(&s.name);
            if !s.labels.is_empty() {
                let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
                let _ = write!(out, "{{{}}}", labels.join(","));
            }
            let _ = writeln!(out, " {}", format_value(s.value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let f = Family {
            name: "m",
            help: "a\nb",
            kind: "counter",
            samples: vec![Sample { name: "m".into(), labels: vec![("operation", "a\"b\\c\nd".into())], value: 2.0 }],
        };
        assert_eq!(render(&[f]), "# HELP m a\\nb\n# TYPE m counter\nm{operation=\"a\\\"b\\\\c\\nd\"} 2\n");
    }

    #[test]
    fn values_print_as_prometheus_reads_them() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histograms::default();
        for ms in [10, 200, 200, 7000, 5_000_000] {
            h.observe("op", Duration::from_millis(ms));
        }
        let one = h.by_operation.read()["op"].clone();
        let counts: Vec<u64> = one.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        // 0.05 s, 0.25 s (two), 10 s; the 5000 s one only in +Inf.
        assert_eq!(counts.iter().sum::<u64>(), 4);
        assert_eq!((counts[0], counts[2], counts[7]), (1, 2, 1));
        assert_eq!(one.count.load(Ordering::Relaxed), 5);
        assert_eq!(one.sum_micros.load(Ordering::Relaxed), 5_007_410_000);
    }

    #[test]
    fn series_beyond_the_limit_fold_into_other() {
        let c = Counter::default();
        for i in 0..MAX_SERIES + 50 {
            c.add(&[&format!("op{i}"), "CODE"], 1);
        }
        c.add(&["op0", "CODE"], 1);
        let series = c.read();
        assert_eq!(series.len(), MAX_SERIES + 1);
        let other = series.iter().find(|(k, _)| k[0] == OTHER).unwrap();
        assert_eq!((other.0[1].as_str(), other.1), (OTHER, 50));
        assert_eq!(series.iter().find(|(k, _)| k[0] == "op0").unwrap().1, 2);
    }
}
