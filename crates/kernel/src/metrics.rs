//! Per-syscall request counts and latency histograms, rendered as Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Registry;

/// Histogram bucket bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

struct Stats {
    name: &'static str,
    by_status: Mutex<BTreeMap<u16, u64>>,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Counters for every declared syscall.
pub struct Metrics {
    stats: Vec<Stats>,
}

impl Metrics {
    pub(crate) fn new(registry: &Registry) -> Metrics {
        Metrics {
            stats: registry
                .entries()
                .iter()
                .map(|e| Stats {
                    name: e.spec.name,
                    by_status: Mutex::new(BTreeMap::new()),
                    buckets: Default::default(),
                    count: AtomicU64::new(0),
                    sum_micros: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    pub(crate) fn observe(&self, idx: usize, status: u16, micros: u64) {
        let s = &self.stats[idx];
        if let Ok(mut m) = s.by_status.lock() {
            *m.entry(status).or_default() += 1;
        }
        let secs = micros as f64 / 1e6;
        for (b, bound) in s.buckets.iter().zip(BUCKETS) {
            if secs <= bound {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        s.count.fetch_add(1, Ordering::Relaxed);
        s.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of all counters.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP strata_syscall_requests_total Syscalls completed, by syscall and status.\n");
        out.push_str("# TYPE strata_syscall_requests_total counter\n");
        for s in &self.stats {
            if let Ok(m) = s.by_status.lock() {
                for (status, n) in m.iter() {
                    let _ = writeln!(
                        out,
                        "strata_syscall_requests_total{{syscall=\"{}\",status=\"{status}\"}} {n}",
                        s.name
                    );
                }
            }
        }
        out.push_str("# HELP strata_syscall_duration_seconds Time from receipt to reply, by syscall.\n");
        out.push_str("# TYPE strata_syscall_duration_seconds histogram\n");
        for s in &self.stats {
            let count = s.count.load(Ordering::Relaxed);
            for (b, bound) in s.buckets.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "strata_syscall_duration_seconds_bucket{{syscall=\"{}\",le=\"{bound}\"}} {}",
                    s.name,
                    b.load(Ordering::Relaxed)
                );
            }
            let _ = writeln!(
                out,
                "strata_syscall_duration_seconds_bucket{{syscall=\"{}\",le=\"+Inf\"}} {count}",
                s.name
            );
            let sum = s.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "strata_syscall_duration_seconds_sum{{syscall=\"{}\"}} {sum}",
                s.name
            );
            let _ = writeln!(
                out,
                "strata_syscall_duration_seconds_count{{syscall=\"{}\"}} {count}",
                s.name
            );
        }
        out
    }
}
