//! Group commit: many threads committing at once share redb transactions and fsyncs, yet each
//! commit gets its own gapless versions and changesets, is durable when its call returns, and a
//! transaction with bad data fails alone.

mod store_support;

use std::sync::{Arc, Barrier};

use pgrealm_runtime::{Instruction, RealmPath, Store, StoreError, StoreOptions};
use pgrealm_schema::{Object, Value};
use store_support::{bus, schema, Bus};

const THREADS: usize = 8;
const COMMITS: usize = 25;

#[test]
fn concurrent_commits_share_fsyncs_and_keep_their_own_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
    let shared = RealmPath::parse("/group/shared").unwrap();
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, shared, start) = (store.clone(), shared.clone(), start.clone());
            std::thread::spawn(move || {
                let own = RealmPath::parse(&format!("/group/t{t}")).unwrap();
                start.wait();
                let mut seen = Vec::new();
                for c in 0..COMMITS {
                    let id = (t * 1000 + c) as i64;
                    let mut tx = store.begin_write("app");
                    tx.realm(&own).put(&bus(id, "own")).unwrap();
                    tx.realm(&shared).put(&bus(id, "shared")).unwrap();
                    let info = tx.commit().unwrap();
                    // Durable and visible once commit returns.
                    let view = store.realm(&own).unwrap().unwrap();
                    assert!(view.get::<Bus>(id).unwrap().is_some());
                    seen.push((
                        info.version_of(&own).unwrap(),
                        info.version_of(&shared).unwrap(),
                        id,
                    ));
                }
                seen
            })
        })
        .collect();
    let mut shared_versions = Vec::new();
    for (t, handle) in handles.into_iter().enumerate() {
        let seen = handle.join().unwrap();
        let own: Vec<u64> = seen.iter().map(|s| s.0).collect();
        assert_eq!(own, (1..=COMMITS as u64).collect::<Vec<_>>(), "thread {t}");
        shared_versions.extend(seen.iter().map(|s| (s.1, s.2)));
    }

    // The shared realm got one version per commit, none twice, none skipped, and version v's
    // changeset creates exactly the bus of the commit that was told it made v.
    let total = (THREADS * COMMITS) as u64;
    shared_versions.sort();
    let versions: Vec<u64> = shared_versions.iter().map(|s| s.0).collect();
    assert_eq!(versions, (1..=total).collect::<Vec<_>>());
    let changes = store.changes(&shared, 0, usize::MAX).unwrap();
    assert_eq!(changes.len() as u64, total);
    for (change, (version, id)) in changes.iter().zip(&shared_versions) {
        assert_eq!(change.version, *version);
        // The first version also gives the realm its class.
        let objects: Vec<_> = change
            .instructions
            .iter()
            .filter(|i| !matches!(i, Instruction::AddClass { .. }))
            .collect();
        match &objects[..] {
            [Instruction::Create { key, .. }] => assert_eq!(key.to_string(), id.to_string()),
            other => panic!("version {version}: {other:?}"),
        }
    }

    let stats = store.commit_stats();
    assert_eq!(stats.transactions, total);
    assert!(
        stats.groups < stats.transactions,
        "{THREADS} threads committing at once never shared an fsync: {stats:?}"
    );
    eprintln!("{} commits in {} fsyncs", stats.transactions, stats.groups);
}

#[test]
fn a_transaction_with_bad_data_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
    let shared = RealmPath::parse("/group/shared").unwrap();
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, shared, start) = (store.clone(), shared.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut ok = 0;
                for c in 0..COMMITS {
                    let id = (t * 1000 + c) as i64;
                    let mut tx = store.begin_write("app");
                    tx.realm(&shared).put(&bus(id, "good")).unwrap();
                    let bad = t % 2 == 1 && c % 3 == 0;
                    if bad {
                        // A new route without its required name: refused when the commit
                        // applies, after the good put above.
                        tx.put_object(
                            &shared,
                            Object::new("Route").with("id", Value::String(format!("r{id}"))),
                        )
                        .unwrap();
                    }
                    match tx.commit() {
                        Ok(_) => {
                            assert!(!bad, "a bad transaction committed");
                            ok += 1;
                        }
                        Err(StoreError::Value { .. }) if bad => {}
                        Err(e) => panic!("thread {t} commit {c}: {e}"),
                    }
                }
                ok
            })
        })
        .collect();
    let committed: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();

    let view = store.realm(&shared).unwrap().unwrap();
    assert_eq!(view.version(), committed);
    let mut ids: Vec<i64> = view.all::<Bus>().unwrap().iter().map(|b| b.id).collect();
    ids.sort();
    let mut expected: Vec<i64> = (0..THREADS)
        .flat_map(|t| (0..COMMITS).map(move |c| (t, c)))
        .filter(|(t, c)| !(t % 2 == 1 && c % 3 == 0))
        .map(|(t, c)| (t * 1000 + c) as i64)
        .collect();
    expected.sort();
    assert_eq!(ids, expected, "exactly the good transactions' objects");
    assert!(view.objects("Route").unwrap().is_empty());
    assert_eq!(store.commit_stats().transactions, committed);
}
