//! Benchmark of the realm store, each figure next to the disk's limit measured in the same run.
//!
//! ```text
//! cargo run --release -p pgrealm-runtime --example store_bench [-- DIR]
//! ```
//!
//! DIR (default: a fresh directory under the current one) must be on the disk under test; the
//! raw write+fsync loop runs on a file in that same directory. Prints commits/s for 1-object and
//! 1,000-object transactions, objects/s, and the change feed's delivery rate, as ratios to the
//! raw rate. Not a test: figures go in BENCHMARKS.md.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use pgrealm_runtime::{RealmPath, Store, StoreOptions, Subscription};
use pgrealm_schema::{
    Class, IntWidth, ListItem, Object, Property, PropertyType, ScalarType, Schema, Value,
};

/// The allocator the generated binary uses (`pgrealm::main!`), so the figures are its.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long each timed loop runs (`STORE_BENCH_SECS`, default 4).
fn run_time() -> Duration {
    let secs = std::env::var("STORE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    Duration::from_secs_f64(secs)
}

fn schema() -> Schema {
    let scalar = |s| PropertyType::Scalar(s);
    Schema::new(vec![Class::new("Bus")
        .property(Property::new("id", scalar(ScalarType::Int(IntWidth::I64))).primary_key())
        .property(Property::new("name", scalar(ScalarType::String)))
        .property(Property::new("seats", scalar(ScalarType::Int(IntWidth::I16))).optional())
        .property(Property::new("speed", scalar(ScalarType::Double)))
        .property(Property::new(
            "tags",
            PropertyType::List(ListItem::Scalar(ScalarType::String)),
        ))])
}

/// A bus of about 60 bytes of values.
fn bus(id: i64, generation: i64) -> Object {
    Object::new("Bus")
        .with("id", Value::Int(id))
        .with("name", Value::String(format!("bus {id} gen {generation}")))
        .with("seats", Value::Int(40 + id % 20))
        .with("speed", Value::Double(generation as f64 * 0.5))
        .with(
            "tags",
            Value::List(vec![
                Value::String("city".into()),
                Value::String("night".into()),
            ]),
        )
}

/// Run `f` repeatedly for [`run_time`]; returns iterations per second.
fn rate(mut f: impl FnMut(u64)) -> (f64, u64) {
    let (start, run) = (Instant::now(), run_time());
    let mut n = 0;
    while start.elapsed() < run {
        f(n);
        n += 1;
    }
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

/// pwrite of a 4 KiB block at offset 0 followed by fsync (or fdatasync), in a loop.
fn raw_sync_rate(dir: &Path, data_only: bool) -> f64 {
    let path = dir.join("fsync-probe");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("create the probe file");
    let block = vec![0xA5u8; 4096];
    file.write_all_at(&block, 0).expect("write");
    file.sync_all().expect("fsync");
    let (r, _) = rate(|i| {
        let mut b = block.clone();
        b[0] = i as u8;
        file.write_all_at(&b, 0).expect("write");
        if data_only {
            file.sync_data().expect("fdatasync");
        } else {
            file.sync_all().expect("fsync");
        }
    });
    std::fs::remove_file(path).ok();
    r
}

/// CPU seconds (user + system) this process has used so far, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// Bytes this process has handed to write calls so far (`wchar` of /proc/self/io).
fn written_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The raw cost of a big commit's I/O: `bytes` written as 4 KiB blocks at scattered offsets of a
/// 64 MiB file, then one fdatasync, in a loop.
fn raw_scattered_rate(dir: &Path, bytes: u64) -> f64 {
    let path = dir.join("scatter-probe");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("create the probe file");
    const SPAN: u64 = 64 << 20;
    file.set_len(SPAN).expect("size the probe file");
    let block = vec![0x5Au8; 4096];
    let blocks = bytes.div_ceil(4096).max(1);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let (r, _) = rate(|_| {
        for _ in 0..blocks {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            file.write_all_at(&block, (x % (SPAN / 4096)) * 4096)
                .expect("write");
        }
        file.sync_data().expect("fdatasync");
    });
    std::fs::remove_file(path).ok();
    r
}

/// Writer counts for the concurrent loops (`STORE_BENCH_WRITERS`, comma-separated, default 2,4).
fn concurrent_writers() -> Vec<usize> {
    std::env::var("STORE_BENCH_WRITERS")
        .unwrap_or_else(|_| "2,4".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect()
}

/// Writer counts for the concurrent 1-object loop (`STORE_BENCH_SMALL_WRITERS`, default 8).
fn concurrent_small_writers() -> Vec<usize> {
    std::env::var("STORE_BENCH_SMALL_WRITERS")
        .unwrap_or_else(|_| "8".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect()
}

/// `writers` threads each committing 1,000-object creates into its own realm for
/// [`run_time`]; returns all writers' commits per second together and the objects each redb
/// transaction (one fsync) carried on average.
fn concurrent_big_commits(store: &Store, writers: usize) -> (f64, f64) {
    let start = Instant::now();
    let before = store.commit_stats();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                let realm = RealmPath::parse(&format!("/bench/writers{writers}/w{w}")).unwrap();
                let mut next_id = 0i64;
                let (_, commits) = rate(|_| {
                    let mut tx = store.begin_write("postgres");
                    for _ in 0..1000 {
                        tx.put_object(&realm, bus(next_id, 0)).unwrap();
                        next_id += 1;
                    }
                    tx.commit().unwrap();
                });
                commits
            })
        })
        .collect();
    let commits: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let secs = start.elapsed().as_secs_f64();
    let after = store.commit_stats();
    let groups = (after.groups - before.groups).max(1);
    (
        commits as f64 / secs,
        commits as f64 * 1000.0 / groups as f64,
    )
}

fn main() {
    // As the generated binary does.
    pgrealm_runtime::cli::disable_transparent_huge_pages();
    let dir = match std::env::args().nth(1) {
        Some(d) => {
            std::fs::create_dir_all(&d).expect("create the bench directory");
            tempfile::tempdir_in(d).expect("a fresh directory")
        }
        None => tempfile::tempdir_in(".").expect("a fresh directory under the current one"),
    };
    let data = dir.path();
    println!(
        "store bench in {} ({:.1} s per loop)",
        data.display(),
        run_time().as_secs_f64()
    );

    let fsync = raw_sync_rate(data, false);
    let fdatasync = raw_sync_rate(data, true);
    println!("raw 4 KiB write+fsync:      {fsync:>10.0} /s   (the limit below)");
    println!("raw 4 KiB write+fdatasync:  {fdatasync:>10.0} /s   (what redb calls)");

    let store = Store::open(data.join("store"), schema(), StoreOptions::default()).unwrap();
    let realm = RealmPath::parse("/bench/small").unwrap();

    // 1-object transactions: alternate creates and updates of a small working set.
    let (small, small_n) = rate(|i| {
        let mut tx = store.begin_write("app");
        tx.put_object(&realm, bus((i % 1000) as i64, i as i64))
            .unwrap();
        tx.commit().unwrap();
    });
    println!(
        "1-object commits:           {small:>10.0} /s   = {:.2} × fsync rate ({small_n} commits)",
        small / fsync
    );

    // The same 1-object commits from several writers at once, each into its own realm: they
    // share fsyncs (group commit).
    for writers in concurrent_small_writers() {
        let before = store.commit_stats();
        let start = Instant::now();
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let realm = RealmPath::parse(&format!("/bench/small{writers}/w{w}")).unwrap();
                    rate(|i| {
                        let mut tx = store.begin_write("app");
                        tx.put_object(&realm, bus((i % 1000) as i64, i as i64))
                            .unwrap();
                        tx.commit().unwrap();
                    })
                    .1
                })
            })
            .collect();
        let commits: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let per_sec = commits as f64 / start.elapsed().as_secs_f64();
        let groups = (store.commit_stats().groups - before.groups).max(1);
        println!(
            "1-object commits, {writers} writers: {per_sec:>9.0} /s   = {:.2} × fsync rate ({commits} commits in \
             {groups} fsyncs)",
            per_sec / fsync
        );
    }

    // 1,000-object transactions: creates, then updates of the same objects.
    let big_realm = RealmPath::parse("/bench/big").unwrap();
    let mut next_id = 0i64;
    let written_before = written_bytes();
    let cpu_before = cpu_seconds();
    let (big, big_n) = rate(|_| {
        let mut tx = store.begin_write("postgres");
        for _ in 0..1000 {
            tx.put_object(&big_realm, bus(next_id, 0)).unwrap();
            next_id += 1;
        }
        tx.commit().unwrap();
    });
    let per_commit = (written_bytes() - written_before) / big_n.max(1);
    let cpu_per_commit = (cpu_seconds() - cpu_before) / big_n.max(1) as f64;
    let scattered = raw_scattered_rate(data, per_commit);
    println!(
        "1,000-object commits:       {big:>10.1} /s   = {:.2} × fsync rate; {:.0} objects/s created",
        big / fsync,
        big * 1000.0
    );
    println!(
        "  each writes {} KiB and uses {:.1} ms of CPU (user+system); raw {} KiB scattered \
         write+fdatasync: {scattered:.1} /s, so 1,000-object commits run at {:.2} × their I/O limit",
        per_commit / 1024,
        cpu_per_commit * 1000.0,
        per_commit / 1024,
        big / scattered
    );
    // The same 1,000-object creates from several writers at once (each its own realm, as the
    // server's API and both sync directions would): their commits share redb transactions and
    // fsyncs (group commit).
    for writers in concurrent_writers() {
        let cpu_before = cpu_seconds();
        let (rate, objects_per_commit) = concurrent_big_commits(&store, writers);
        let cpu = (cpu_seconds() - cpu_before) / (rate * run_time().as_secs_f64()).max(1.0);
        println!(
            "1,000-object commits, {writers} writers: {rate:>8.1} /s   = {:.2} × fsync rate; {:.0} objects/s \
             created ({objects_per_commit:.0} objects per fsync, {:.1} ms of CPU per 1,000 objects)",
            rate / fsync,
            rate * 1000.0,
            cpu * 1000.0
        );
    }
    let created = next_id;
    let mut generation = 1;
    let mut cursor = 0i64;
    let (upd, _) = rate(|_| {
        let mut tx = store.begin_write("postgres");
        for _ in 0..1000 {
            tx.put_object(&big_realm, bus(cursor, generation)).unwrap();
            cursor += 1;
            if cursor == created {
                cursor = 0;
                generation += 1;
            }
        }
        tx.commit().unwrap();
    });
    println!(
        "1,000-object update commits:{upd:>10.1} /s   = {:.2} × fsync rate; {:.0} objects/s updated",
        upd / fsync,
        upd * 1000.0
    );

    // Change feed: catch up on both realms' logs from version 0.
    let changesets = small_n + big_n;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (secs, instructions) = runtime.block_on(async {
        let mut feed = store.subscribe(Subscription::all());
        let start = Instant::now();
        let mut instructions = 0usize;
        let total = store.realm(&realm).unwrap().unwrap().version()
            + store.realm(&big_realm).unwrap().unwrap().version();
        for _ in 0..total {
            instructions += feed.next().await.unwrap().instructions.len();
        }
        (start.elapsed().as_secs_f64(), instructions)
    });
    let total = store.realm(&realm).unwrap().unwrap().version()
        + store.realm(&big_realm).unwrap().unwrap().version();
    let feed_rate = total as f64 / secs;
    println!(
        "feed catch-up:              {feed_rate:>10.0} changesets/s = {:.1} × fsync rate; \
         {:.0} instructions/s ({total} changesets, {instructions} instructions)",
        feed_rate / fsync,
        instructions as f64 / secs
    );
    let _ = changesets;

    // Live feed: a subscriber following 1-object commits as they happen.
    let live_realm = RealmPath::parse("/bench/live").unwrap();
    let (live_commits, lag, lag99) = runtime.block_on(async {
        let mut feed = store.subscribe(Subscription::new(
            regex::Regex::new("^/bench/live$").unwrap(),
        ));
        let writer = {
            let store = store.clone();
            let live_realm = live_realm.clone();
            tokio::task::spawn_blocking(move || {
                let mut n = 0u64;
                let (start, run) = (Instant::now(), run_time());
                let mut sent = Vec::new();
                while start.elapsed() < run {
                    sent.push(Instant::now());
                    let mut tx = store.begin_write("app");
                    tx.put_object(&live_realm, bus(n as i64, 0)).unwrap();
                    tx.commit().unwrap();
                    n += 1;
                }
                sent
            })
        };
        let mut lags = Vec::new();
        let mut received = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(2), feed.next()).await;
            match next {
                Ok(c) => received.push((c.unwrap().version, Instant::now())),
                Err(_) => break,
            }
        }
        let sent = writer.await.unwrap();
        for (version, at) in &received {
            lags.push(at.duration_since(sent[(*version - 1) as usize]));
        }
        lags.sort();
        assert_eq!(received.len(), sent.len(), "the live feed missed commits");
        (
            sent.len(),
            lags[lags.len() / 2],
            lags[(lags.len() * 99 / 100).min(lags.len() - 1)],
        )
    });
    println!(
        "live feed:                  {:>10.0} changesets/s delivered = every commit; from the \
         commit call to delivery p50 {:?}, p99 {:?}",
        live_commits as f64 / run_time().as_secs_f64(),
        lag,
        lag99
    );
}
