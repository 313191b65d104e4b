//! Benchmark of PostgreSQL → realm, each figure next to PostgreSQL's own limit measured in the
//! same run on the same WAL (issue 4, "Benchmark"):
//!
//! ```text
//! cargo run --release -p pgrealm-runtime --example bench_pg2realm
//! ```
//!
//! - (a) 1,000-row transactions and (b) single-row transactions from 8 concurrent clients:
//!   changes/s applied into realms, next to `pg_recvlogical` draining an identical slot to
//!   /dev/null and `pg_logical_slot_peek_binary_changes` over the same range (decoding alone);
//! - the initial load's rows/s next to `psql -c "\copy … to '/dev/null'"` of the same table;
//! - end-to-end lag (PostgreSQL commit returned → realm version visible) p50/p99 at a steady
//!   1,000 transactions/s, next to the single-row commit latency and to how long a fixed piece
//!   of CPU work took on this machine during the same seconds (a thread runs it once a
//!   millisecond; on a shared virtual machine it shows the bursts in which every process runs
//!   several times slower), and how long after each apply the slot's `confirmed_flush_lsn` shows
//!   it (target: within 100 ms).
//!
//! Sizes: `BENCH_ROWS` (default 200,000 changes per workload), `BENCH_BIG_TX` (default
//! 1,000,000). `BENCH_ONLY=a,b,load,lag,big` runs only the workloads named (the initial load
//! copies what (a) and (b) wrote). `BENCH_LAG_DETAIL=1` also prints the 40 worst lags with
//! when their commit happened (stalls show as clusters). `BENCH_THREADS=1` prints, for (a) and
//! (b), how busy each thread of the applier was (thread id, share of one core).
//! `BENCH_REPEAT=n` runs (a) and (b) n times over the same WAL (`pg_recvlogical`, then
//! pgrealm, each on a slot of its own) and prints each round's ratio and the median. Uses a
//! private cluster from the test harness (127.0.0.1 only). Not a test: figures go in
//! BENCHMARKS.md.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgrealm_runtime::metrics::Metrics;
use pgrealm_runtime::replication::{
    ensure_publication, ensure_slot, Lsn, PgConnectOptions, QualifiedTable,
};
use pgrealm_runtime::sync::pg_to_realm::{PgToRealm, PgToRealmOptions, PgToRealmStats, Progress};
use pgrealm_runtime::testing::{PgCluster, TestDb};
use pgrealm_runtime::{Store, StoreOptions, Subscription};

mod item_bench;

use item_bench::{schema, DDL};

/// Whether `BENCH_ONLY` (unset: every workload) names this workload.
fn runs(workload: &str) -> bool {
    match std::env::var("BENCH_ONLY") {
        Ok(only) => only.split(',').any(|w| w.trim() == workload),
        Err(_) => true,
    }
}

/// `BENCH_REPEAT` (default 1): rounds of (a) and (b), each `pg_recvlogical` then pgrealm on
/// slots of their own over the same WAL; the machine's swings show as the rounds' spread.
fn repeats() -> usize {
    positive_env("BENCH_REPEAT", 1) as usize
}

fn rows() -> i64 {
    item_bench::rows(200_000)
}

/// `BENCH_USERS` (default 8): the distinct `user_id`s of (a)'s rows, which the load also
/// copies; each is a realm (`/{user_id}/bench`).
fn users() -> i64 {
    positive_env("BENCH_USERS", 8)
}

/// The positive number in the environment variable `name`, or `default`.
fn positive_env(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

struct Bench {
    cluster: &'static PgCluster,
    db: TestDb,
    pg: PgConnectOptions,
    sql: tokio_postgres::Client,
}

impl Bench {
    async fn lsn(&self) -> Lsn {
        let text: String = self
            .sql
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        Lsn::parse(&text).unwrap()
    }

    async fn slot(&self, name: &str) {
        ensure_slot(&self.sql, name).await.unwrap();
    }

    /// `pg_recvlogical` draining `slot` up to `end` into /dev/null: how long it took and the CPU
    /// time it and PostgreSQL spent meanwhile.
    fn recvlogical(&self, slot: &str, end: Lsn) -> (Duration, Cpu) {
        let started = Instant::now();
        let (own_before, server_before) = (children_cpu(), cluster_cpu(self.cluster));
        let status = Command::new(self.cluster.bin_dir().join("pg_recvlogical"))
            .args([
                "-d",
                &self.db.url,
                "--slot",
                slot,
                "--start",
                "--no-loop",
                "-o",
                "proto_version=1",
                "-o",
                "publication_names=pgrealm",
                "-E",
                &end.to_string(),
                "-f",
                "/dev/null",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "pg_recvlogical failed");
        let elapsed = started.elapsed();
        // Its walsender's CPU time reaches the postmaster's count once the walsender has exited
        // and been reaped.
        let waited = Instant::now();
        while walsenders(self.cluster) > 0 && waited.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let cpu = Cpu {
            receiver: children_cpu().saturating_sub(own_before),
            server: cluster_cpu(self.cluster).saturating_sub(server_before),
        };
        (elapsed, cpu)
    }

    /// `pg_logical_slot_peek_binary_changes` over the slot's whole range: decoding alone.
    async fn peek(&self, slot: &str, end: Lsn) -> Duration {
        let started = Instant::now();
        self.sql
            .query_one(
                "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, NULL, \
                 'proto_version', '1', 'publication_names', 'pgrealm')",
                &[&slot, &end.to_string()],
            )
            .await
            .unwrap();
        started.elapsed()
    }

    /// Our applier from `slot`'s start until it has confirmed `end`: how long it took, and the
    /// CPU time this process spent meanwhile (every thread: the applier is all that runs in it).
    async fn ours(&self, slot: &str, end: Lsn) -> (Duration, Arc<PgToRealmStats>, Cpu) {
        let dir = tempfile::tempdir_in(".").unwrap();
        let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
        let sync = self.applier(slot, store, false);
        sync.setup().await.unwrap();
        let stats = sync.stats();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let started = Instant::now();
        let cpu_before = process_cpu();
        let threads_before = thread_cpu();
        let server_before = cluster_cpu(self.cluster);
        let task = tokio::spawn(sync.run(stopped));
        while stats.confirmed_lsn.load(Ordering::Relaxed) < end.as_u64() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = started.elapsed();
        let cpu = Cpu {
            receiver: process_cpu().saturating_sub(cpu_before),
            server: cluster_cpu(self.cluster).saturating_sub(server_before),
        };
        if std::env::var_os("BENCH_THREADS").is_some() {
            let mut busy: Vec<(u64, String)> = thread_cpu()
                .into_iter()
                .map(|(tid, ticks)| {
                    let before = threads_before.get(&tid).copied().unwrap_or(0);
                    (ticks - before, tid)
                })
                .filter(|(ticks, _)| *ticks > 0)
                .collect();
            busy.sort_by(|a, b| b.cmp(a));
            let shown: Vec<String> = busy
                .iter()
                .map(|(ticks, tid)| {
                    format!(
                        "{tid} {:.0} %",
                        *ticks as f64 * 1000.0 / elapsed.as_millis().max(1) as f64
                    )
                })
                .collect();
            println!("  threads (share of one core): {}", shown.join(", "));
        }
        stop.send(true).unwrap();
        task.await.unwrap().unwrap();
        (elapsed, stats, cpu)
    }

    fn applier(&self, slot: &str, store: Store, initialize: bool) -> PgToRealm {
        let mut options = PgToRealmOptions::new(
            slot,
            "pgrealm",
            PgToRealmOptions::template("/{user_id}/bench").unwrap(),
        );
        options.progress = Progress::Quiet;
        options.initialize_realm_from_postgres = initialize;
        PgToRealm::new(
            self.pg.clone(),
            options,
            store,
            Arc::new(Metrics::default()),
        )
    }
}

/// CPU time spent while one receiver drained a slot: its own, and the PostgreSQL cluster's (the
/// walsender decoding and sending, and whatever else ran in the cluster meanwhile).
struct Cpu {
    receiver: Duration,
    server: Duration,
}

impl Cpu {
    /// "own X µs, PostgreSQL Y µs" per change.
    fn per_change(&self, changes: f64) -> String {
        format!(
            "CPU µs/change: own {:.2}, PostgreSQL {:.2}",
            self.receiver.as_secs_f64() * 1e6 / changes,
            self.server.as_secs_f64() * 1e6 / changes
        )
    }
}

fn rate(n: f64, d: Duration) -> f64 {
    n / d.as_secs_f64()
}

/// Runs a fixed piece of CPU work once a millisecond until `stop`, and returns how long each
/// run took: where the machine itself slows down, it does too (about 2 % of one core).
fn cpu_probe(stop: Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<Vec<Duration>> {
    std::thread::spawn(move || {
        let mut took = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
            let start = Instant::now();
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for i in 0..20_000u64 {
                x = (x ^ i).wrapping_mul(0xbf58_476d_1ce4_e5b9).rotate_left(17);
            }
            std::hint::black_box(x);
            took.push(start.elapsed());
        }
        took.sort();
        took
    })
}

/// Until `stop`: every 2 ms, the applier's durable position and the slot's
/// `confirmed_flush_lsn`. Returns, for each applied position, how long after it was first seen
/// the server first showed it confirmed (a position still unconfirmed at the end counts up to
/// then).
async fn follow_confirmations(
    url: String,
    slot: &'static str,
    stats: Arc<PgToRealmStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Duration> {
    let sql = pgrealm_runtime::testing::connect(&url).await.unwrap();
    let query = sql
        .prepare(
            "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots \
             WHERE slot_name = $1",
        )
        .await
        .unwrap();
    // Applied positions not yet confirmed, with when they were first seen.
    let mut waiting: std::collections::VecDeque<(u64, Instant)> = Default::default();
    let mut delays = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    while !*stop.borrow_and_update() {
        tick.tick().await;
        let applied = stats.confirmed_lsn.load(Ordering::Relaxed);
        if waiting.back().is_none_or(|(lsn, _)| *lsn < applied) {
            waiting.push_back((applied, Instant::now()));
        }
        let confirmed: i64 = sql.query_one(&query, &[&slot]).await.unwrap().get(0);
        while let Some((lsn, seen)) = waiting.front() {
            if *lsn > confirmed as u64 {
                break;
            }
            delays.push(seen.elapsed());
            waiting.pop_front();
        }
    }
    delays.extend(waiting.iter().map(|(_, seen)| seen.elapsed()));
    delays
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn stream_workload(b: &Bench, label: &str, write: impl std::future::Future<Output = ()>) {
    let tag = label
        .split(' ')
        .next()
        .unwrap()
        .trim_matches(|c| c == '(' || c == ')');
    // One slot for pgrealm and one for pg_recvlogical per round, all on the same WAL.
    let rounds = repeats();
    let round_slots: Vec<[String; 2]> = (0..rounds)
        .map(|r| {
            let suffix = if r == 0 {
                String::new()
            } else {
                format!("_{r}")
            };
            [format!("ours_{tag}{suffix}"), format!("recv_{tag}{suffix}")]
        })
        .collect();
    let peek_slot = format!("peek_{tag}");
    for slot in round_slots.iter().flatten().chain([&peek_slot]) {
        b.slot(slot).await;
    }
    let before: i64 = b
        .sql
        .query_one("SELECT count(*) FROM item", &[])
        .await
        .unwrap()
        .get(0);
    write.await;
    let end = b.lsn().await;
    let after: i64 = b
        .sql
        .query_one("SELECT count(*) FROM item", &[])
        .await
        .unwrap()
        .get(0);
    let changes = (after - before) as f64;
    let peek = b.peek(&peek_slot, end).await;
    let mut ratios = Vec::new();
    for (round, [ours_slot, recv_slot]) in round_slots.iter().enumerate() {
        let (recv, recv_cpu) = b.recvlogical(recv_slot, end);
        let (ours, stats, cpu) = b.ours(ours_slot, end).await;
        let applied = stats.changes.load(Ordering::Relaxed) as f64;
        assert_eq!(applied, changes, "every change applied");
        let round_label = if rounds > 1 {
            format!("{label}, round {} of {rounds}", round + 1)
        } else {
            label.to_owned()
        };
        println!(
            "{round_label}: {changes} changes in {} transactions, {} store commits\n  \
             pgrealm            {:>10.0} changes/s   ({}; own = all its threads)\n  \
             pg_recvlogical     {:>10.0} changes/s   → pgrealm / pg_recvlogical = {:.2}×   ({})\n  \
             peek (decode only) {:>10.0} changes/s   → pgrealm / peek = {:.2}×",
            stats.transactions.load(Ordering::Relaxed),
            stats.store_commits.load(Ordering::Relaxed),
            rate(changes, ours),
            cpu.per_change(changes),
            rate(changes, recv),
            recv.as_secs_f64() / ours.as_secs_f64(),
            recv_cpu.per_change(changes),
            rate(changes, peek),
            peek.as_secs_f64() / ours.as_secs_f64(),
        );
        ratios.push(recv.as_secs_f64() / ours.as_secs_f64());
    }
    if rounds > 1 {
        let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}×")).collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "{label}: pgrealm / pg_recvlogical by round {}; median {:.2}×",
            shown.join(", "),
            ratios[ratios.len() / 2]
        );
    }
    for slot in round_slots.iter().flatten().chain([&peek_slot]) {
        b.sql
            .execute("SELECT pg_drop_replication_slot($1)", &[slot])
            .await
            .unwrap();
    }
}

#[tokio::main]
async fn main() {
    // As the generated binary does.
    pgrealm_runtime::cli::disable_transparent_huge_pages();
    let cluster = PgCluster::shared();
    let db = cluster.fresh_database().unwrap();
    let pg = PgConnectOptions::from_url(&db.url).unwrap();
    let sql = pg.connect_sql().await.unwrap();
    sql.batch_execute(DDL).await.unwrap();
    ensure_publication(&sql, "pgrealm", &[QualifiedTable::public("item")])
        .await
        .unwrap();
    let b = Bench {
        cluster,
        db,
        pg,
        sql,
    };
    let n = rows();
    println!("PostgreSQL → realm benchmark, {n} changes per workload\n");

    // (a) 1,000-row transactions (when only the load runs, they are its rows).
    let users = users();
    let write_a = || async {
        for start in (0..n).step_by(1000) {
            b.sql
                .execute(
                    "INSERT INTO item SELECT i, 'item ' || i, i, 'u' || (i % $2) \
                     FROM generate_series($1::bigint, $1::bigint + 999) i",
                    &[&start, &users],
                )
                .await
                .unwrap();
        }
    };
    if runs("a") {
        stream_workload(&b, "(a) 1,000-row transactions", write_a()).await;
    } else if runs("load") {
        write_a().await;
    }

    // (b) single-row transactions from 8 concurrent clients.
    if runs("b") {
        stream_workload(&b, "(b) single-row transactions, 8 clients", async {
            let per_client = n / 8;
            let mut clients = Vec::new();
            for c in 0..8i64 {
                let url = b.db.url.clone();
                clients.push(tokio::spawn(async move {
                    let sql = pgrealm_runtime::testing::connect(&url).await.unwrap();
                    let insert = sql
                        .prepare("INSERT INTO item VALUES ($1, 'single', $1, $2)")
                        .await
                        .unwrap();
                    let user = format!("u{c}");
                    for i in 0..per_client {
                        let id = 10_000_000 + c * per_client + i;
                        sql.execute(&insert, &[&id, &user]).await.unwrap();
                    }
                }));
            }
            for client in clients {
                client.await.unwrap();
            }
        })
        .await;
    }

    // Initial load against \copy of the same table.
    let dir = tempfile::tempdir_in(".").unwrap();
    if runs("load") {
        let total: i64 = b
            .sql
            .query_one("SELECT count(*) FROM item", &[])
            .await
            .unwrap()
            .get(0);
        b.sql.batch_execute("VACUUM ANALYZE item").await.unwrap();
        let started = Instant::now();
        let status = Command::new(cluster.bin_dir().join("psql"))
            .args([&b.db.url, "-q", "-c", "\\copy item to '/dev/null'"])
            .status()
            .unwrap();
        assert!(status.success());
        let copy = started.elapsed();
        let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
        let sync = b.applier("load", store.clone(), true);
        let written_before = written_bytes();
        let (cpu_before, server_before) = (process_cpu(), cluster_cpu(b.cluster));
        let started = Instant::now();
        let report = sync.setup().await.unwrap();
        let load = started.elapsed();
        let load_cpu = Cpu {
            receiver: process_cpu().saturating_sub(cpu_before),
            server: cluster_cpu(b.cluster).saturating_sub(server_before),
        };
        let written = written_bytes().saturating_sub(written_before);
        // The load is durable in the write-ahead log; the store file gets its pages at the next
        // checkpoint (the first commit after it, or this).
        let started = Instant::now();
        store.checkpoint().unwrap();
        let checkpoint = started.elapsed();
        let checkpoint_written = written_bytes().saturating_sub(written_before + written);
        let phases = report.load.unwrap();
        let loaded = phases.rows;
        assert_eq!(loaded as i64, total);
        println!(
        "initial load: {total} rows\n  pgrealm            {:>10.0} rows/s\n  \\copy to /dev/null {:>10.0} rows/s   → pgrealm / \\copy = {:.2}×",
        rate(total as f64, load),
        rate(total as f64, copy),
        copy.as_secs_f64() / load.as_secs_f64()
    );
        println!(
            "  of which: before the slot {:>6.1} ms, slot to every row copied {:>6.1} ms, last commit {:>6.1} ms",
            (load - phases.copied_in - phases.committed_in).as_secs_f64() * 1000.0,
            phases.copied_in.as_secs_f64() * 1000.0,
            phases.committed_in.as_secs_f64() * 1000.0
        );
        println!(
            "  {} (µs a row; the load's whole setup)",
            load_cpu.per_change(total as f64)
        );
        let on_disk: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        println!(
            "  store on disk        {:>10.1} MiB, the file's length (redb grows it in steps)",
            on_disk as f64 / (1 << 20) as f64,
        );
        println!(
            "  written by the load  {:>10.1} MiB ({:.0} bytes/row; /proc/self/io write_bytes)",
            written as f64 / (1 << 20) as f64,
            written as f64 / total as f64
        );
        println!(
            "  then a checkpoint    {:>10.1} ms, {:.1} MiB written (redb's pages of the load, which \
             the first commit after it writes otherwise)",
            checkpoint.as_secs_f64() * 1000.0,
            checkpoint_written as f64 / (1 << 20) as f64,
        );
    }
    if runs("lag") {
        lag(&b, dir.path()).await;
    }
    if runs("big") {
        big_transaction(&b).await;
    }
}

/// Lag at a steady 1,000 transactions/s, against the single-row commit latency.
async fn lag(b: &Bench, dir: &std::path::Path) {
    let store = Store::open(dir.join("lag"), schema(), StoreOptions::default()).unwrap();
    let sync = b.applier("load", store.clone(), false);
    let _ = sync.setup().await;
    let stats = sync.stats();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(sync.run(stopped));
    let confirmations = tokio::spawn(follow_confirmations(
        b.db.url.clone(),
        "load",
        stats,
        stop.subscribe(),
    ));
    let committed: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let visible: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let watcher = {
        let visible = visible.clone();
        let mut feed = store.subscribe(Subscription::new(
            regex::Regex::new("^/lag/bench$").unwrap(),
        ));
        tokio::spawn(async move {
            loop {
                let Ok(changeset) = feed.next().await else {
                    break;
                };
                let now = Instant::now();
                let mut seen = visible.lock().unwrap();
                for instruction in &changeset.instructions {
                    if let pgrealm_runtime::Instruction::Create {
                        key: pgrealm_schema::PrimaryKey::Int(id),
                        ..
                    } = instruction
                    {
                        seen.push((*id, now));
                    }
                }
            }
        })
    };
    // With BENCH_LAG_DETAIL: a task that wakes every millisecond and notes how late it woke,
    // to tell stalls of this process's tokio workers from stalls elsewhere.
    let heartbeat = std::env::var_os("BENCH_LAG_DETAIL").map(|_| {
        tokio::spawn(async move {
            let start = Instant::now();
            let mut late = Vec::new();
            let mut expected = Instant::now() + Duration::from_millis(1);
            while start.elapsed() < Duration::from_secs(6) {
                tokio::time::sleep_until(expected.into()).await;
                let now = Instant::now();
                if now > expected + Duration::from_millis(5) {
                    late.push((now.duration_since(start), now.duration_since(expected)));
                }
                expected = now + Duration::from_millis(1);
            }
            late
        })
    });
    let probe_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = cpu_probe(probe_stop.clone());
    let seconds = 5u64;
    let writers = 4i64;
    let mut latencies = Vec::new();
    let mut handles = Vec::new();
    for w in 0..writers {
        let url = b.db.url.clone();
        let committed = committed.clone();
        handles.push(tokio::spawn(async move {
            let sql = pgrealm_runtime::testing::connect(&url).await.unwrap();
            let insert = sql
                .prepare("INSERT INTO item VALUES ($1, 'lag', 0, 'lag')")
                .await
                .unwrap();
            let period = Duration::from_micros(1_000_000 * writers as u64 / 1000);
            let mut tick = tokio::time::interval(period);
            let mut out = Vec::new();
            for i in 0..(1000 * seconds as i64 / writers) {
                tick.tick().await;
                let id = 50_000_000 + w * 1_000_000 + i;
                let t0 = Instant::now();
                sql.execute(&insert, &[&id]).await.unwrap();
                let t1 = Instant::now();
                committed.lock().unwrap().insert(id, t1);
                out.push(t1 - t0);
            }
            out
        }));
    }
    for h in handles {
        latencies.extend(h.await.unwrap());
    }
    probe_stop.store(true, Ordering::Relaxed);
    let probe = probe.join().unwrap();
    let expected = latencies.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while visible.lock().unwrap().len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    watcher.abort();
    let mut confirm_delays = confirmations.await.unwrap();
    confirm_delays.sort();
    let mut lags: Vec<Duration> = {
        let committed = committed.lock().unwrap();
        visible
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(id, at)| committed.get(id).map(|c| at.saturating_duration_since(*c)))
            .collect()
    };
    if std::env::var_os("BENCH_LAG_DETAIL").is_some() {
        let committed = committed.lock().unwrap();
        let first = committed.values().min().copied().unwrap();
        let mut detail: Vec<(Duration, Duration)> = visible
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(id, at)| {
                committed
                    .get(id)
                    .map(|c| (at.saturating_duration_since(*c), c.duration_since(first)))
            })
            .collect();
        detail.sort();
        for (lag, at) in detail.iter().rev().take(40) {
            println!("  lag {lag:>10.2?} for the commit at {at:>10.2?}");
        }
    }
    if let Some(heartbeat) = heartbeat {
        for (at, late) in heartbeat.await.unwrap() {
            println!(
                "  a 1 ms timer woke {late:>10.2?} late, {at:>10.2?} after the clients started"
            );
        }
    }
    lags.sort();
    latencies.sort();
    println!(
        "lag at 1,000 transactions/s ({} transactions, {writers} clients):\n  \
         commit → visible in realm   p50 {:>8.2?}  p99 {:>8.2?}\n  \
         single-row commit latency   p50 {:>8.2?}  p99 {:>8.2?}\n  \
         fixed CPU work, same seconds p50 {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}  \
         ({} of {} runs over 3× the median)\n  \
         applied → slot confirmed     p50 {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}  \
         ({} applied positions, polled every 2 ms)",
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&probe, 0.5),
        percentile(&probe, 0.99),
        probe.last().copied().unwrap_or_default(),
        probe
            .iter()
            .filter(|t| **t > percentile(&probe, 0.5) * 3)
            .count(),
        probe.len(),
        percentile(&confirm_delays, 0.5),
        percentile(&confirm_delays, 0.99),
        confirm_delays.last().copied().unwrap_or_default(),
        confirm_delays.len(),
    );
}

async fn big_transaction(b: &Bench) {
    // One 1,000,000-row transaction: how long, and how much memory the apply takes.
    let big: i64 = std::env::var("BENCH_BIG_TX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    b.slot("big").await;
    b.sql
        .execute(
            "INSERT INTO item SELECT i, 'big ' || i, i, 'u' || (i % 8) \
             FROM generate_series(100000000::bigint, 100000000::bigint + $1 - 1) i",
            &[&big],
        )
        .await
        .unwrap();
    let end = b.lsn().await;
    let rss_before = peak_rss_kib();
    let (took, stats, _) = b.ours("big", end).await;
    println!(
        "one {big}-row transaction: applied in {took:.2?} ({:.0} changes/s, {} store commit(s)); \
         peak RSS {} MiB → {} MiB",
        rate(big as f64, took),
        stats.store_commits.load(Ordering::Relaxed),
        rss_before / 1024,
        peak_rss_kib() / 1024
    );
}

/// The process's peak resident set (VmHWM), KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The CPU time (user + system, every thread) this process has used, from `/proc/self/stat`,
/// in clock ticks of 10 ms (Linux's `USER_HZ` on this kind of machine).
fn process_cpu() -> Duration {
    let [utime, stime, ..] = stat_times("self").unwrap();
    Duration::from_millis((utime + stime) * 10)
}

/// Each thread of this process and its CPU time so far, in clock ticks.
fn thread_cpu() -> HashMap<String, u64> {
    let mut threads = HashMap::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let tid = entry.file_name().to_string_lossy().into_owned();
        if let Some([utime, stime, ..]) = stat_times(&format!("self/task/{tid}")) {
            threads.insert(tid, utime + stime);
        }
    }
    threads
}

/// Bytes this process has sent (or dirtied in the page cache) for storage so far.
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|line| line.strip_prefix("write_bytes: "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time of the processes this one has waited for (`pg_recvlogical`, `psql`).
fn children_cpu() -> Duration {
    let [.., cutime, cstime] = stat_times("self").unwrap();
    Duration::from_millis((cutime + cstime) * 10)
}

/// utime, stime, cutime and cstime of `/proc/<pid>/stat`, in clock ticks (10 ms here), or
/// `None` when the process is gone.
fn stat_times(pid: &str) -> Option<[u64; 4]> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which ends at the last ')': utime is the 14th of the
    // line, the 12th after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    fields.try_into().ok()
}

/// The postmaster's pid.
fn postmaster(cluster: &PgCluster) -> String {
    let pid_file = std::fs::read_to_string(cluster.data_dir().join("postmaster.pid")).unwrap();
    pid_file.lines().next().unwrap().trim().to_owned()
}

/// The pids of the postmaster's children.
fn children_of(parent: &str) -> Vec<String> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{name}/status")) else {
            continue;
        };
        if status
            .lines()
            .any(|l| l.strip_prefix("PPid:").map(str::trim) == Some(parent))
        {
            children.push(name);
        }
    }
    children
}

/// How many walsenders the cluster runs (an exited one not yet reaped counts).
fn walsenders(cluster: &PgCluster) -> usize {
    children_of(&postmaster(cluster))
        .iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(9).any(|w| w == b"walsender"))
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))
        })
        .count()
}

/// CPU time of the whole PostgreSQL cluster: the postmaster, its live children (backends,
/// walsenders), and the children it has reaped (a walsender whose client has gone).
///
/// A child reaped while it is being read drops out of both counts, and the true figure only
/// grows, so this is the largest of three reads.
fn cluster_cpu(cluster: &PgCluster) -> Duration {
    let postmaster = postmaster(cluster);
    let read = || {
        let mut ticks = stat_times(&postmaster).unwrap().iter().sum::<u64>();
        for child in children_of(&postmaster) {
            ticks += stat_times(&child).map_or(0, |[u, s, ..]| u + s);
        }
        ticks
    };
    let ticks = (0..3).map(|_| read()).max().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}
