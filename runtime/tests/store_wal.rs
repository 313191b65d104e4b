//! The store's write-ahead log (`realms.wal`): small commits are durable in the log before redb
//! holds them durably, so a copy of the data directory taken while the store is open (what a
//! crash leaves) must open with every acknowledged commit; a log that belongs to another store
//! file is never replayed into it. The SIGKILL tests (`store_crash.rs`) cover the same through
//! real crashes.

mod store_support;

use pgrealm_runtime::{RealmPath, Store, StoreOptions, STORE_FILE, WAL_FILE};
use store_support::{bus, schema, Bus};

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, schema(), StoreOptions::default()).unwrap()
}

/// Copy the store file and its log, as they are on disk now, into a new directory.
fn crash_image(from: &std::path::Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for name in [STORE_FILE, WAL_FILE] {
        std::fs::copy(from.join(name), to.path().join(name)).unwrap();
    }
    to
}

/// Copy the store file alone (no log), as it is on disk now, into a new directory.
fn store_file_alone(from: &std::path::Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    std::fs::copy(from.join(STORE_FILE), to.path().join(STORE_FILE)).unwrap();
    to
}

#[test]
fn an_image_taken_while_open_replays_every_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let realm = RealmPath::parse("/transit").unwrap();
    // Small commits go through the log; none has reached redb durably yet.
    for i in 0..50 {
        let mut tx = store.begin_write("app");
        tx.realm(&realm).put(&bus(i % 7, &format!("v{i}"))).unwrap();
        tx.set_metadata("lsn", i.to_string().into_bytes());
        tx.commit().unwrap();
    }
    let image = crash_image(dir.path());
    let wal_len = std::fs::metadata(image.path().join(WAL_FILE))
        .unwrap()
        .len();
    assert!(wal_len > 0, "the log exists beside the store file");

    let reopened = open(image.path());
    let view = reopened.realm(&realm).unwrap().expect("the realm survived");
    assert_eq!(view.version(), 50, "every acknowledged commit is there");
    for id in 0..7 {
        let last = (0..50).filter(|i| i % 7 == id).max().unwrap();
        assert_eq!(
            view.get::<Bus>(id).unwrap(),
            Some(bus(id, &format!("v{last}")))
        );
    }
    assert_eq!(reopened.metadata("lsn").unwrap(), Some(b"49".to_vec()));
    assert_eq!(reopened.changes(&realm, 0, 100).unwrap().len(), 50);

    // The replay was made durable: another image of the reopened store, taken before any new
    // commit, holds the same.
    let again = crash_image(image.path());
    drop(reopened);
    let twice = open(again.path());
    assert_eq!(twice.realm(&realm).unwrap().unwrap().version(), 50);

    // Commits after a replay keep numbering from where it ended, and a clean close leaves
    // nothing to replay: the store file alone holds everything.
    let mut tx = twice.begin_write("app");
    tx.realm(&realm).put(&bus(100, "after")).unwrap();
    assert_eq!(tx.commit().unwrap().version_of(&realm), Some(51));
    drop(twice);
    let alone = store_file_alone(again.path());
    let reopened = open(alone.path());
    let view = reopened.realm(&realm).unwrap().unwrap();
    assert_eq!(view.version(), 51);
    assert_eq!(view.get::<Bus>(100).unwrap(), Some(bus(100, "after")));
    drop(store);
}

#[test]
fn a_log_left_beside_another_store_file_is_never_replayed_into_it() {
    let first = tempfile::tempdir().unwrap();
    let store = open(first.path());
    let realm = RealmPath::parse("/transit").unwrap();
    for i in 0..5 {
        let mut tx = store.begin_write("app");
        tx.realm(&realm)
            .put(&bus(i, "from the first store"))
            .unwrap();
        tx.commit().unwrap();
    }
    let image = crash_image(first.path());

    // A second store (as after `reset --realms` had deleted only the store file), then the
    // first store's log put beside it.
    let second = tempfile::tempdir().unwrap();
    {
        let other = open(second.path());
        let mut tx = other.begin_write("app");
        tx.realm(&RealmPath::parse("/other").unwrap())
            .put(&bus(1, "second"))
            .unwrap();
        tx.commit().unwrap();
    }
    std::fs::copy(image.path().join(WAL_FILE), second.path().join(WAL_FILE)).unwrap();
    let other = open(second.path());
    assert!(
        other.realm(&realm).unwrap().is_none(),
        "nothing of the first store's log reached the second store"
    );
    assert_eq!(
        other
            .realm(&RealmPath::parse("/other").unwrap())
            .unwrap()
            .unwrap()
            .get::<Bus>(1)
            .unwrap(),
        Some(bus(1, "second"))
    );
    drop(store);
}

/// A streamed transaction with `log_ahead` (the initial load's): `batches` batches of 1,000
/// buses into `/load`, then metadata, not yet committed.
fn logged_stream(store: &Store, batches: i64) -> pgrealm_runtime::StreamingTx {
    let realm = RealmPath::parse("/load").unwrap();
    let mut streaming = store.begin_streaming("load").unwrap().log_ahead();
    let mut batch = store.begin_write("load");
    for b in 0..batches {
        for id in b * 1_000..(b + 1) * 1_000 {
            batch
                .realm(&realm)
                .put(&bus(id, &format!("loaded bus number {id}")))
                .unwrap();
        }
        streaming = streaming.apply(&mut batch).unwrap();
    }
    batch.set_metadata("lsn", b"load".to_vec());
    streaming.apply(&mut batch).unwrap()
}

/// A logged streamed transaction is durable through the log alone when its commit returns
/// (the store file does not hold it yet), and a crash image replays all of it: every batch,
/// its changeset parts, its metadata.
#[test]
fn a_logged_stream_is_durable_in_the_log_and_replays_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let realm = RealmPath::parse("/load").unwrap();
    let info = logged_stream(&store, 5).commit().unwrap();
    assert_eq!(info.version_of(&realm), Some(1));
    let image = crash_image(dir.path());

    // The store file alone lacks it: the commit waited for the log, not for redb's pages.
    let alone = store_file_alone(image.path());
    assert!(open(alone.path()).realm(&realm).unwrap().is_none());

    let reopened = open(image.path());
    let view = reopened
        .realm(&realm)
        .unwrap()
        .expect("replayed from the log");
    assert_eq!(view.version(), 1);
    for id in [0, 2_345, 4_999] {
        assert_eq!(
            view.get::<Bus>(id).unwrap(),
            Some(bus(id, &format!("loaded bus number {id}")))
        );
    }
    assert_eq!(view.get::<Bus>(5_000).unwrap(), None);
    assert_eq!(reopened.metadata("lsn").unwrap(), Some(b"load".to_vec()));
    // The changeset, parts first: the class added, then every create.
    let changes = reopened.changes(&realm, 0, 10).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].instructions.len(), 1 + 5_000);

    // A checkpoint writes redb's pages: then the store file alone holds it.
    store.checkpoint().unwrap();
    let checkpointed = store_file_alone(dir.path());
    let view = open(checkpointed.path()).realm(&realm).unwrap().unwrap();
    assert_eq!(view.get::<Bus>(4_999).unwrap().unwrap().id, 4_999);
    drop(store);
}

/// A crash before a logged stream's commit leaves nothing of it, and a stream abandoned before
/// its commit is dropped from the log by the commits after it, which replay.
#[test]
fn a_logged_stream_cut_or_abandoned_before_its_commit_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let load = RealmPath::parse("/load").unwrap();
    let transit = RealmPath::parse("/transit").unwrap();
    let small = |name: &str| {
        let mut tx = store.begin_write("app");
        tx.realm(&transit).put(&bus(1, name)).unwrap();
        tx.commit().unwrap();
    };
    small("before");

    // Cut: an image taken while the stream is open, its batches in the log.
    let streaming = logged_stream(&store, 3);
    let cut = crash_image(dir.path());
    let wal_len = std::fs::metadata(cut.path().join(WAL_FILE)).unwrap().len();
    assert!(
        wal_len > 200_000,
        "the batches are in the log: {wal_len} bytes"
    );
    {
        let reopened = open(cut.path());
        assert!(reopened.realm(&load).unwrap().is_none());
        let view = reopened.realm(&transit).unwrap().unwrap();
        assert_eq!(view.get::<Bus>(1).unwrap(), Some(bus(1, "before")));
        assert_eq!(reopened.metadata("lsn").unwrap(), None);
    }

    // Abandoned: dropped, then more small commits.
    drop(streaming);
    small("after");
    small("after again");
    let image = crash_image(dir.path());
    let reopened = open(image.path());
    assert!(reopened.realm(&load).unwrap().is_none());
    let view = reopened.realm(&transit).unwrap().unwrap();
    assert_eq!(view.version(), 3);
    assert_eq!(view.get::<Bus>(1).unwrap(), Some(bus(1, "after again")));

    // Another logged stream after the abandoned one commits and replays.
    drop(reopened);
    let info = logged_stream(&store, 2).commit().unwrap();
    assert_eq!(info.version_of(&load), Some(1));
    let image = crash_image(dir.path());
    let reopened = open(image.path());
    let view = reopened.realm(&load).unwrap().unwrap();
    assert_eq!(view.get::<Bus>(1_999).unwrap().unwrap().id, 1_999);
    assert_eq!(
        reopened
            .realm(&transit)
            .unwrap()
            .unwrap()
            .get::<Bus>(1)
            .unwrap(),
        Some(bus(1, "after again"))
    );
    drop(store);
}

/// A checkpoint asked for while a logged stream is open waits for the stream's commit (it takes
/// the locks in the order every writer does), and then writes it into the store file.
#[test]
fn a_checkpoint_asked_during_a_logged_stream_waits_for_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let realm = RealmPath::parse("/load").unwrap();
    // A small commit first: the log holds a record, so the checkpoint has work to do.
    let mut tx = store.begin_write("app");
    tx.realm(&RealmPath::parse("/transit").unwrap())
        .put(&bus(1, "small"))
        .unwrap();
    tx.commit().unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let mut streaming = store.begin_streaming("load").unwrap().log_ahead();
    let checkpoint = {
        let store = store.clone();
        let done = done.clone();
        std::thread::spawn(move || done.send(("checkpoint", store.checkpoint().is_ok())))
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    // The stream's batches go into the log while the checkpoint waits.
    let stream = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut batch = store.begin_write("load");
            for id in 0..2_000 {
                batch.realm(&realm).put(&bus(id, "loaded")).unwrap();
                if id % 1_000 == 999 {
                    streaming = streaming.apply(&mut batch).unwrap();
                }
            }
            done.send(("stream", streaming.commit().is_ok()))
        })
    };
    let wait = std::time::Duration::from_secs(30);
    let mut seen = vec![
        finished.recv_timeout(wait).expect("no deadlock"),
        finished.recv_timeout(wait).expect("no deadlock"),
    ];
    seen.sort();
    assert_eq!(seen, [("checkpoint", true), ("stream", true)]);
    checkpoint.join().unwrap().unwrap();
    stream.join().unwrap().unwrap();
    // The checkpoint ran after the stream's commit: the store file alone holds it.
    let alone = store_file_alone(dir.path());
    let view = open(alone.path())
        .realm(&RealmPath::parse("/load").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(view.get::<Bus>(1_999).unwrap(), Some(bus(1_999, "loaded")));
    drop(store);
}

/// Opening a store starts its log afresh: nothing of the old log stays in the file. A crash can
/// leave a logged stream's later parts (numbered past the stamp) on disk behind a part that never
/// reached it; kept, a new record of the same length in that part's place would chain them on.
#[test]
fn a_reopened_log_keeps_nothing_of_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    logged_stream(&store, 3).commit().unwrap();
    let image = crash_image(dir.path());
    drop(store);
    // The stream's first part never reached the disk; the parts after it and its closing
    // record did.
    let wal = image.path().join(WAL_FILE);
    let mut bytes = std::fs::read(&wal).unwrap();
    const FIRST_RECORD: usize = 64;
    assert!(
        bytes[FIRST_RECORD..FIRST_RECORD + 24]
            .iter()
            .any(|b| *b != 0),
        "a record starts right after the log's header"
    );
    bytes[FIRST_RECORD..FIRST_RECORD + 24].fill(0);
    std::fs::write(&wal, &bytes).unwrap();

    let reopened = open(image.path());
    let load = RealmPath::parse("/load").unwrap();
    assert!(
        reopened.realm(&load).unwrap().is_none(),
        "never closed whole"
    );
    let after = std::fs::read(&wal).unwrap();
    assert!(
        after[FIRST_RECORD..].iter().all(|b| *b == 0),
        "the old records are gone from the log ({} bytes)",
        after.len()
    );
    drop(reopened);
}

/// `log_ahead` asked for after a batch was applied leaves the transaction unlogged: that batch
/// was never recorded, so the commit is durable in the store file itself.
#[test]
fn log_ahead_after_a_batch_leaves_the_stream_durable_in_the_store_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let realm = RealmPath::parse("/load").unwrap();
    let mut batch = store.begin_write("load");
    batch.realm(&realm).put(&bus(1, "first batch")).unwrap();
    let streaming = store
        .begin_streaming("load")
        .unwrap()
        .apply(&mut batch)
        .unwrap()
        .log_ahead();
    batch.realm(&realm).put(&bus(2, "second batch")).unwrap();
    streaming.apply(&mut batch).unwrap().commit().unwrap();
    let alone = store_file_alone(dir.path());
    let view = open(alone.path()).realm(&realm).unwrap().expect("durable");
    assert_eq!(view.get::<Bus>(1).unwrap(), Some(bus(1, "first batch")));
    assert_eq!(view.get::<Bus>(2).unwrap(), Some(bus(2, "second batch")));
    drop(store);
}
