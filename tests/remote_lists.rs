//! Remote mode with list subtables: a PostgreSQL transaction touching the lists of many owners
//! reads their stored entries (`metadata_many`) and their owners' locations (`locate_many`) in
//! batches, not one admin read per owner, and the realms' lists end as PostgreSQL's — in `idx`
//! order, across entries moving between owners, owners moving between realms, a TRUNCATE of the
//! subtable and a streamed transaction. And the server's `metadata_many` read itself.

mod remote_support;

use std::sync::atomic::{AtomicU64, Ordering};

use pgrealm_runtime::testing::PgCluster;
use remote_support::lists::{apply, assert_lists_match_postgresql};
use remote_support::{run_engine, setup_engine, wait_for, RemoteServer};

/// Routes with lists, and entries each.
const OWNERS: i64 = 2_000;
const ENTRIES: i64 = 3;
/// Small, so that the setup and the last transaction stream in several batches.
const STREAM_AFTER: usize = 1_000;
/// The admin reads a transaction touching the lists of every owner may take: a few per
/// thousand changes (one `locate_many` and one `metadata_many` each time the engine reads
/// ahead), not one or two per owner.
const FEW_READS: u64 = 40;

fn counter(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Every transaction below touches the lists of hundreds to thousands of owners; each is
/// applied in a bounded number of admin reads (the number before batched list reads was one
/// or two per owner: ~4,000 for the first), and afterwards every route's list in every realm is
/// PostgreSQL's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lists_of_many_owners_are_read_in_batches_and_end_as_postgresql_holds_them() {
    let db = PgCluster::shared().fresh_database().unwrap();
    PgCluster::shared()
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    for table in ["route", "schedule", "bus", "driver"] {
        PgCluster::shared()
            .batch_execute(
                &db.name,
                &format!("ALTER TABLE {table} ADD COLUMN user_id text NOT NULL DEFAULT 'u0'"),
            )
            .unwrap();
    }
    let server = RemoteServer::start();
    let remote = server.connect().await;
    let engine = run_engine(setup_engine(&db, &remote, "/{user_id}/myRealm", STREAM_AFTER).await);
    let reads = || counter(&server.metrics.admin_reads);

    // The owners in four realms and the schedules their lists link to (it streams).
    apply(
        &db,
        &server,
        "m0",
        &format!(
            "INSERT INTO route (id, name, user_id) \
               SELECT 'r' || i, 'route ' || i, 'u' || (i % 4) FROM generate_series(0, {last}) i;
             INSERT INTO schedule (id, day, departure, user_id) \
               SELECT 's' || j, 'Mon', timestamptz '2026-01-05 06:00Z' + j * interval '1 minute', \
                      'u' || (j % 4) \
               FROM generate_series(0, {last_schedule}) j",
            last = OWNERS - 1,
            last_schedule = OWNERS * ENTRIES - 1
        ),
    )
    .await;
    assert_lists_match_postgresql(&db, &server, "the setup").await;

    // Three entries for every owner, in one transaction: arriving highest idx first and
    // interleaved across owners, each list ends in idx order.
    let before = reads();
    apply(
        &db,
        &server,
        "m1",
        &format!(
            "INSERT INTO route_schedules (oid, idx, target) \
               SELECT 'r' || o, k, 's' || (o * {ENTRIES} + {ENTRIES} - 1 - k) \
               FROM generate_series(0, {last}) o, generate_series(0, {last_k}) k \
               ORDER BY k DESC, o",
            last = OWNERS - 1,
            last_k = ENTRIES - 1
        ),
    )
    .await;
    let taken = reads() - before;
    println!(
        "{taken} admin reads for {} entries of {OWNERS} owners",
        OWNERS * ENTRIES
    );
    assert!(
        taken <= FEW_READS,
        "{taken} admin reads for the entries of {OWNERS} owners"
    );
    assert_lists_match_postgresql(&db, &server, "inserting the entries").await;

    // Edits of many lists at once: entries shifted up through negative idx values with one
    // inserted at the front, middle entries deleted, targets changed, and entries moving to
    // another owner (their key changes).
    let before = reads();
    apply(
        &db,
        &server,
        "m2",
        "UPDATE route_schedules SET idx = -idx - 1 \
           WHERE substr(oid, 2)::int BETWEEN 0 AND 499;
         UPDATE route_schedules SET idx = -idx WHERE idx < 0;
         INSERT INTO route_schedules (oid, idx, target) \
           SELECT 'r' || i, 0, 's' || (i + 7) FROM generate_series(0, 499) i;
         DELETE FROM route_schedules WHERE idx = 1 AND substr(oid, 2)::int BETWEEN 500 AND 999;
         UPDATE route_schedules SET target = 's0' \
           WHERE idx = 2 AND substr(oid, 2)::int BETWEEN 1000 AND 1499;
         UPDATE route_schedules SET oid = 'r' || (substr(oid, 2)::int + 100), idx = 10 + idx \
           WHERE idx = 0 AND substr(oid, 2)::int BETWEEN 1500 AND 1599",
    )
    .await;
    let taken = reads() - before;
    println!("{taken} admin reads for edits of the lists of 1,600 owners");
    assert!(taken <= FEW_READS, "{taken} admin reads for the edits");
    assert_lists_match_postgresql(&db, &server, "editing the lists").await;

    // Owners move to another realm, and get entries after moving: their lists go with them.
    apply(
        &db,
        &server,
        "m3",
        "UPDATE route SET user_id = 'u' || ((substr(id, 2)::int + 1) % 4) \
           WHERE id LIKE 'r%' AND substr(id, 2)::int BETWEEN 0 AND 199;
         INSERT INTO route_schedules (oid, idx, target) \
           SELECT 'r' || i, 20, 's5' FROM generate_series(0, 199) i",
    )
    .await;
    assert_lists_match_postgresql(&db, &server, "moving owners").await;

    // A TRUNCATE of the subtable (a new generation: every list is empty) and new entries for
    // half of the owners after it, in the same transaction.
    let before = reads();
    apply(
        &db,
        &server,
        "m4",
        "TRUNCATE route_schedules;
         INSERT INTO route_schedules (oid, idx, target) \
           SELECT 'r' || o, 1 - k, 's' || (o + k) \
           FROM generate_series(0, 999) o, generate_series(0, 1) k",
    )
    .await;
    let taken = reads() - before;
    println!("{taken} admin reads for a TRUNCATE of the lists of {OWNERS} owners and 1,000 new");
    assert!(taken <= FEW_READS, "{taken} admin reads for the TRUNCATE");
    assert_lists_match_postgresql(&db, &server, "the TRUNCATE").await;

    // A transaction large enough to stream, each owner's new schedules and entries interleaved:
    // the lists are written with each batch and read ahead again after it.
    let before = reads();
    apply(
        &db,
        &server,
        "m5",
        &format!(
            "DO $$ BEGIN FOR o IN 0..{last} LOOP
               FOR k IN 0..{last_k} LOOP
                 INSERT INTO schedule (id, day, departure, user_id) \
                   VALUES ('n' || o || '_' || k, 'Tue', timestamptz '2026-01-06 06:00Z', 'u1');
                 INSERT INTO route_schedules (oid, idx, target) \
                   VALUES ('r' || o, 30 - k, 'n' || o || '_' || k);
               END LOOP;
             END LOOP; END $$",
            last = OWNERS - 1,
            last_k = ENTRIES - 1
        ),
    )
    .await;
    let taken = reads() - before;
    println!(
        "{taken} admin reads for a streamed transaction of {} schedules and entries",
        OWNERS * ENTRIES
    );
    assert!(
        taken <= OWNERS as u64 / 20,
        "{taken} admin reads for the streamed transaction"
    );
    // The server counts a stream once its thread ends, a moment after the commit the marker
    // showed.
    let streams = server.metrics.clone();
    wait_for("the setup and the last transaction streamed", move || {
        (counter(&streams.admin_streams_committed) >= 2).then_some(())
    })
    .await;
    assert_lists_match_postgresql(&db, &server, "the streamed transaction").await;

    assert_eq!(counter(&engine.stats.rejections), 0, "every change applies");
    engine.stop().await;
}

/// `metadata_many` answers each key's value in order (null for none) in one read, in a stream
/// as of its own batches too; more keys than one request takes go in several; too many keys in
/// one request are refused, saying what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_many_answers_each_key_in_order_in_one_read_and_bounds_its_keys() {
    let server = RemoteServer::start();
    let admin = server.keys.admin_token().to_owned();
    let mut tx = server.store.begin_write("app");
    tx.set_metadata("a", b"1".to_vec());
    tx.set_metadata("b", vec![0, 255]);
    tx.set_metadata("k/5", b"five".to_vec());
    tokio::task::spawn_blocking(move || tx.commit())
        .await
        .unwrap()
        .unwrap();
    let reads = || counter(&server.metrics.admin_reads);
    let remote = server.connect().await;

    let keys = ["a", "missing", "b", "a"];
    let expected = vec![
        Some(b"1".to_vec()),
        None,
        Some(vec![0, 255]),
        Some(b"1".to_vec()),
    ];
    let before = reads();
    let (r, local) = (remote.clone(), server.store.clone());
    let (found, found_locally, empty) = tokio::task::spawn_blocking(move || {
        let found = r.snapshot().unwrap().metadata_many(&keys).unwrap();
        let found_locally = local.snapshot().unwrap().metadata_many(&keys).unwrap();
        let empty = r.snapshot().unwrap().metadata_many::<&str>(&[]).unwrap();
        (found, found_locally, empty)
    })
    .await
    .unwrap();
    assert_eq!(found, expected, "present, absent, not UTF-8, repeated");
    assert_eq!(
        found_locally, expected,
        "the embedded store answers the same"
    );
    assert!(empty.is_empty());
    assert_eq!(reads() - before, 1, "one request, none for no keys");

    // More keys than one request takes: several requests, answers in order.
    let many: Vec<String> = (0..25_000).map(|i| format!("k/{i}")).collect();
    let before = reads();
    let r = remote.clone();
    let found =
        tokio::task::spawn_blocking(move || r.snapshot().unwrap().metadata_many(&many).unwrap())
            .await
            .unwrap();
    assert_eq!(
        reads() - before,
        3,
        "25,000 keys in 3 requests of at most 10,000"
    );
    assert_eq!(found.len(), 25_000);
    assert_eq!(found[5], Some(b"five".to_vec()));
    assert!(found[4].is_none() && found[24_999].is_none());

    // A stream answers as of its own batches.
    let r = remote.clone();
    let (in_stream, before_commit) = tokio::task::spawn_blocking(move || {
        let mut batch = r.begin_write("postgres");
        batch.set_metadata("c", b"streamed".to_vec());
        let stream = r
            .begin_streaming("postgres")
            .unwrap()
            .apply(&mut batch)
            .unwrap();
        let found = stream.metadata_many(&["c", "a", "zz"]).unwrap();
        drop(stream);
        let outside = r.snapshot().unwrap().metadata_many(&["c"]).unwrap();
        (found, outside)
    })
    .await
    .unwrap();
    assert_eq!(
        in_stream,
        vec![Some(b"streamed".to_vec()), Some(b"1".to_vec()), None]
    );
    assert_eq!(before_commit, vec![None], "an aborted stream left nothing");

    // Raw requests: the answer's form, too many keys, keys that are not strings.
    let read = |body: String| {
        let server = &server;
        let admin = admin.clone();
        async move {
            server
                .raw("POST", "/v1/admin/read", Some(&admin), "", &body)
                .await
        }
    };
    let (status, text) = read(r#"{"metadata_many":{"keys":["a","missing"]}}"#.into()).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with(r#"{"values":["MQ==",null]}"#), "{text}");
    let too_many = (0..10_001)
        .map(|i| format!("\"k/{i}\""))
        .collect::<Vec<_>>()
        .join(",");
    let (status, text) = read(format!(r#"{{"metadata_many":{{"keys":[{too_many}]}}}}"#)).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("at most 10000 keys") && text.contains("10001") && text.contains("several"),
        "{text}"
    );
    let (status, text) = read(r#"{"metadata_many":{"keys":[1]}}"#.into()).await;
    assert_eq!(status, 400, "{text}");
    // The same in a stream's reads, which stays open after a refused read.
    let id = server.open_stream().await;
    let target = format!("/v1/admin/streams/{id}/read");
    let body = format!(r#"{{"metadata_many":{{"keys":[{too_many}]}}}}"#);
    let (status, text) = server.raw("POST", &target, Some(&admin), "", &body).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("at most 10000 keys"), "{text}");
    let body = r#"{"metadata_many":{"keys":["b","missing"]}}"#;
    let (status, text) = server.raw("POST", &target, Some(&admin), "", body).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with(r#"{"values":["AP8=",null]}"#), "{text}");
    let (status, text) = server.abort_stream(&id).await;
    assert_eq!(status, 200, "{text}");
}
