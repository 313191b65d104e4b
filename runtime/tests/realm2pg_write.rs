//! Realm → PostgreSQL against a real server: every instruction kind, list index shifts both
//! ways (seeded), refusals with their compensation, per-user realms over one table, a closure
//! mapping, `create_postgres_db` twice, and additive schema changes with a refused type change.

mod realm2pg_support;

use std::collections::BTreeMap;

use pgrealm_runtime::sync::realm_to_pg::{
    apply_realm_schema_changes_to_postgres, create_postgres_db, RealmMapping, RealmToPgOptions,
};
use pgrealm_runtime::sync::rejections::{self, Direction};
use pgrealm_runtime::template::PathTemplate;
use pgrealm_runtime::testing::PgCluster;
use pgrealm_runtime::{Store, StoreOptions};
use pgrealm_schema::{Class, Object, PrimaryKey, Property, PropertyType, ScalarType, Value};
use realm2pg_support::*;
use regex::Regex;

async fn check_transit(env: &Env) {
    env.synced().await;
    env.assert_equal("/transit", "Route", None).await;
    env.assert_equal("/transit", "Bus", None).await;
}

async fn check_users(env: &Env) {
    env.synced().await;
    for user in ["u1", "u2", "u3"] {
        env.assert_equal(
            &format!("/{user}/myRealm"),
            "Item",
            Some(&format!("user_id = '{user}'")),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instruction_kind_reaches_postgres() {
    let mut env = Env::new(schema()).await;
    env.start(RealmToPgOptions::default());
    let r = path("/transit");
    // Creates, with lists of both kinds.
    commit(&env.store, |tx| {
        for b in 1..=4 {
            tx.put_object(&r, bus(b, &format!("bus {b}"), 40, Some("r1")))
                .unwrap();
        }
        tx.put_object(&r, route("r1", "Red", &[1, 2], &[10, 20, 30]))
            .unwrap();
    });
    check_transit(&env).await;
    // Sets, list inserts at the front, the middle and the end, a list set.
    commit(&env.store, |tx| {
        tx.put_object(&r, bus(2, "renamed", 55, None)).unwrap();
        tx.put_object(
            &r,
            route("r1", "Red line", &[3, 1, 4, 2], &[5, 10, 15, 20, 30, 35]),
        )
        .unwrap();
    });
    check_transit(&env).await;
    // Erases (one and a run), a set, then a clear in another commit.
    commit(&env.store, |tx| {
        tx.put_object(&r, route("r1", "Red line", &[3, 2], &[5, 99, 35]))
            .unwrap();
    });
    check_transit(&env).await;
    commit(&env.store, |tx| {
        tx.put_object(&r, route("r1", "Red line", &[], &[]))
            .unwrap();
    });
    check_transit(&env).await;
    // Deletes: a bus, then the route (links to it cleared first, as realm apps do).
    commit(&env.store, |tx| {
        tx.delete_object(&r, "Bus", PrimaryKey::Int(4)).unwrap();
        for b in [1, 3] {
            tx.put_object(&r, bus(b, &format!("bus {b}"), 40, None))
                .unwrap();
        }
        tx.delete_object(&r, "Route", PrimaryKey::String("r1".into()))
            .unwrap();
    });
    check_transit(&env).await;
    let routes: i64 = env
        .client
        .query_one("SELECT count(*) FROM route", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(routes, 0);

    // A set updates only the changed columns: a column PostgreSQL changed meanwhile keeps
    // PostgreSQL's value.
    env.client
        .batch_execute("UPDATE bus SET seats = 7 WHERE id = 1")
        .await
        .unwrap();
    commit(&env.store, |tx| {
        tx.put_object(
            &r,
            Object::new("Bus")
                .with("id", Value::Int(1))
                .with("name", Value::String("only the name".into())),
        )
        .unwrap();
    });
    env.synced().await;
    let row = env
        .client
        .query_one("SELECT name, seats FROM bus WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "only the name");
    assert_eq!(row.get::<_, i64>(1), 7);

    // A create of a row PostgreSQL already has: the realm's values win (the realm commit came
    // later in PostgreSQL's commit order).
    env.client
        .batch_execute("INSERT INTO bus (id, name, seats) VALUES (50, 'from sql', 1)")
        .await
        .unwrap();
    commit(&env.store, |tx| {
        tx.put_object(&r, bus(50, "from realm", 2, None)).unwrap();
        // PostgreSQL → realm would bring the 7 back; this test runs one direction only.
        tx.put_object(
            &r,
            Object::new("Bus")
                .with("id", Value::Int(1))
                .with("seats", Value::Int(7)),
        )
        .unwrap();
    });
    check_transit(&env).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_edits_shift_indices_both_ways() {
    let seed = seed("PGREALM_LIST_SEED");
    let mut rng = Rng::new(seed);
    let mut env = Env::new(schema()).await;
    env.start(RealmToPgOptions::default());
    let r = path("/lists");
    commit(&env.store, |tx| {
        for b in 1..=6 {
            tx.put_object(&r, bus(b, &format!("bus {b}"), 1, None))
                .unwrap();
        }
        tx.put_object(&r, route("a", "A", &[], &[])).unwrap();
        tx.put_object(&r, route("b", "B", &[], &[])).unwrap();
    });
    let random_list = |rng: &mut Rng, of: u64| -> Vec<i64> {
        let len = rng.below(9);
        (0..len).map(|_| 1 + rng.below(of) as i64).collect()
    };
    let mut current: BTreeMap<&str, (Vec<i64>, Vec<i64>)> = BTreeMap::new();
    for round in 0..60 {
        // Mostly small edits of the current list (insert/erase/set at random places), sometimes
        // a whole new list; sometimes both routes in one commit.
        commit(&env.store, |tx| {
            for id in ["a", "b"] {
                if round % 3 == 0 && id == "b" {
                    continue;
                }
                let (mut buses, mut stops) = current.get(id).cloned().unwrap_or_default();
                for list in [&mut buses, &mut stops] {
                    match rng.below(5) {
                        0 => *list = random_list(&mut rng, 6),
                        1 if !list.is_empty() => {
                            let at = rng.below(list.len() as u64) as usize;
                            list.remove(at);
                        }
                        2 if !list.is_empty() => {
                            let at = rng.below(list.len() as u64) as usize;
                            list[at] = 1 + rng.below(6) as i64;
                        }
                        _ => {
                            for _ in 0..=rng.below(3) {
                                let at = rng.below(list.len() as u64 + 1) as usize;
                                list.insert(at, 1 + rng.below(6) as i64);
                            }
                        }
                    }
                }
                tx.put_object(&r, route(id, id, &buses, &stops)).unwrap();
                current.insert(id, (buses, stops));
            }
        });
        if round % 15 == 14 {
            env.synced().await;
            env.assert_equal("/lists", "Route", None).await;
        }
    }
    env.synced().await;
    env.assert_equal("/lists", "Route", None).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_changes_are_recorded_and_compensated_while_the_rest_flows() {
    let mut env = Env::new(schema()).await;
    env.client
        .batch_execute(
            "ALTER TABLE bus ADD CONSTRAINT seats_not_negative CHECK (seats >= 0);
             CREATE UNIQUE INDEX bus_name_unique ON bus (name);
             ALTER TABLE bus ALTER COLUMN seats TYPE integer;",
        )
        .await
        .unwrap();
    env.start(RealmToPgOptions::default());
    let r = path("/transit");
    commit(&env.store, |tx| {
        tx.put_object(&r, route("r1", "Red", &[], &[])).unwrap();
        tx.put_object(&r, bus(1, "one", 40, Some("r1"))).unwrap();
    });
    env.synced().await;

    let cases: Vec<(&str, Object, &str)> = vec![
        (
            "a foreign key to a missing row",
            bus(10, "ten", 1, Some("nowhere")),
            "foreign key",
        ),
        (
            "a check violation",
            bus(1, "one", -5, Some("r1")),
            "seats_not_negative",
        ),
        (
            "a unique violation",
            bus(11, "one", 3, None),
            "bus_name_unique",
        ),
        (
            "a value out of range",
            bus(1, "one", 10_000_000_000, None),
            "range",
        ),
    ];
    for (n, (what, object, expected)) in cases.into_iter().enumerate() {
        // The bad change and a good one behind it, written quickly so they may share a batch.
        commit(&env.store, |tx| tx.put_object(&r, object).unwrap());
        let bad_version = env.store.realm(&r).unwrap().unwrap().version();
        commit(&env.store, |tx| {
            tx.put_object(&r, bus(100 + n as i64, &format!("good {n}"), 1, None))
                .unwrap()
        });
        env.synced().await;
        env.assert_equal("/transit", "Bus", None).await;
        env.assert_equal("/transit", "Route", None).await;
        assert_eq!(
            rejections::count(&env.store, Direction::RealmToPostgres).unwrap(),
            n as u64 + 1,
            "{what}: one more rejection"
        );
        let rejection = &rejections::recent(&env.store, Direction::RealmToPostgres, 1).unwrap()[0];
        assert_eq!(rejection.realm.as_deref(), Some("/transit"), "{what}");
        assert_eq!(rejection.version, Some(bad_version), "{what}");
        assert!(
            rejection.reason.contains(expected),
            "{what}: {:?} should mention {expected:?}",
            rejection.reason
        );
        assert!(rejection.raw.is_array(), "{what}: the changeset is kept");
        let good: i64 = env
            .client
            .query_one(
                "SELECT count(*) FROM bus WHERE id = $1",
                &[&(100 + n as i64)],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(good, 1, "{what}: the good change behind it flowed");
    }
    // The refused create is gone from the realm, the refused updates are undone.
    let view = env.store.realm(&r).unwrap().unwrap();
    assert!(view.object("Bus", &PrimaryKey::Int(10)).unwrap().is_none());
    assert!(view.object("Bus", &PrimaryKey::Int(11)).unwrap().is_none());
    assert_eq!(
        view.object("Bus", &PrimaryKey::Int(1))
            .unwrap()
            .unwrap()
            .get("seats"),
        Some(&Value::Int(40))
    );
    // A restart neither redoes a compensation nor writes a refused changeset.
    env.stop().await;
    env.start(RealmToPgOptions::default());
    commit(&env.store, |tx| {
        tx.put_object(&r, bus(200, "after restart", 1, None))
            .unwrap()
    });
    env.synced().await;
    env.assert_equal("/transit", "Bus", None).await;
    assert_eq!(
        rejections::count(&env.store, Direction::RealmToPostgres).unwrap(),
        4
    );
    env.stop().await;
}

fn per_user_options() -> RealmToPgOptions {
    RealmToPgOptions {
        realm_regex: Regex::new("^/[^/]+/myRealm$").unwrap(),
        mapping: RealmMapping::template(PathTemplate::parse("/{user_id}/myRealm").unwrap()),
        ..RealmToPgOptions::default()
    }
}

fn item(id: i64, title: &str) -> Object {
    Object::new("Item")
        .with("id", Value::Int(id))
        .with("title", Value::String(title.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_realms_share_one_table_and_rows_move_between_users() {
    let mut env = Env::new(schema()).await;
    env.client
        .batch_execute("ALTER TABLE item ADD COLUMN user_id text")
        .await
        .unwrap();
    env.start(per_user_options());
    for (u, user) in ["u1", "u2", "u3"].into_iter().enumerate() {
        let realm = path(&format!("/{user}/myRealm"));
        commit(&env.store, |tx| {
            for i in 0..3 {
                let id = 10 * u as i64 + i;
                tx.put_object(&realm, item(id, &format!("{user} item {i}")))
                    .unwrap();
            }
        });
    }
    // A realm outside realm_regex is not written.
    commit(&env.store, |tx| {
        tx.put_object(&path("/shared"), item(99, "not mine"))
            .unwrap()
    });
    check_users(&env).await;
    let shared: i64 = env
        .client
        .query_one("SELECT count(*) FROM item WHERE id = 99", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shared, 0);

    // Item 1 moves from u1 to u2 in one commit (two changesets, in whatever order).
    commit(&env.store, |tx| {
        tx.delete_object(&path("/u1/myRealm"), "Item", PrimaryKey::Int(1))
            .unwrap();
        tx.put_object(&path("/u2/myRealm"), item(1, "moved"))
            .unwrap();
    });
    check_users(&env).await;
    // Item 2 moves from u1 to u3 in two commits, the create first.
    commit(&env.store, |tx| {
        tx.put_object(&path("/u3/myRealm"), item(2, "moved again"))
            .unwrap()
    });
    commit(&env.store, |tx| {
        tx.delete_object(&path("/u1/myRealm"), "Item", PrimaryKey::Int(2))
            .unwrap()
    });
    check_users(&env).await;
    let owner: String = env
        .client
        .query_one("SELECT user_id FROM item WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "u3");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_maps_one_realm_id_to_two_columns() {
    let mut env = Env::new(schema()).await;
    env.client
        .batch_execute("ALTER TABLE item ADD COLUMN owner_id bigint, ADD COLUMN created_by bigint")
        .await
        .unwrap();
    env.start(RealmToPgOptions {
        realm_regex: Regex::new("^/user/").unwrap(),
        mapping: RealmMapping::closure(|path, _object| {
            let id: i64 = path.segments().nth(1)?.parse().ok()?;
            let mut extra = BTreeMap::new();
            extra.insert("owner_id".to_owned(), Value::Int(id));
            extra.insert("created_by".to_owned(), Value::Int(id));
            Some(("item".to_owned(), extra))
        }),
        ..RealmToPgOptions::default()
    });
    commit(&env.store, |tx| {
        tx.put_object(&path("/user/42"), item(1, "a")).unwrap();
        tx.put_object(&path("/user/7"), item(2, "b")).unwrap();
    });
    commit(&env.store, |tx| {
        tx.put_object(&path("/user/7"), item(2, "b2")).unwrap()
    });
    env.synced().await;
    let rows = env
        .client
        .query(
            "SELECT id, title, owner_id, created_by FROM item ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i64, String, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(got, vec![(1, "a".into(), 42, 42), (2, "b2".into(), 7, 7)]);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_postgres_db_creates_copies_and_is_harmless_twice() {
    let cluster = PgCluster::shared();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
    let r = path("/transit");
    commit(&store, |tx| {
        for b in 1..=3 {
            tx.put_object(&r, bus(b, &format!("bus {b}"), 30, Some("r1")))
                .unwrap();
        }
        tx.put_object(&r, route("r1", "Red", &[3, 1], &[7, 8, 9]))
            .unwrap();
    });
    let name = format!("r2p_created_{}", std::process::id());
    let url = cluster.url(&name);
    let all = Regex::new("").unwrap();
    let first = create_postgres_db(&url, &store, &all, &RealmMapping::Plain)
        .await
        .unwrap();
    assert!(first.created_database);
    assert!(!first.schema.applied.is_empty());
    assert_eq!(first.copied, vec![("/transit".to_owned(), 1)]);
    let client = cluster.connect(&name).await.unwrap();
    assert_realm_equals_postgres(&store, &client, "/transit", "Route", None).await;
    assert_realm_equals_postgres(&store, &client, "/transit", "Bus", None).await;

    let second = create_postgres_db(&url, &store, &all, &RealmMapping::Plain)
        .await
        .unwrap();
    assert!(!second.created_database);
    assert!(second.schema.applied.is_empty(), "{:?}", second.schema);
    assert!(second.copied.is_empty());
    assert_realm_equals_postgres(&store, &client, "/transit", "Route", None).await;

    // Sync continues after the copy without writing it again.
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let engine = pgrealm_runtime::sync::realm_to_pg::RealmToPg::new(
        store.clone(),
        &url,
        RealmToPgOptions::default(),
    )
    .unwrap();
    let task = tokio::spawn(engine.run(shutdown));
    commit(&store, |tx| {
        tx.put_object(&r, route("r1", "Red", &[3, 1, 2], &[7, 8, 9, 10]))
            .unwrap()
    });
    wait_synced(&store, &client).await;
    assert_realm_equals_postgres(&store, &client, "/transit", "Route", None).await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    drop(client);
    cluster.drop_database(&name).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realm_schema_changes_add_tables_and_columns_and_refuse_type_changes() {
    let v1 = schema();
    let mut env = Env::new(v1.clone()).await;
    let r = path("/transit");
    commit(&env.store, |tx| {
        tx.put_object(&r, bus(1, "one", 1, None)).unwrap()
    });
    // An upgraded binary: Bus gains `color`, a new class Depot appears.
    let mut v2 = v1.clone();
    v2.classes[1] = v2.classes[1]
        .clone()
        .property(Property::new("color", text()).optional());
    v2.classes.push(
        Class::new("Depot")
            .property(Property::new("id", int()).primary_key())
            .property(Property::new("city", text())),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), v2.clone(), StoreOptions::default()).unwrap();
    env.store = store;
    env.start(RealmToPgOptions {
        apply_schema_changes: true,
        ..RealmToPgOptions::default()
    });
    commit(&env.store, |tx| {
        tx.put_object(
            &r,
            bus(1, "one", 1, None).with("color", Value::String("red".into())),
        )
        .unwrap();
        tx.put_object(
            &r,
            Object::new("Depot")
                .with("id", Value::Int(1))
                .with("city", Value::String("Oslo".into())),
        )
        .unwrap();
    });
    env.synced().await;
    env.assert_equal("/transit", "Bus", None).await;
    env.assert_equal("/transit", "Depot", None).await;
    env.stop().await;

    // A type change is refused with a message; an addition next to it still goes ahead.
    let mut v3 = v2.clone();
    let bus_class = &mut v3.classes[1];
    bus_class.properties[1] = Property::new("name", PropertyType::Scalar(ScalarType::Bool));
    bus_class
        .properties
        .push(Property::new("plate", text()).optional());
    let report = apply_realm_schema_changes_to_postgres(&env.client, &v3)
        .await
        .unwrap();
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert!(report.refused[0].contains("name"), "{report:?}");
    assert!(
        report.applied.iter().any(|s| s.contains("\"plate\"")),
        "{report:?}"
    );
    let plate: i64 = env
        .client
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'bus' AND column_name = 'plate'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plate, 1);
}
