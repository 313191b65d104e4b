//! PostgreSQL → realm against a real PostgreSQL 15: every mapping rule, exactly-once resume,
//! confirmed positions, and every kind of rejected change (issue 4, items 5–7).

mod pg2realm_support;

use std::time::Duration;

use pg2realm_support::*;
use pgrealm_runtime::replication::{ensure_publication, ensure_slot, QualifiedTable};
use pgrealm_runtime::sync::pg_to_realm::{checkpoint_key, stored_checkpoint};
use pgrealm_runtime::sync::rejections::{self, Direction};
use pgrealm_runtime::Instruction;
use pgrealm_schema::{PrimaryKey, Value};

#[tokio::test]
async fn rows_route_move_link_and_keep_unchanged_toast_values() {
    let mut f = Fixture::new().await;
    let running = f.start(f.options()).await;
    let big = "n".repeat(20_000);
    f.exec(&format!(
        "BEGIN;
         INSERT INTO route (id, name, user_id) VALUES ('r1', 'Ring', 'alice');
         INSERT INTO bus (id, name, seats, notes, route_id, mood, user_id)
             VALUES (1, 'one', 40, '{big}', 'r1', 'happy', 'alice'),
                    (2, 'two', 50, NULL, NULL, NULL, 'bob');
         INSERT INTO other VALUES (1, 'not mapped');
         COMMIT;"
    ))
    .await;
    f.sync_point().await;
    let one = f
        .object("/alice/transit", "Bus", 1)
        .expect("bus 1 in alice's realm");
    assert_eq!(one.get("name"), Some(&text("one")));
    assert_eq!(one.get("seats"), Some(&Value::Int(40)));
    assert_eq!(one.get("notes"), Some(&text(&big)));
    assert_eq!(one.get("mood"), Some(&text("happy")));
    assert_eq!(
        one.get("route"),
        Some(&Value::Link(PrimaryKey::String("r1".into())))
    );
    assert!(f.object("/bob/transit", "Bus", 2).is_some());
    assert!(f.object("/alice/transit", "Bus", 2).is_none());

    // An update that leaves the TOASTed notes alone keeps them.
    f.exec("UPDATE bus SET name = 'uno' WHERE id = 1").await;
    f.sync_point().await;
    let one = f.object("/alice/transit", "Bus", 1).unwrap();
    assert_eq!(one.get("name"), Some(&text("uno")));
    assert_eq!(one.get("notes"), Some(&text(&big)), "unchanged TOAST kept");

    // The routing column changes: the row moves to bob's realm, TOASTed notes and all.
    f.exec("UPDATE bus SET user_id = 'bob', counter = counter + 1 WHERE id = 1")
        .await;
    f.sync_point().await;
    assert!(f.object("/alice/transit", "Bus", 1).is_none(), "left alice");
    let moved = f.object("/bob/transit", "Bus", 1).expect("moved to bob");
    assert_eq!(moved.get("notes"), Some(&text(&big)));
    assert_eq!(moved.get("counter"), Some(&Value::Int(1)));
    assert_eq!(
        f.store.locate("Bus", &PrimaryKey::Int(1)).unwrap(),
        vec![path("/bob/transit")]
    );

    // A key change moves the object to its new key (notes unchanged and TOASTed).
    f.exec("UPDATE bus SET id = 10 WHERE id = 1").await;
    f.sync_point().await;
    assert!(f.object("/bob/transit", "Bus", 1).is_none());
    let renamed = f
        .object("/bob/transit", "Bus", 10)
        .expect("under its new key");
    assert_eq!(renamed.get("notes"), Some(&text(&big)));
    assert_eq!(renamed.get("name"), Some(&text("uno")));

    // A key change and a move in one update.
    f.exec("UPDATE bus SET id = 11, user_id = 'carol' WHERE id = 10")
        .await;
    f.sync_point().await;
    assert!(f.object("/bob/transit", "Bus", 10).is_none());
    assert_eq!(
        f.object("/carol/transit", "Bus", 11).unwrap().get("notes"),
        Some(&text(&big))
    );

    // Deletes find the row wherever it is.
    f.exec("DELETE FROM bus WHERE id = 11").await;
    f.sync_point().await;
    assert!(f
        .store
        .locate("Bus", &PrimaryKey::Int(11))
        .unwrap()
        .is_empty());

    // The checkpoint is the last applied commit, and it was confirmed.
    let checkpoint = stored_checkpoint(&f.store, &f.slot).unwrap().unwrap();
    assert!(f
        .store
        .metadata(&checkpoint_key(&f.slot))
        .unwrap()
        .is_some());
    f.wait_confirmed(checkpoint.as_u64()).await;
    assert_eq!(
        running
            .stats
            .rejections
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    running.stop().await;
}

#[tokio::test]
async fn a_transaction_is_one_store_commit_across_realms() {
    let mut f = Fixture::new().await;
    let running = f.start(f.options()).await;
    f.exec(
        "BEGIN;
         INSERT INTO bus (id, name, user_id) VALUES (1, 'a', 'alice'), (2, 'b', 'bob');
         UPDATE bus SET name = 'a2' WHERE id = 1;
         COMMIT;",
    )
    .await;
    f.sync_point().await;
    // Both realms changed in one commit: each has exactly one version holding the net change.
    for (realm, key, name) in [("/alice/transit", 1, "a2"), ("/bob/transit", 2, "b")] {
        let changes = f.store.changes(&path(realm), 0, 100).unwrap();
        assert_eq!(changes.len(), 1, "{realm}: {changes:?}");
        assert_eq!(changes[0].origin, "postgres");
        match &changes[0].instructions[..] {
            [Instruction::AddClass { .. }, .., Instruction::Create { key: k, values, .. }] => {
                assert_eq!(*k, PrimaryKey::Int(key));
                assert_eq!(values.get("name"), Some(&text(name)));
            }
            other => panic!("{realm}: {other:?}"),
        }
    }
    running.stop().await;
}

/// Inserted rows are created from their records (no realm holds them); a later change of the
/// same row in the same store commit — an update, a delete, a key change, a move, the same key
/// inserted again — still applies in order, and every realm's changesets replay to what it
/// holds.
#[tokio::test]
async fn inserted_rows_changed_again_in_the_same_commit_apply_in_order() {
    let mut f = Fixture::new().await;
    let running = f.start(f.options()).await;
    let big = "t".repeat(5_000);
    f.exec(&format!(
        "BEGIN;
         INSERT INTO bus (id, name, user_id) VALUES (1, 'one', 'alice'), (2, 'two', 'alice'),
             (3, 'three', 'alice'), (4, 'four', 'alice'), (5, 'five', 'alice');
         INSERT INTO bus (id, name, notes, user_id) VALUES (6, 'six', '{big}', 'alice');
         UPDATE bus SET name = 'one again', counter = counter + 1 WHERE id = 1;
         DELETE FROM bus WHERE id = 2;
         UPDATE bus SET id = 30 WHERE id = 3;
         UPDATE bus SET user_id = 'bob' WHERE id = 4;
         DELETE FROM bus WHERE id = 5;
         INSERT INTO bus (id, name, user_id) VALUES (5, 'five again', 'bob');
         UPDATE bus SET user_id = 'bob', name = 'six moved' WHERE id = 6;
         COMMIT;"
    ))
    .await;
    // Small transactions right after each other, which the engine may group into one commit.
    for sql in [
        "INSERT INTO bus (id, name, user_id) VALUES (7, 'seven', 'carol')",
        "UPDATE bus SET name = 'seven b' WHERE id = 7",
        "INSERT INTO bus (id, name, user_id) VALUES (8, 'eight', 'carol')",
        "DELETE FROM bus WHERE id = 8",
        "UPDATE bus SET id = 70, user_id = 'alice' WHERE id = 7",
    ] {
        f.exec(sql).await;
    }
    f.sync_point().await;

    assert_eq!(
        f.pg_buses().await,
        f.realm_buses(),
        "realms hold what PostgreSQL holds"
    );
    let one = f.object("/alice/transit", "Bus", 1).expect("bus 1");
    assert_eq!(one.get("name"), Some(&text("one again")));
    assert_eq!(one.get("counter"), Some(&Value::Int(1)));
    assert!(f.object("/alice/transit", "Bus", 2).is_none());
    assert!(f.object("/alice/transit", "Bus", 3).is_none());
    assert!(f.object("/alice/transit", "Bus", 30).is_some());
    assert!(f.object("/bob/transit", "Bus", 4).is_some());
    assert_eq!(
        f.object("/bob/transit", "Bus", 5)
            .and_then(|o| o.get("name").cloned()),
        Some(text("five again"))
    );
    let six = f
        .object("/bob/transit", "Bus", 6)
        .expect("bus 6 moved to bob");
    assert_eq!(six.get("notes"), Some(&text(&big)));
    assert_eq!(six.get("name"), Some(&text("six moved")));
    assert!(f.object("/carol/transit", "Bus", 7).is_none());
    assert!(f.object("/carol/transit", "Bus", 8).is_none());
    assert_eq!(
        f.object("/alice/transit", "Bus", 70)
            .and_then(|o| o.get("name").cloned()),
        Some(text("seven b"))
    );
    // Each realm's changesets, replayed from nothing, give exactly what it holds.
    let snapshot = f.store.snapshot().unwrap();
    for info in snapshot.realms().unwrap() {
        let mut replayed = pgrealm_runtime::RealmObjects::new();
        for changeset in f.store.changes(&info.path, 0, usize::MAX).unwrap() {
            pgrealm_runtime::apply(&mut replayed, &changeset.instructions)
                .unwrap_or_else(|e| panic!("{}: {e}", info.path));
        }
        let view = snapshot.realm(&info.path).unwrap().unwrap();
        let held: pgrealm_runtime::RealmObjects = view
            .objects("Bus")
            .unwrap()
            .into_iter()
            .map(|o| (("Bus".to_owned(), o.primary_key(&schema()).unwrap()), o))
            .collect();
        let replayed_buses: pgrealm_runtime::RealmObjects = replayed
            .into_iter()
            .filter(|((class, _), _)| class == "Bus")
            .collect();
        assert_eq!(replayed_buses, held, "{}", info.path);
    }
    running.stop().await;
}

#[tokio::test]
async fn list_entries_follow_idx_order_within_and_across_transactions() {
    let mut f = Fixture::new().await;
    let running = f.start(f.options()).await;
    f.exec(
        "BEGIN;
         INSERT INTO route (id, name, user_id) VALUES ('r', 'Ring', 'alice');
         INSERT INTO bus (id, name, user_id) VALUES (1, 'a', 'alice'), (2, 'b', 'alice'), (3, 'c', 'alice');
         -- entries arrive out of order
         INSERT INTO route_buses VALUES ('r', 2, 3), ('r', 0, 1), ('r', 1, 2);
         COMMIT;",
    )
    .await;
    f.sync_point().await;
    let list = |f: &Fixture| match f
        .object("/alice/transit", "Route", "r")
        .unwrap()
        .get("buses")
    {
        Some(Value::List(items)) => items.clone(),
        other => panic!("{other:?}"),
    };
    let links = |ids: &[i64]| -> Vec<Value> {
        ids.iter()
            .map(|i| Value::Link(PrimaryKey::Int(*i)))
            .collect()
    };
    assert_eq!(list(&f), links(&[1, 2, 3]));

    // Insert at the front: shift every idx up, going through negative values on the way, as
    // an application moving rows without violating the primary key would.
    f.exec(
        "BEGIN;
         UPDATE route_buses SET idx = -idx - 1 WHERE oid = 'r';
         UPDATE route_buses SET idx = -idx WHERE oid = 'r';
         INSERT INTO route_buses VALUES ('r', 0, 3);
         COMMIT;",
    )
    .await;
    f.sync_point().await;
    assert_eq!(list(&f), links(&[3, 1, 2, 3]));

    // Gaps in idx are fine; deletes remove by idx.
    f.exec("DELETE FROM route_buses WHERE oid = 'r' AND idx = 2")
        .await;
    f.sync_point().await;
    assert_eq!(list(&f), links(&[3, 1, 3]));

    // The owner moves to another realm: its list goes with it; entries added later follow it.
    f.exec("UPDATE route SET user_id = 'bob' WHERE id = 'r'")
        .await;
    f.exec("INSERT INTO route_buses VALUES ('r', 9, 2)").await;
    f.sync_point().await;
    assert!(f.object("/alice/transit", "Route", "r").is_none());
    match f.object("/bob/transit", "Route", "r").unwrap().get("buses") {
        Some(Value::List(items)) => assert_eq!(*items, links(&[3, 1, 3, 2])),
        other => panic!("{other:?}"),
    }

    // TRUNCATE of the list table empties every list; TRUNCATE of a class table empties the
    // class in every realm.
    f.exec("TRUNCATE route_buses").await;
    f.sync_point().await;
    match f.object("/bob/transit", "Route", "r").unwrap().get("buses") {
        Some(Value::List(items)) => assert!(items.is_empty()),
        other => panic!("{other:?}"),
    }
    f.exec("INSERT INTO bus (id, name, user_id) VALUES (4, 'd', 'bob')")
        .await;
    f.exec("TRUNCATE bus").await;
    f.sync_point().await;
    assert!(f.objects("Bus").is_empty(), "{:?}", f.objects("Bus"));
    assert!(
        f.object("/bob/transit", "Route", "r").is_some(),
        "routes stay"
    );
    running.stop().await;
}

#[tokio::test]
async fn unmapped_tables_are_ignored_and_marker_transactions_count_as_echoes() {
    let mut f = Fixture::new().await;
    f.exec(
        "CREATE SCHEMA pgrealm;
         CREATE TABLE pgrealm.marker (id bigserial PRIMARY KEY, at timestamptz DEFAULT now());",
    )
    .await;
    let running = f.start(f.options()).await;
    f.exec("ALTER PUBLICATION pgrealm ADD TABLE other").await;
    f.exec("INSERT INTO other VALUES (1, 'x')").await;
    f.exec(
        "BEGIN;
         INSERT INTO bus (id, name, user_id) VALUES (1, 'from realm', 'alice');
         INSERT INTO pgrealm.marker DEFAULT VALUES;
         COMMIT;",
    )
    .await;
    f.sync_point().await;
    assert!(
        f.object("/alice/transit", "Bus", 1).is_some(),
        "echoes are applied"
    );
    let stats = running.stats.clone();
    eventually("one echo counted", || {
        stats.echoes.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(
        running
            .stats
            .rejections
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    running.stop().await;
}

#[tokio::test]
async fn restart_resumes_exactly_after_the_checkpoint() {
    let mut f = Fixture::new().await;
    let running = f.start(f.options()).await;
    for i in 0..20 {
        f.exec(&format!(
            "INSERT INTO bus (id, name, user_id) VALUES ({i}, 'b{i}', 'u{}')",
            i % 3
        ))
        .await;
    }
    f.sync_point().await;
    running.stop().await;
    let stopped_at = stored_checkpoint(&f.store, &f.slot).unwrap().unwrap();
    // Changes while stopped, then a restart.
    for i in 0..20 {
        f.exec(&format!(
            "UPDATE bus SET counter = counter + 1, name = 'x{i}' WHERE id = {i}"
        ))
        .await;
    }
    let running = f.start(f.options()).await;
    assert_eq!(running.setup.checkpoint, stopped_at);
    f.sync_point().await;
    assert_eq!(f.realm_buses(), f.pg_buses().await);
    // Each bus changed exactly once after its creation: two versions' worth of changes, and the
    // counter went 0 → 1 exactly once in the logs.
    for realm in ["/u0/transit", "/u1/transit", "/u2/transit"] {
        let mut sets = 0;
        for changeset in f.store.changes(&path(realm), 0, 1000).unwrap() {
            for instruction in changeset.instructions {
                if let Instruction::Set {
                    property, old, new, ..
                } = instruction
                {
                    if property == "counter" {
                        assert_eq!((old, new), (Value::Int(0), Value::Int(1)));
                        sets += 1;
                    }
                }
            }
        }
        let buses = f.objects("Bus").keys().filter(|(r, _)| r == realm).count();
        assert_eq!(sets, buses, "{realm}");
    }
    running.stop().await;
}

#[tokio::test]
async fn the_confirmed_position_follows_applies_and_advances_while_idle() {
    let mut f = Fixture::new().await;
    let running = f.start(f.options()).await;
    f.exec("INSERT INTO bus (id, name, user_id) VALUES (1, 'a', 'alice')")
        .await;
    f.sync_point().await;
    let applied = stored_checkpoint(&f.store, &f.slot)
        .unwrap()
        .unwrap()
        .as_u64();
    // Confirmed within 100 ms (plus the poll's own delay) of the apply.
    let started = std::time::Instant::now();
    while f.confirmed_flush_lsn().await < applied {
        assert!(started.elapsed() < Duration::from_secs(5), "not confirmed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let confirm_delay = started.elapsed();
    assert!(
        confirm_delay < Duration::from_millis(500),
        "{confirm_delay:?}"
    );
    // Idle: WAL that does not concern the slot's tables (another table, other databases)
    // moves on, and the slot follows through keepalives.
    f.exec("INSERT INTO other VALUES (1, 'unpublished')").await;
    let wal = f.current_wal_lsn().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while f.confirmed_flush_lsn().await < wal {
        assert!(
            tokio::time::Instant::now() < deadline,
            "an idle slot's confirmed position did not advance"
        );
        f.exec("SELECT pg_switch_wal()").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stored_checkpoint(&f.store, &f.slot)
            .unwrap()
            .unwrap()
            .as_u64(),
        applied,
        "idle confirmation writes nothing to the store"
    );
    running.stop().await;
}

#[tokio::test]
async fn bad_rows_are_rejected_kept_and_healed_while_the_stream_goes_on() {
    let mut f = Fixture::new().await;
    // The publication and slot first, so the row below is streamed…
    let tables: Vec<_> = ["route", "route_buses", "bus"]
        .into_iter()
        .map(QualifiedTable::public)
        .collect();
    ensure_publication(&f.sql, "pgrealm", &tables)
        .await
        .unwrap();
    ensure_slot(&f.sql, &f.slot).await.unwrap();
    f.exec("INSERT INTO bus (id, name, user_id, mood) VALUES (100, 'stale', 'alice', 'sad')")
        .await;
    // …and the label renamed before the stream decodes it: the WAL says 'sad', which the
    // catalog no longer knows.
    f.exec("ALTER TYPE mood RENAME VALUE 'sad' TO 'glum'").await;
    let running = f.start(f.options()).await;
    let cases = [
        // (key, user_id, statement, what the reason says)
        (
            1,
            "INSERT INTO bus (id, name, seats, user_id) VALUES (1, 'big', 70000, 'alice')",
            "out of range",
        ),
        (
            2,
            "INSERT INTO bus (id, name, user_id) VALUES (2, NULL, 'alice')",
            "required",
        ),
        (
            3,
            "INSERT INTO bus (id, name, user_id) VALUES (3, 'dots', '..')",
            "realm path",
        ),
        (
            4,
            "INSERT INTO bus (id, name, user_id) VALUES (4, 'slash', 'a/b')",
            "realm path",
        ),
        (
            5,
            "INSERT INTO bus (id, name, user_id) VALUES (5, 'empty', '')",
            "realm path",
        ),
        (
            6,
            "INSERT INTO bus (id, name, user_id) VALUES (6, 'null', NULL)",
            "NULL",
        ),
        (
            7,
            "INSERT INTO bus (id, name, level, user_id) VALUES (7, 'nan', 'abc', 'alice')",
            "not an integer",
        ),
    ];
    for (_, statement, _) in &cases {
        f.exec(statement).await;
    }
    f.exec("INSERT INTO bus (id, name, user_id) VALUES (50, 'good', 'alice')")
        .await;
    f.sync_point().await;
    assert!(
        f.object("/alice/transit", "Bus", 50).is_some(),
        "the stream went on"
    );
    let rejected = rejections::recent(&f.store, Direction::PostgresToRealm, 100).unwrap();
    assert_eq!(rejected.len(), cases.len() + 1, "{rejected:#?}");
    for (key, _, reason) in &cases {
        assert_bus_rejected(&f, &rejected, *key, reason);
    }
    let label = rejected
        .iter()
        .find(|r| r.key.as_deref() == Some("100"))
        .expect("the renamed label is rejected");
    assert!(
        label.reason.contains("unknown enum label \"sad\""),
        "{}",
        label.reason
    );
    assert_eq!(label.raw["mood"], serde_json::json!("sad"));
    let stats = running.stats.clone();
    eventually("every rejection counted", || {
        stats.rejections.load(std::sync::atomic::Ordering::Relaxed) == cases.len() as u64 + 1
    })
    .await;
    assert_eq!(
        rejections::count(&f.store, Direction::PostgresToRealm).unwrap(),
        8
    );

    // Later valid updates heal every one of them (the whole new row is applied).
    f.exec(
        "UPDATE bus SET seats = 70 WHERE id = 1;
         UPDATE bus SET name = 'named' WHERE id = 2;
         UPDATE bus SET user_id = 'alice' WHERE id IN (3, 4, 5, 6);
         UPDATE bus SET level = '7' WHERE id = 7;
         UPDATE bus SET mood = 'glum' WHERE id = 100;",
    )
    .await;
    f.sync_point().await;
    for key in [1, 2, 3, 4, 5, 6, 7, 100] {
        assert!(
            f.object("/alice/transit", "Bus", key).is_some(),
            "bus {key} healed"
        );
    }
    assert_eq!(
        f.object("/alice/transit", "Bus", 7).unwrap().get("level"),
        Some(&Value::Int(7))
    );
    assert_eq!(
        f.object("/alice/transit", "Bus", 100).unwrap().get("mood"),
        Some(&text("glum"))
    );
    assert_eq!(
        rejections::count(&f.store, Direction::PostgresToRealm).unwrap(),
        8
    );
    running.stop().await;
}

/// Rows changed, then moved or given a new key, in one transaction: the second change does
/// not carry the TOASTed notes the first set (PostgreSQL sends them as unchanged), and the
/// store does not hold them yet, so only what the group kept of the first change can give them.
/// Short values set by the first change come again with the second.
#[tokio::test]
async fn a_row_moved_after_an_earlier_change_in_its_transaction_keeps_its_toast_value() {
    let mut f = Fixture::new().await;
    let running = f.start(f.options()).await;
    f.exec(
        "INSERT INTO bus (id, name, seats, user_id) VALUES (1, 'one', 1, 'alice'), \
         (2, 'two', 2, 'alice')",
    )
    .await;
    f.sync_point().await;
    let big = "m".repeat(20_000);
    f.exec(&format!(
        "BEGIN;
         UPDATE bus SET notes = '{big}', name = 'uno', seats = 11 WHERE id = 1;
         UPDATE bus SET user_id = 'bob' WHERE id = 1;
         UPDATE bus SET notes = '{big}2', name = 'dos', seats = 22 WHERE id = 2;
         UPDATE bus SET id = 20 WHERE id = 2;
         COMMIT;"
    ))
    .await;
    f.sync_point().await;
    assert!(f.object("/alice/transit", "Bus", 1).is_none(), "left alice");
    let moved = f.object("/bob/transit", "Bus", 1).expect("moved to bob");
    assert_eq!(moved.get("notes"), Some(&text(&big)));
    assert_eq!(moved.get("name"), Some(&text("uno")));
    assert_eq!(moved.get("seats"), Some(&Value::Int(11)));
    assert!(
        f.object("/alice/transit", "Bus", 2).is_none(),
        "old key gone"
    );
    let renamed = f
        .object("/alice/transit", "Bus", 20)
        .expect("under its new key");
    assert_eq!(renamed.get("notes"), Some(&text(&format!("{big}2"))));
    assert_eq!(renamed.get("name"), Some(&text("dos")));
    assert_eq!(renamed.get("seats"), Some(&Value::Int(22)));
    assert_eq!(
        running
            .stats
            .rejections
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    running.stop().await;
}

#[tokio::test]
async fn an_update_of_a_rejected_row_without_its_toast_value_is_rejected_not_guessed() {
    let mut f = Fixture::new().await;
    let running = f.start(f.options()).await;
    let big = "t".repeat(20_000);
    f.exec(&format!(
        "INSERT INTO bus (id, name, seats, notes, user_id) VALUES (1, 'x', 99999, '{big}', 'alice')"
    ))
    .await;
    // Fixes seats but does not touch the TOASTed notes: the change does not carry them, and the
    // realm never held the row, so the notes are unknown.
    f.exec("UPDATE bus SET seats = 9 WHERE id = 1").await;
    f.sync_point().await;
    assert!(f.object("/alice/transit", "Bus", 1).is_none());
    let rejected = rejections::recent(&f.store, Direction::PostgresToRealm, 10).unwrap();
    assert_eq!(rejected.len(), 2);
    assert!(
        rejected[0].reason.contains("unchanged TOAST"),
        "{}",
        rejected[0].reason
    );
    // An update that rewrites the notes heals it.
    f.exec("UPDATE bus SET notes = notes || '!' WHERE id = 1")
        .await;
    f.sync_point().await;
    let healed = f.object("/alice/transit", "Bus", 1).unwrap();
    assert_eq!(healed.get("notes"), Some(&text(&format!("{big}!"))));
    assert_eq!(healed.get("seats"), Some(&Value::Int(9)));
    running.stop().await;
}

#[tokio::test]
async fn a_lost_connection_is_retried_without_losing_anything() {
    let mut f = Fixture::new().await;
    let running = f.start(f.options()).await;
    f.exec("INSERT INTO bus (id, name, user_id) VALUES (1, 'a', 'alice')")
        .await;
    f.sync_point().await;
    // Kill the walsender serving the slot, and write while it is gone.
    f.exec(&format!(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
         WHERE slot_name = '{}' AND active_pid IS NOT NULL",
        f.slot
    ))
    .await;
    f.exec("INSERT INTO bus (id, name, user_id) VALUES (2, 'b', 'alice')")
        .await;
    f.sync_point().await;
    assert!(f.object("/alice/transit", "Bus", 2).is_some());
    assert!(
        running
            .stats
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert_eq!(f.realm_buses(), f.pg_buses().await);
    running.stop().await;
}

#[tokio::test]
async fn a_routing_closure_decides_the_realm_and_its_errors_are_rejections() {
    let mut f = Fixture::new().await;
    let mut options = f.options();
    options.router =
        pgrealm_runtime::sync::pg_to_realm::RealmRouter::closure(|table, row| {
            match (table, row.get("user_id")) {
                ("route", Some("sync")) => Ok(path("/sync/transit")),
                ("bus", Some(user)) if !user.starts_with('x') => {
                    Ok(path(&format!("/{table}/{user}")))
                }
                (_, user) => Err(format!("no realm for user {user:?}")),
            }
        });
    let running = f.start(options).await;
    f.exec("INSERT INTO bus (id, name, user_id) VALUES (1, 'a', 'alice'), (2, 'b', 'xavier');")
        .await;
    f.sync_point().await;
    assert!(f.object("/bus/alice", "Bus", 1).is_some());
    let rejected = rejections::recent(&f.store, Direction::PostgresToRealm, 10).unwrap();
    assert_eq!(rejected.len(), 1);
    assert!(
        rejected[0]
            .reason
            .contains("no realm for user Some(\"xavier\")"),
        "{}",
        rejected[0].reason
    );
    running.stop().await;
}

#[tokio::test]
async fn custom_postgres_types_that_do_not_fit_the_property_are_rejections() {
    let mut f = Fixture::new().await;
    let mut options = f.options();
    // The enum is configured to convert as an int, but the property is a string.
    options
        .custom_postgres_types
        .insert("mood".into(), "int".into());
    let running = f.start(options).await;
    f.exec("INSERT INTO bus (id, name, mood, user_id) VALUES (1, 'a', 'happy', 'alice')")
        .await;
    f.exec("INSERT INTO bus (id, name, user_id) VALUES (2, 'b', 'alice')")
        .await;
    f.sync_point().await;
    assert!(f.object("/alice/transit", "Bus", 1).is_none());
    assert!(
        f.object("/alice/transit", "Bus", 2).is_some(),
        "NULL needs no conversion"
    );
    let rejected = rejections::recent(&f.store, Direction::PostgresToRealm, 10).unwrap();
    assert_eq!(rejected.len(), 1);
    assert!(
        rejected[0]
            .reason
            .contains("custom_postgres_types maps mood to int"),
        "{}",
        rejected[0].reason
    );
    running.stop().await;
}

/// Transactions of a few thousand changes one after another: the session holds its reads
/// while each such group commits when nothing else waits (`Session::hold_reads`). Every
/// transaction still applies, exactly once and whole, and the last is confirmed.
#[tokio::test]
async fn bulk_transactions_one_after_another_all_apply_and_are_confirmed() {
    // No group is full by its age: each one is handed over at a transaction's end with nothing
    // else waiting, which is when reads are held.
    bulk_transactions(60 * 1000, 20_000).await;
}

/// The same when every group is full (each transaction passes `group_max_changes`), so that
/// each goes at once, whether or not anything waits.
#[tokio::test]
async fn full_bulk_groups_one_after_another_all_apply_and_are_confirmed() {
    bulk_transactions(60 * 1000, 1_000).await;
}

async fn bulk_transactions(max_delay_ms: u64, max_changes: u64) {
    let mut f = Fixture::new().await;
    let mut options = f.options();
    options.group_max_delay = Duration::from_millis(max_delay_ms);
    options.group_max_changes = max_changes;
    let running = f.start(options).await;
    let transactions = [
        "INSERT INTO bus (id, name, user_id)
             SELECT i, 'bulk', 'u' || (i % 3) FROM generate_series(1, 2000) i",
        "INSERT INTO bus (id, name, user_id)
             SELECT i, 'bulk', 'u' || (i % 3) FROM generate_series(2001, 4000) i",
        "UPDATE bus SET counter = counter + 1, name = 'again' WHERE id <= 2000",
        "DELETE FROM bus WHERE id <= 500",
        "UPDATE bus SET user_id = 'moved', counter = counter + 1 WHERE id BETWEEN 1501 AND 2500",
        "INSERT INTO bus (id, name, user_id)
             SELECT i, 'bulk', 'u' || (i % 3) FROM generate_series(4001, 6000) i",
    ];
    // Three sent at once, then one at a time, each confirmed before the next is written:
    // nothing waits when its group is handed over.
    let at_once: Vec<String> = transactions[..3]
        .iter()
        .map(|sql| format!("BEGIN; {sql}; COMMIT;"))
        .collect();
    f.exec(&at_once.join("\n")).await;
    for sql in &transactions[3..] {
        let written = f.current_wal_lsn().await;
        f.wait_confirmed(written).await;
        f.exec(sql).await;
    }
    f.sync_point().await;
    let held = f.realm_buses();
    assert_eq!(held.len(), 5_500);
    assert_eq!(
        f.pg_buses().await,
        held,
        "realms hold what PostgreSQL holds"
    );
    let checkpoint = stored_checkpoint(&f.store, &f.slot).unwrap().unwrap();
    f.wait_confirmed(checkpoint.as_u64()).await;
    running.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_the_transaction_in_hand_and_confirms_it() {
    let f = Fixture::new().await;
    let running = f.start(f.options()).await;
    f.exec(
        "INSERT INTO bus (id, name, user_id)
             SELECT i, 'bulk', 'u' || (i % 3) FROM generate_series(1, 30000) i",
    )
    .await;
    // Stop while the 30,000-row transaction is (most likely) streaming.
    tokio::time::sleep(Duration::from_millis(50)).await;
    running.stop().await;
    let buses = f.objects("Bus").len();
    assert!(
        buses == 0 || buses == 30_000,
        "a transaction was split: {buses} rows"
    );
    // Whatever was applied was confirmed before the session ended.
    let checkpoint = stored_checkpoint(&f.store, &f.slot).unwrap().unwrap();
    assert!(f.confirmed_flush_lsn().await >= checkpoint.as_u64());
    // And a restart completes it exactly once.
    let mut f = f;
    let running = f.start(f.options()).await;
    f.sync_point().await;
    assert_eq!(f.objects("Bus").len(), 30_000);
    running.stop().await;
}
