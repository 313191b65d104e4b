//! The replication side against a real PostgreSQL 15 (the shared test cluster): the decoder on
//! real WAL, transactions in order, resuming without re-delivery, keepalive confirmation of an
//! idle slot, password authentication, and the exported-snapshot initial copy under concurrent
//! writes.

use std::collections::BTreeSet;
use std::time::Duration;

use pgrealm_runtime::replication::{
    ensure_publication, ensure_slot, import_snapshot, slot_info, Change, ChangeStream, ColumnValue,
    LogicalMessage, Lsn, OldTuple, PgConnectOptions, PublicationAction, QualifiedTable,
    StreamEvent, StreamOptions, TransactionBegin, TransactionCommit,
};
use pgrealm_runtime::testing::{PasswordAuth, PgCluster, TestDb};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

/// One transaction as the stream delivered it.
#[derive(Debug)]
struct Tx {
    begin: TransactionBegin,
    changes: Vec<Change>,
    messages: Vec<LogicalMessage>,
    commit: TransactionCommit,
}

async fn next_tx(stream: &mut ChangeStream) -> Tx {
    let mut begin = None;
    let mut changes = Vec::new();
    let mut messages = Vec::new();
    loop {
        let event = timeout(WAIT, stream.next_event())
            .await
            .expect("no event within the time limit")
            .expect("stream failed")
            .expect("stream ended");
        match event {
            StreamEvent::Begin(b) => {
                assert!(begin.is_none(), "two Begins in a row");
                begin = Some(b);
            }
            StreamEvent::Change(change) => {
                assert!(begin.is_some(), "a change outside a transaction");
                changes.push(change);
            }
            StreamEvent::Message(message) => messages.push(message),
            StreamEvent::Commit(commit) => {
                let begin = begin.expect("Commit without Begin");
                assert_eq!(begin.final_lsn, commit.commit_lsn);
                return Tx {
                    begin,
                    changes,
                    messages,
                    commit,
                };
            }
        }
    }
}

struct Setup {
    db: TestDb,
    pg: PgConnectOptions,
    sql: tokio_postgres::Client,
}

/// A fresh database with `ddl` run, a publication over `tables` and a slot named `slot`.
async fn setup(ddl: &str, tables: &[&str]) -> Setup {
    let db = PgCluster::shared().fresh_database().unwrap();
    let pg = PgConnectOptions::from_url(&db.url).unwrap();
    let sql = pg.connect_sql().await.unwrap();
    sql.batch_execute(ddl).await.unwrap();
    let tables: Vec<_> = tables.iter().map(|t| QualifiedTable::public(*t)).collect();
    assert_eq!(
        ensure_publication(&sql, "pgrealm", &tables).await.unwrap(),
        PublicationAction::Created
    );
    assert!(ensure_slot(&sql, &slot_name(&db)).await.unwrap());
    Setup { db, pg, sql }
}

fn slot_name(db: &TestDb) -> String {
    // Slots are cluster-wide: name them after the test's database.
    format!("s_{}", db.name)
}

fn options(db: &TestDb) -> StreamOptions {
    StreamOptions::new(slot_name(db), "pgrealm")
}

fn text(value: &ColumnValue) -> &str {
    value.as_text().expect("a text value")
}

#[tokio::test]
async fn real_wal_decodes_every_change_kind() {
    let s = setup(
        "CREATE TABLE bus (id bigint PRIMARY KEY, name text, notes text);
         CREATE TABLE stop (id text PRIMARY KEY);",
        &["bus", "stop"],
    )
    .await;
    let big = "x".repeat(10_000);
    s.sql
        .batch_execute(&format!(
            "ALTER TABLE bus ALTER COLUMN notes SET STORAGE EXTERNAL;
             BEGIN;
             INSERT INTO bus VALUES (1, 'one', '{big}'), (2, NULL, 'short');
             INSERT INTO stop VALUES ('a');
             COMMIT;"
        ))
        .await
        .unwrap();
    // Each its own transaction (one simple query would run them as one).
    for statement in [
        "UPDATE bus SET name = 'uno' WHERE id = 1",
        "UPDATE bus SET id = 3 WHERE id = 2",
        "DELETE FROM bus WHERE id = 3",
        "TRUNCATE bus, stop",
    ] {
        s.sql.batch_execute(statement).await.unwrap();
    }
    let mut stream = ChangeStream::connect(&s.pg, &options(&s.db)).await.unwrap();

    let inserts = next_tx(&mut stream).await;
    assert_eq!(inserts.changes.len(), 3);
    let Change::Insert { relation, new } = &inserts.changes[0] else {
        panic!("{:?}", inserts.changes[0])
    };
    assert_eq!(
        (relation.namespace.as_str(), relation.name.as_str()),
        ("public", "bus")
    );
    let columns: Vec<_> = relation
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.is_key, c.type_oid))
        .collect();
    assert_eq!(
        columns,
        [("id", true, 20), ("name", false, 25), ("notes", false, 25)]
    );
    assert_eq!(text(&new[0]), "1");
    assert_eq!(text(&new[2]), big);
    let Change::Insert { new, .. } = &inserts.changes[1] else {
        panic!()
    };
    assert_eq!(new[1], ColumnValue::Null);
    let Change::Insert { relation, .. } = &inserts.changes[2] else {
        panic!()
    };
    assert_eq!(relation.name, "stop");
    assert!(inserts.begin.origin.is_none());

    let update = next_tx(&mut stream).await;
    assert!(update.commit.end_lsn > inserts.commit.end_lsn);
    let [Change::Update { old, new, .. }] = update.changes.as_slice() else {
        panic!("{:?}", update.changes)
    };
    assert_eq!(old, &None, "the key did not change");
    assert_eq!(text(&new[1]), "uno");
    assert_eq!(
        new[2],
        ColumnValue::UnchangedToast,
        "a TOASTed value not updated"
    );

    let key_change = next_tx(&mut stream).await;
    let [Change::Update {
        old: Some(OldTuple::Key(old)),
        new,
        ..
    }] = key_change.changes.as_slice()
    else {
        panic!("{:?}", key_change.changes)
    };
    assert_eq!(text(&old[0]), "2");
    assert_eq!(
        old[1],
        ColumnValue::Null,
        "only key columns are sent in the old key"
    );
    assert_eq!(text(&new[0]), "3");

    let delete = next_tx(&mut stream).await;
    let [Change::Delete {
        old: OldTuple::Key(old),
        ..
    }] = delete.changes.as_slice()
    else {
        panic!("{:?}", delete.changes)
    };
    assert_eq!(text(&old[0]), "3");

    let truncate = next_tx(&mut stream).await;
    let [Change::Truncate {
        relations,
        cascade,
        restart_identity,
    }] = truncate.changes.as_slice()
    else {
        panic!("{:?}", truncate.changes)
    };
    let mut names: Vec<_> = relations.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["bus", "stop"]);
    assert!(!cascade && !restart_identity);
    assert!(stream
        .relations()
        .relation_by_name("public", "stop")
        .is_some());
}

#[tokio::test]
async fn a_transaction_under_a_replication_origin_names_it() {
    let s = setup("CREATE TABLE t (id int PRIMARY KEY)", &["t"]).await;
    let origin = format!("o_{}", s.db.name);
    s.sql
        .batch_execute(&format!(
            "SELECT pg_replication_origin_create('{origin}');
             SELECT pg_replication_origin_session_setup('{origin}');
             BEGIN; INSERT INTO t VALUES (1); SELECT pg_logical_emit_message(true, 'pgrealm', 'marker'); COMMIT;
             SELECT pg_replication_origin_session_reset();
             INSERT INTO t VALUES (2);"
        ))
        .await
        .unwrap();
    let mut stream = ChangeStream::connect(&s.pg, &options(&s.db)).await.unwrap();
    let ours = next_tx(&mut stream).await;
    assert_eq!(
        ours.begin.origin.as_ref().map(|o| o.name.as_str()),
        Some(origin.as_str())
    );
    assert_eq!(ours.changes.len(), 1);
    let [message] = ours.messages.as_slice() else {
        panic!("{:?}", ours.messages)
    };
    assert!(message.transactional);
    assert_eq!(
        (message.prefix.as_str(), &message.content[..]),
        ("pgrealm", &b"marker"[..])
    );
    let theirs = next_tx(&mut stream).await;
    assert!(theirs.begin.origin.is_none());
}

#[tokio::test]
async fn transactions_arrive_in_order_and_resume_without_redelivery() {
    let s = setup("CREATE TABLE t (id int PRIMARY KEY)", &["t"]).await;
    for i in 1..=3 {
        s.sql
            .execute("INSERT INTO t VALUES ($1)", &[&i])
            .await
            .unwrap();
    }
    let mut stream = ChangeStream::connect(&s.pg, &options(&s.db)).await.unwrap();
    let mut ends = Vec::new();
    for i in 1..=3 {
        let tx = next_tx(&mut stream).await;
        let [Change::Insert { new, .. }] = tx.changes.as_slice() else {
            panic!()
        };
        assert_eq!(text(&new[0]), i.to_string());
        ends.push(tx.commit.end_lsn);
    }
    assert!(ends.windows(2).all(|w| w[0] < w[1]));
    // The consumer made only the first transaction durable on the server's side, but holds
    // two: the server re-sends from the first, and the stream skips the second by its LSN.
    stream.confirm(ends[0]);
    wait_for_confirmed(&s.sql, &slot_name(&s.db), ends[0]).await;
    stream.shutdown().await.unwrap();

    s.sql
        .execute("INSERT INTO t VALUES (4)", &[])
        .await
        .unwrap();
    let resumed = options(&s.db).resume_after(ends[1]);
    let mut stream = ChangeStream::connect(&s.pg, &resumed).await.unwrap();
    let tx = next_tx(&mut stream).await;
    let [Change::Insert { new, .. }] = tx.changes.as_slice() else {
        panic!()
    };
    assert_eq!(
        text(&new[0]),
        "3",
        "transaction 2 was re-delivered or 3 was lost"
    );
    let tx = next_tx(&mut stream).await;
    let [Change::Insert { new, .. }] = tx.changes.as_slice() else {
        panic!()
    };
    assert_eq!(text(&new[0]), "4");
}

async fn confirmed_flush(sql: &tokio_postgres::Client, slot: &str) -> Lsn {
    slot_info(sql, slot)
        .await
        .unwrap()
        .expect("the slot exists")
        .confirmed_flush_lsn
        .expect("a logical slot has a confirmed position")
}

/// Wait until the slot's confirmed_flush_lsn reaches `lsn`; returns how long it took.
async fn wait_for_confirmed(sql: &tokio_postgres::Client, slot: &str, lsn: Lsn) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let confirmed = confirmed_flush(sql, slot).await;
        if confirmed >= lsn {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WAIT,
            "confirmed_flush_lsn stayed at {confirmed}, wanted {lsn}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_confirmed_commit_reaches_the_slot_quickly_and_an_idle_slot_follows_the_wal() {
    let s = setup(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE unpublished (id int)",
        &["t"],
    )
    .await;
    let slot = slot_name(&s.db);
    let mut stream = ChangeStream::connect(&s.pg, &options(&s.db)).await.unwrap();
    let events = tokio::spawn(async move {
        let tx = next_tx(&mut stream).await;
        stream.confirm(tx.commit.end_lsn);
        // Keep reading so keepalives are seen and confirmed.
        while let Ok(Ok(Some(_))) = timeout(WAIT, stream.next_event()).await {}
        tx.commit.end_lsn
    });
    s.sql
        .execute("INSERT INTO t VALUES (1)", &[])
        .await
        .unwrap();
    let after_commit: String = s
        .sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let took = wait_for_confirmed(&s.sql, &slot, Lsn::parse(&after_commit).unwrap()).await;
    assert!(took < Duration::from_secs(2), "confirming took {took:?}");

    // WAL the publication does not cover: nothing is delivered, yet the slot must not hold it.
    for i in 0..5 {
        s.sql
            .execute("INSERT INTO unpublished VALUES ($1)", &[&i])
            .await
            .unwrap();
    }
    let wal: String = s
        .sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    wait_for_confirmed(&s.sql, &slot, Lsn::parse(&wal).unwrap()).await;
    events.abort();
}

#[tokio::test]
async fn unconfirmed_transactions_hold_the_slot_even_when_keepalives_pass() {
    let s = setup(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE unpublished (id int)",
        &["t"],
    )
    .await;
    let slot = slot_name(&s.db);
    let before = confirmed_flush(&s.sql, &slot).await;
    let mut stream = ChangeStream::connect(&s.pg, &options(&s.db)).await.unwrap();
    s.sql
        .execute("INSERT INTO t VALUES (1)", &[])
        .await
        .unwrap();
    let tx = next_tx(&mut stream).await;
    // Not confirmed: later WAL and its keepalives must not move the slot past the transaction.
    s.sql
        .execute("INSERT INTO unpublished VALUES (1)", &[])
        .await
        .unwrap();
    let _ = timeout(Duration::from_millis(500), stream.next_event()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held = confirmed_flush(&s.sql, &slot).await;
    assert!(
        held < tx.commit.end_lsn,
        "slot moved to {held} past an unconfirmed commit"
    );
    assert!(held >= before);
    stream.confirm(tx.commit.end_lsn);
    wait_for_confirmed(&s.sql, &slot, tx.commit.end_lsn).await;
}

#[tokio::test]
async fn password_roles_stream_over_scram_and_md5() {
    let s = setup("CREATE TABLE t (id int PRIMARY KEY)", &["t"]).await;
    let cluster = PgCluster::shared();
    s.sql
        .execute("INSERT INTO t VALUES (1)", &[])
        .await
        .unwrap();
    for (auth, suffix) in [(PasswordAuth::Scram, "scram"), (PasswordAuth::Md5, "md5")] {
        let role = format!("r_{}_{suffix}", s.db.name);
        cluster
            .create_login_role(&role, "s3cret pw", auth, true)
            .unwrap();
        s.sql
            .batch_execute(&format!("GRANT SELECT ON t TO \"{role}\""))
            .await
            .unwrap();
        let pg =
            PgConnectOptions::from_url(&cluster.url_as(&role, "s3cret pw", &s.db.name)).unwrap();
        let sql = pg.connect_sql().await.unwrap();
        assert_eq!(
            sql.query_one("SELECT 1", &[])
                .await
                .unwrap()
                .get::<_, i32>(0),
            1
        );
        let mut stream = ChangeStream::connect(&pg, &options(&s.db)).await.unwrap();
        let tx = next_tx(&mut stream).await;
        assert_eq!(tx.changes.len(), 1, "{suffix}");
        stream.shutdown().await.unwrap();

        let wrong =
            PgConnectOptions::from_url(&cluster.url_as(&role, "wrong", &s.db.name)).unwrap();
        let err = ChangeStream::connect(&wrong, &options(&s.db))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("replication connection"), "{err}");
    }
}

#[tokio::test]
async fn a_large_transaction_streams_through_a_small_buffer() {
    let s = setup("CREATE TABLE t (id int PRIMARY KEY, v text)", &["t"]).await;
    s.sql
        .batch_execute("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 50000) g")
        .await
        .unwrap();
    let mut opts = options(&s.db);
    opts.buffer_events = 16;
    let mut stream = ChangeStream::connect(&s.pg, &opts).await.unwrap();
    let mut count = 0u64;
    let mut expected = 1u64;
    loop {
        match timeout(WAIT, stream.next_event())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            StreamEvent::Begin(_) | StreamEvent::Message(_) => {}
            StreamEvent::Change(Change::Insert { new, .. }) => {
                assert_eq!(text(&new[0]).parse::<u64>().unwrap(), expected);
                expected += 1;
                count += 1;
            }
            StreamEvent::Change(other) => panic!("{other:?}"),
            StreamEvent::Commit(_) => break,
        }
    }
    assert_eq!(count, 50_000);
}

#[tokio::test]
async fn the_exported_snapshot_and_the_stream_meet_exactly_under_concurrent_writes() {
    let db = PgCluster::shared().fresh_database().unwrap();
    let pg = PgConnectOptions::from_url(&db.url).unwrap();
    let sql = pg.connect_sql().await.unwrap();
    sql.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY);
         INSERT INTO t SELECT generate_series(1, 1000);",
    )
    .await
    .unwrap();
    ensure_publication(&sql, "pgrealm", &[QualifiedTable::public("t")])
        .await
        .unwrap();

    // A writer commits single rows (and some deletes) the whole time.
    let writer_pg = pg.clone();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        let sql = writer_pg.connect_sql().await.unwrap();
        let mut next = 1001;
        loop {
            sql.execute("INSERT INTO t VALUES ($1)", &[&next])
                .await
                .unwrap();
            if next % 7 == 0 {
                sql.execute("DELETE FROM t WHERE id = $1", &[&(next - 500)])
                    .await
                    .unwrap();
            }
            next += 1;
            if stop_rx.try_recv().is_ok() || next > 20_000 {
                return next - 1;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let slot = pgrealm_runtime::replication::SnapshotSlot::create(&pg, &options(&db))
        .await
        .unwrap();
    // Copy inside the snapshot, slowly, while the writer goes on.
    let copier = pg.connect_sql().await.unwrap();
    import_snapshot(&copier, slot.snapshot_name())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ids: BTreeSet<i32> = copier
        .query("SELECT id FROM t", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    copier.batch_execute("COMMIT").await.unwrap();
    let mut stream = slot.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop_tx.send(());
    let last = writer.await.unwrap();
    // A sentinel after the writer's last commit: once the stream brings it, it brought all.
    sql.execute("INSERT INTO t VALUES (-1)", &[]).await.unwrap();
    let final_ids: BTreeSet<i32> = sql
        .query("SELECT id FROM t", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();

    // Apply the stream onto the copy until it holds the writer's last row.
    while !ids.contains(&-1) {
        let tx = next_tx(&mut stream).await;
        for change in tx.changes {
            match change {
                Change::Insert { new, .. } => {
                    let id: i32 = text(&new[0]).parse().unwrap();
                    assert!(ids.insert(id), "row {id} came from the copy and the stream");
                }
                Change::Delete { old, .. } => {
                    let id: i32 = text(&old.values()[0]).parse().unwrap();
                    assert!(ids.remove(&id), "row {id} deleted but never seen");
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(ids, final_ids, "copy + stream differ from the table");
    assert!(last > 1001, "the writer wrote nothing during the test");
}

#[tokio::test]
async fn a_server_restart_is_a_transient_error_and_the_stream_resumes_after_it() {
    // Own cluster: restarting the shared one would pull it from under the other tests.
    let cluster = std::sync::Arc::new(PgCluster::start().unwrap());
    let pg = PgConnectOptions::from_url(&cluster.superuser_url()).unwrap();
    let sql = pg.connect_sql().await.unwrap();
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    ensure_publication(&sql, "pgrealm", &[QualifiedTable::public("t")])
        .await
        .unwrap();
    ensure_slot(&sql, "restart").await.unwrap();
    sql.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    let options = StreamOptions::new("restart", "pgrealm");
    let mut stream = ChangeStream::connect(&pg, &options).await.unwrap();
    let first = next_tx(&mut stream).await;
    stream.confirm(first.commit.end_lsn);

    // PostgreSQL's shutdown waits until the client confirms the walsender's last position,
    // which the stream does from the keepalive while it is read: restart on another thread.
    let restarting = tokio::task::spawn_blocking({
        let cluster = cluster.clone();
        move || cluster.restart()
    });
    let err = match timeout(WAIT, stream.next_event()).await.unwrap() {
        Err(err) => err,
        Ok(Some(event)) => panic!("unexpected {event:?}"),
        Ok(None) => panic!("the stream ended cleanly on a server restart"),
    };
    assert!(err.is_transient(), "{err}");
    restarting.await.unwrap().unwrap();

    let sql = pg.connect_sql().await.unwrap();
    sql.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    let resumed = options.resume_after(first.commit.end_lsn);
    let mut stream = ChangeStream::connect(&pg, &resumed).await.unwrap();
    let tx = next_tx(&mut stream).await;
    let [Change::Insert { new, .. }] = tx.changes.as_slice() else {
        panic!("{:?}", tx.changes)
    };
    assert_eq!(text(&new[0]), "2");
}
