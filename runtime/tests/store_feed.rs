//! The change feed (catch-up then live, exactly once across resumes, realms created later,
//! per-realm order, pruned positions) and snapshot consistency under concurrent writes.

mod store_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgrealm_runtime::{Changeset, RealmPath, Store, StoreError, StoreOptions, Subscription};
use regex::Regex;
use store_support::{bus, schema, Bus, Rng};

fn path(s: &str) -> RealmPath {
    RealmPath::parse(s).unwrap()
}

/// One commit putting bus `id` into each of `realms`.
fn commit(store: &Store, realms: &[RealmPath], id: i64) {
    let mut tx = store.begin_write("app");
    for realm in realms {
        tx.realm(realm).put(&bus(id, &format!("bus {id}"))).unwrap();
    }
    tx.commit().unwrap();
}

async fn next(feed: &mut pgrealm_runtime::ChangeFeed) -> Changeset {
    tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .expect("a changeset within 10 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_delivers_every_changeset_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
    let mut rng = Rng::from_env("PGREALM_FEED_SEED");
    let realms: Vec<_> = (0..4).map(|i| path(&format!("/user{i}/buses"))).collect();
    let ignored = path("/other");

    // A writer commits to random subsets of the realms while the subscriber stops and resumes.
    const COMMITS: i64 = 300;
    let writer = {
        let store = store.clone();
        let realms = realms.clone();
        let ignored = ignored.clone();
        let mut rng = rng.clone();
        std::thread::spawn(move || {
            for id in 0..COMMITS {
                let mut chosen: Vec<_> = realms
                    .iter()
                    .filter(|_| rng.below(2) == 0)
                    .cloned()
                    .collect();
                if chosen.is_empty() {
                    chosen.push(ignored.clone());
                }
                commit(&store, &chosen, id);
            }
        })
    };

    let pattern = Regex::new("^/user[0-9]+/").unwrap();
    let mut positions: HashMap<RealmPath, u64> = HashMap::new();
    let mut received: HashMap<RealmPath, Vec<u64>> = HashMap::new();
    let caught_up = |positions: &HashMap<RealmPath, u64>| {
        realms.iter().all(|r| {
            let current = store.realm(r).unwrap().map_or(0, |v| v.version());
            positions.get(r).copied().unwrap_or(0) == current
        })
    };
    'resubscribe: loop {
        let mut subscription = Subscription::new(pattern.clone());
        for (realm, version) in &positions {
            subscription = subscription.resume_from(realm.clone(), *version);
        }
        let mut feed = store.subscribe(subscription);
        // Read a random number of changesets, then drop the feed (a subscriber stopping).
        for _ in 0..1 + rng.below(60) {
            // The writer commits every few milliseconds: a quiet second means it has finished.
            let Ok(c) = tokio::time::timeout(Duration::from_secs(1), feed.next()).await else {
                assert!(
                    writer.is_finished(),
                    "the feed stalled while commits went on"
                );
                assert!(caught_up(&positions), "the feed stalled behind the log");
                break 'resubscribe;
            };
            let c = c.unwrap();
            assert!(
                pattern.is_match(c.realm.as_str()),
                "{} does not match",
                c.realm
            );
            received.entry(c.realm.clone()).or_default().push(c.version);
            positions.insert(c.realm.clone(), c.version);
            assert_eq!(feed.positions().get(&c.realm), Some(&c.version));
        }
    }
    writer.join().unwrap();
    for realm in &realms {
        let current = store.realm(realm).unwrap().map_or(0, |v| v.version());
        let got = received.remove(realm).unwrap_or_default();
        assert_eq!(got, (1..=current).collect::<Vec<_>>(), "{realm}");
    }
    assert!(
        received.is_empty(),
        "unexpected realms: {:?}",
        received.keys()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realms_created_after_subscribing_are_delivered_live() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
    commit(&store, &[path("/early")], 1);
    let mut feed = store.subscribe(Subscription::all());
    let c = next(&mut feed).await;
    assert_eq!((c.realm.as_str(), c.version), ("/early", 1));

    // Nothing more: the feed waits rather than returning.
    let waited = tokio::time::timeout(Duration::from_millis(100), feed.next()).await;
    assert!(waited.is_err(), "the feed should wait for commits");

    let writer = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            for i in 0..20 {
                commit(&store, &[path(&format!("/late{}", i % 5))], i);
            }
        })
    };
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for _ in 0..20 {
        let c = next(&mut feed).await;
        seen.entry(c.realm.to_string()).or_default().push(c.version);
    }
    writer.await.unwrap();
    assert_eq!(seen.len(), 5);
    for versions in seen.values() {
        assert_eq!(versions, &[1, 2, 3, 4]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_that_overflows_the_notifications_still_gets_everything() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        feed_buffer: 4,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), schema(), options).unwrap();
    let mut feed = store.subscribe(Subscription::all());
    let realms: Vec<_> = (0..10).map(|i| path(&format!("/r{i}"))).collect();
    for id in 0..50 {
        commit(
            &store,
            &realms[(id as usize) % 10..(id as usize) % 10 + 1],
            id,
        );
    }
    let mut per_realm: HashMap<RealmPath, Vec<u64>> = HashMap::new();
    for _ in 0..50 {
        let c = next(&mut feed).await;
        per_realm.entry(c.realm).or_default().push(c.version);
    }
    for realm in &realms {
        assert_eq!(per_realm[realm], [1, 2, 3, 4, 5], "{realm}");
    }
}

#[tokio::test]
async fn a_pruned_position_is_an_error_and_other_realms_keep_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        log_retention: 2,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), schema(), options).unwrap();
    for id in 0..5 {
        commit(&store, &[path("/old")], id);
    }
    commit(&store, &[path("/new")], 1);
    let mut feed = store.subscribe(Subscription::all().resume_from(path("/old"), 1));
    let mut errors = 0;
    let mut delivered = Vec::new();
    for _ in 0..2 {
        match feed.next().await {
            Err(StoreError::Pruned {
                realm,
                asked,
                oldest,
            }) => {
                assert_eq!((realm.as_str(), asked, oldest), ("/old", 2, 4));
                errors += 1;
            }
            Ok(c) => delivered.push((c.realm.to_string(), c.version)),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(errors, 1);
    assert_eq!(delivered, [("/new".to_owned(), 1)]);
}

#[test]
fn readers_see_consistent_snapshots_during_concurrent_writes() {
    // Each commit moves one unit between two realms, renaming both buses with the commit number:
    // a consistent snapshot always sees the total intact and both names equal.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
    let (a, b) = (path("/a"), path("/b"));
    let put = move |store: &Store, n: i64, seats_a: i16| {
        let (a, b) = (path("/a"), path("/b"));
        let mut tx = store.begin_write("app");
        let mut x = bus(1, &format!("n{n}"));
        x.seats = Some(seats_a);
        let mut y = bus(1, &format!("n{n}"));
        y.seats = Some(100 - seats_a);
        tx.realm(&a).put(&x).unwrap();
        tx.realm(&b).put(&y).unwrap();
        tx.commit().unwrap();
    };
    put(&store, 0, 50);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let store = store.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 1;
            let mut rng = Rng::new(7);
            while !stop.load(Ordering::Relaxed) && n < 400 {
                put(&store, n, rng.below(101) as i16);
                n += 1;
            }
            n
        })
    };
    let mut checks = 0;
    while !writer.is_finished() || checks < 50 {
        let snap = store.snapshot().unwrap();
        let x: Bus = snap.realm(&a).unwrap().unwrap().get(1).unwrap().unwrap();
        // Give the writer time to commit between the two reads of one snapshot.
        std::thread::sleep(Duration::from_micros(200));
        let y: Bus = snap.realm(&b).unwrap().unwrap().get(1).unwrap().unwrap();
        assert_eq!(x.seats.unwrap() + y.seats.unwrap(), 100);
        assert_eq!(x.name, y.name);
        let (va, vb) = (
            snap.realm(&a).unwrap().unwrap().version(),
            snap.realm(&b).unwrap().unwrap().version(),
        );
        assert_eq!(va, vb);
        checks += 1;
        if checks > 2000 {
            stop.store(true, Ordering::Relaxed);
        }
    }
    let commits = writer.join().unwrap();
    assert!(
        commits > 1 && checks >= 50,
        "{commits} commits, {checks} checks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_next_midway_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
    let realms: Vec<_> = (0..3).map(|i| path(&format!("/c{i}"))).collect();
    for id in 0..30 {
        commit(
            &store,
            &realms[(id as usize) % 3..(id as usize) % 3 + 1],
            id,
        );
    }
    let mut feed = store.subscribe(Subscription::all());
    let mut per_realm: HashMap<RealmPath, Vec<u64>> = HashMap::new();
    let (mut got, mut cancelled) = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got < 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "stuck after {got} changesets"
        );
        // Timeouts this short drop `next` in the middle of its blocking reads.
        match tokio::time::timeout(Duration::from_micros(20), feed.next()).await {
            Ok(c) => {
                let c = c.unwrap();
                per_realm.entry(c.realm).or_default().push(c.version);
                got += 1;
            }
            Err(_) => cancelled += 1,
        }
    }
    for realm in &realms {
        assert_eq!(per_realm[realm], (1..=10).collect::<Vec<_>>(), "{realm}");
    }
    eprintln!("{cancelled} calls were dropped midway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changesets_of_a_skipped_origin_come_without_their_instructions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
    let realm = path("/transit");
    // A commit streamed in parts (its instructions live in several records), then an ordinary
    // one, both from "postgres"; then one from an app.
    let mut streaming = store.begin_streaming("postgres").unwrap();
    let mut batch = store.begin_write("postgres");
    for id in 0..3_000 {
        batch.realm(&realm).put(&bus(id, "streamed")).unwrap();
        if batch.len() == 1_000 {
            streaming = streaming.apply(&mut batch).unwrap();
        }
    }
    streaming.apply(&mut batch).unwrap().commit().unwrap();
    let mut tx = store.begin_write("postgres");
    tx.realm(&realm).put(&bus(5_000, "plain")).unwrap();
    tx.commit().unwrap();
    commit(&store, std::slice::from_ref(&realm), 6_000);

    let mut skipping = store.subscribe(Subscription::all().headers_only_from("postgres"));
    let mut whole = store.subscribe(Subscription::all());
    for version in 1..=3u64 {
        let header = next(&mut skipping).await;
        let full = next(&mut whole).await;
        assert_eq!((header.version, full.version), (version, version));
        assert_eq!(header.origin, full.origin);
        assert_eq!(header.committed_at, full.committed_at);
        if full.origin == "postgres" {
            assert!(header.instructions.is_empty(), "version {version}");
            assert!(!full.instructions.is_empty(), "version {version}");
        } else {
            assert_eq!(header.instructions, full.instructions);
        }
    }
    // The streamed commit holds every object; the header-only reader never decoded them.
    let streamed = store.changes(&realm, 0, 1).unwrap().remove(0);
    assert!(streamed.instructions.len() > 3_000);
    assert_eq!(store.changes(&realm, 0, 10).unwrap().len(), 3);
}
