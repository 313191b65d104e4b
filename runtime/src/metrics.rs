//! Counters and gauges of one pgrealm process, rendered in Prometheus' text format at `/metrics`.
//!
//! The sync engine and the server update them; nothing here does I/O. The exposition format is
//! a few lines of text, so it is written here rather than through an exporter crate.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The process's metrics. Share it behind an `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// PostgreSQL changes applied to realms.
    pub changes_postgres_to_realm: AtomicU64,
    /// Realm changes written to PostgreSQL.
    pub changes_realm_to_postgres: AtomicU64,
    /// Changes refused (kept with their reason), either direction.
    pub rejections: AtomicU64,
    /// Bytes of WAL between the server's current position and the last applied commit.
    pub replication_lag_bytes: AtomicI64,
    /// Milliseconds between a PostgreSQL commit and its arrival in the realm (last seen).
    pub replication_lag_millis: AtomicI64,
    /// Bytes of WAL the slot holds back (`pg_current_wal_lsn() - restart_lsn`).
    pub slot_retained_wal_bytes: AtomicI64,
    /// HTTP requests answered.
    pub http_requests: AtomicU64,
    /// Realm transactions committed through the API.
    pub api_transactions: AtomicU64,
    /// Read requests of the admin API (`/v1/admin/read` and the reads of streamed writes,
    /// `/v1/admin/streams/{id}/read`), answered or refused: what a remote engine's reads cost.
    pub admin_reads: AtomicU64,
    /// Batches applied to streamed writes of the admin API (`/v1/admin/streams`).
    pub admin_stream_batches: AtomicU64,
    /// Streamed writes of the admin API committed.
    pub admin_streams_committed: AtomicU64,
    /// Streamed writes of the admin API aborted (by the client, a bad batch, or idle too long).
    pub admin_streams_aborted: AtomicU64,
}

impl Metrics {
    /// Add to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Set a gauge.
    pub fn set(gauge: &AtomicI64, v: i64) {
        gauge.store(v, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: &AtomicI64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        };
        counter(
            &mut out,
            "pgrealm_changes_postgres_to_realm_total",
            "PostgreSQL changes applied to realms.",
            &self.changes_postgres_to_realm,
        );
        counter(
            &mut out,
            "pgrealm_changes_realm_to_postgres_total",
            "Realm changes written to PostgreSQL.",
            &self.changes_realm_to_postgres,
        );
        counter(
            &mut out,
            "pgrealm_rejections_total",
            "Changes refused and kept with their reason.",
            &self.rejections,
        );
        gauge(
            &mut out,
            "pgrealm_replication_lag_bytes",
            "WAL bytes between the server's position and the last applied commit.",
            &self.replication_lag_bytes,
        );
        let lag = self.replication_lag_millis.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "# HELP pgrealm_replication_lag_seconds Seconds from a PostgreSQL commit to its realm commit (last seen).\n# TYPE pgrealm_replication_lag_seconds gauge\npgrealm_replication_lag_seconds {lag}"
        );
        gauge(
            &mut out,
            "pgrealm_slot_retained_wal_bytes",
            "WAL bytes the replication slot holds back.",
            &self.slot_retained_wal_bytes,
        );
        counter(
            &mut out,
            "pgrealm_http_requests_total",
            "HTTP requests answered.",
            &self.http_requests,
        );
        counter(
            &mut out,
            "pgrealm_api_transactions_total",
            "Realm transactions committed through the API.",
            &self.api_transactions,
        );
        counter(
            &mut out,
            "pgrealm_admin_reads_total",
            "Read requests of the admin API (plain and in streamed writes).",
            &self.admin_reads,
        );
        counter(
            &mut out,
            "pgrealm_admin_stream_batches_total",
            "Batches applied to streamed writes of the admin API.",
            &self.admin_stream_batches,
        );
        counter(
            &mut out,
            "pgrealm_admin_streams_committed_total",
            "Streamed writes of the admin API committed.",
            &self.admin_streams_committed,
        );
        counter(
            &mut out,
            "pgrealm_admin_streams_aborted_total",
            "Streamed writes of the admin API aborted (by the client, a bad batch, or idle too long).",
            &self.admin_streams_aborted,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::add(&m.rejections, 3);
        Metrics::set(&m.slot_retained_wal_bytes, 4096);
        let text = m.render();
        assert!(
            text.contains("# TYPE pgrealm_rejections_total counter\npgrealm_rejections_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("pgrealm_slot_retained_wal_bytes 4096"),
            "{text}"
        );
    }
}
