//! Realm → PostgreSQL binds created rows column by column as arrays (`unnest`) and sends a
//! transaction's statements in one pipeline. Against a real server: every column type of an
//! existing database (enum, domain, fixed-length and bounded text, numeric with a scale,
//! tsvector, …) lands exactly; values the columns cannot hold are refused, never truncated,
//! and a refusal names the object; a changeset larger than one statement keeps its order
//! (owners before their list rows, which reference them).

mod realm2pg_support;

use std::str::FromStr;

use chrono::{TimeZone, Utc};
use pgrealm_runtime::sync::realm_to_pg::RealmToPgOptions;
use pgrealm_runtime::sync::rejections::{self, Direction};
use pgrealm_schema::{
    Class, Object, PrimaryKey, Property, PropertyType, ScalarType, Schema, Value,
};
use realm2pg_support::*;
use rust_decimal::Decimal;

fn scalar(t: ScalarType) -> PropertyType {
    PropertyType::Scalar(t)
}

/// One class over a table made by hand, as an existing database has it.
fn kinds_schema() -> Schema {
    Schema::new(vec![Class::new("Kind")
        .table("kinds")
        .property(Property::new("id", int()).primary_key())
        .property(Property::new("code", text()).postgres_type("character(3)"))
        .property(Property::new("label", text()).postgres_type("character varying(5)"))
        .property(Property::new("price", scalar(ScalarType::Decimal)).optional())
        // An i64 property over a smallint column: range-checked when written.
        .property(Property::new("small", int()).optional())
        .property(Property::new("ratio", scalar(ScalarType::Float)).optional())
        .property(Property::new("at", scalar(ScalarType::Date)).optional())
        .property(Property::new("blob", scalar(ScalarType::Data)).optional())
        .property(Property::new("uid", scalar(ScalarType::Uuid)).optional())
        .property(
            Property::new("doc", text())
                .postgres_type("jsonb")
                .optional(),
        )
        .property(
            Property::new("feeling", text())
                .custom_type("mood")
                .optional(),
        )
        .property(
            Property::new("words", text())
                .postgres_type("tsvector")
                .optional(),
        )
        .property(
            Property::new("pos", int())
                .custom_type("positive")
                .optional(),
        )])
}

const KINDS_DDL: &str = "
    CREATE TYPE mood AS ENUM ('happy', 'sad');
    CREATE DOMAIN positive AS bigint CHECK (VALUE > 0);
    CREATE TABLE kinds (
        id bigint PRIMARY KEY,
        code character(3) NOT NULL,
        label character varying(5) NOT NULL,
        price numeric(10, 2),
        small smallint,
        ratio real,
        at timestamptz,
        blob bytea,
        uid uuid,
        doc jsonb,
        feeling mood,
        words tsvector,
        pos positive
    );";

fn kind(id: i64) -> Object {
    Object::new("Kind")
        .with("id", Value::Int(id))
        .with("code", Value::String(format!("c{:02}", id % 100)))
        .with("label", Value::String(format!("l{id}")))
        .with(
            "price",
            Value::Decimal(Decimal::from_str(&format!("{id}.25")).unwrap()),
        )
        .with("small", Value::Int(id * 10))
        .with("ratio", Value::Float(id as f32 / 4.0))
        .with(
            "at",
            Value::Date(Utc.timestamp_opt(1_790_000_000 + id, 0).unwrap()),
        )
        .with("blob", Value::Data(vec![0, 1, id as u8, 255]))
        .with(
            "uid",
            Value::Uuid(uuid::Uuid::from_u128(0x1234_5678_9abc_def0 + id as u128)),
        )
        .with("doc", Value::String(format!("{{\"n\": {id}}}")))
        .with(
            "feeling",
            Value::String(if id % 2 == 0 { "happy" } else { "sad" }.into()),
        )
        .with("words", Value::String(format!("word{id} other")))
        .with("pos", Value::Int(id + 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_column_type_lands_and_unfit_values_are_refused_by_object() {
    let mut env = Env::with_ddl(kinds_schema(), KINDS_DDL).await;
    env.start(RealmToPgOptions::default());
    let r = path("/kinds");
    commit(&env.store, |tx| {
        for id in 1..=20 {
            tx.put_object(&r, kind(id)).unwrap();
        }
        // NULLs in every optional column, in the middle of the arrays.
        tx.put_object(
            &r,
            Object::new("Kind")
                .with("id", Value::Int(21))
                .with("code", Value::String("nul".into()))
                .with("label", Value::String("none".into())),
        )
        .unwrap();
    });
    env.synced().await;
    let rows = env
        .client
        .query(
            "SELECT id, code, label, price::text, small, ratio, at, blob, uid::text, doc::text, \
                    feeling::text, words::text, pos \
               FROM kinds ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 21);
    let seven = &rows[6];
    assert_eq!(seven.get::<_, i64>(0), 7);
    assert_eq!(seven.get::<_, String>(1), "c07");
    assert_eq!(seven.get::<_, String>(2), "l7");
    assert_eq!(seven.get::<_, String>(3), "7.25");
    assert_eq!(seven.get::<_, i16>(4), 70);
    assert_eq!(seven.get::<_, f32>(5), 1.75);
    assert_eq!(
        seven.get::<_, chrono::DateTime<Utc>>(6),
        Utc.timestamp_opt(1_790_000_007, 0).unwrap()
    );
    assert_eq!(seven.get::<_, Vec<u8>>(7), vec![0, 1, 7, 255]);
    assert_eq!(
        seven.get::<_, String>(8),
        uuid::Uuid::from_u128(0x1234_5678_9abc_def0 + 7).to_string()
    );
    assert_eq!(seven.get::<_, String>(9), "{\"n\": 7}");
    assert_eq!(seven.get::<_, String>(10), "sad");
    assert_eq!(seven.get::<_, String>(11), "'other' 'word7'");
    assert_eq!(seven.get::<_, i64>(12), 8);
    let nulls = &rows[20];
    assert_eq!(nulls.get::<_, String>(1), "nul");
    let nulls_count: i64 = env
        .client
        .query_one(
            "SELECT count(*) FROM kinds WHERE id = 21 AND price IS NULL AND small IS NULL \
                AND at IS NULL AND uid IS NULL AND feeling IS NULL AND words IS NULL \
                AND pos IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(nulls_count, 1);

    // Each unfit value, in a changeset of several good objects: refused (never truncated or
    // rounded into the column), the reason says why, the good objects of later changesets flow.
    let cases: Vec<(&str, Object, &str)> = vec![
        (
            "a label longer than varchar(5)",
            kind(30).with("label", Value::String("too long".into())),
            "too long",
        ),
        (
            "a code longer than character(3)",
            kind(31).with("code", Value::String("abcd".into())),
            "too long",
        ),
        (
            "a smallint out of range",
            // A key above the good ones around it: the rejection names this object, not the
            // first one the changeset touched.
            kind(320).with("small", Value::Int(40_000)),
            "Kind.small of Kind 320",
        ),
        (
            "an unknown enum label",
            kind(33).with("feeling", Value::String("angry".into())),
            "angry",
        ),
        (
            "a domain's check",
            kind(34).with("pos", Value::Int(-1)),
            "positive",
        ),
    ];
    for (n, (what, bad, expected)) in cases.into_iter().enumerate() {
        let bad_key = bad.primary_key(env.store.schema()).unwrap();
        commit(&env.store, |tx| {
            tx.put_object(&r, kind(100 + 10 * n as i64)).unwrap();
            tx.put_object(&r, bad).unwrap();
            tx.put_object(&r, kind(101 + 10 * n as i64)).unwrap();
        });
        let bad_version = env.store.realm(&r).unwrap().unwrap().version();
        commit(&env.store, |tx| {
            tx.put_object(&r, kind(200 + n as i64)).unwrap()
        });
        env.synced().await;
        let rejection = &rejections::recent(&env.store, Direction::RealmToPostgres, 1).unwrap()[0];
        assert_eq!(rejection.version, Some(bad_version), "{what}");
        if expected.starts_with("Kind.small") {
            assert_eq!(rejection.class.as_deref(), Some("Kind"), "{what}");
            assert_eq!(rejection.key.as_deref(), Some("320"), "{what}");
        }
        assert!(
            rejection.reason.contains(expected),
            "{what}: {:?} should mention {expected:?}",
            rejection.reason
        );
        let view = env.store.realm(&r).unwrap().unwrap();
        assert!(
            view.object("Kind", &bad_key).unwrap().is_none(),
            "{what}: the refused create is undone in the realm"
        );
        let present: i64 = env
            .client
            .query_one(
                "SELECT count(*) FROM kinds WHERE id = ANY($1)",
                &[&vec![bad_key_int(&bad_key), 200 + n as i64]],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            present, 1,
            "{what}: only the good object behind it is written"
        );
    }
    assert_eq!(
        rejections::count(&env.store, Direction::RealmToPostgres).unwrap(),
        5
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_the_table_lacks_is_refused_with_postgres_own_words() {
    // No array type can be named for a missing column: the rows take the one-parameter-per-value
    // form, and PostgreSQL's refusal names the column.
    let ddl = KINDS_DDL.replace(",\n        pos positive", "");
    assert_ne!(ddl, KINDS_DDL);
    let mut env = Env::with_ddl(kinds_schema(), &ddl).await;
    env.start(RealmToPgOptions::default());
    let r = path("/kinds");
    commit(&env.store, |tx| tx.put_object(&r, kind(1)).unwrap());
    env.synced().await;
    let rejection = &rejections::recent(&env.store, Direction::RealmToPostgres, 1).unwrap()[0];
    assert!(
        rejection.reason.contains("\"pos\"") && rejection.reason.contains("does not exist"),
        "{:?}",
        rejection.reason
    );
    let rows: i64 = env
        .client
        .query_one("SELECT count(*) FROM kinds", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    env.stop().await;
}

fn bad_key_int(key: &PrimaryKey) -> i64 {
    match key {
        PrimaryKey::Int(i) => *i,
        other => panic!("an int key, not {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changeset_larger_than_one_statement_keeps_owners_before_their_lists() {
    let mut env = Env::new(schema()).await;
    env.start(RealmToPgOptions::default());
    let r = path("/big");
    // 2,500 buses and 1,200 routes listing them: several statements of each, all sent before
    // the first result; the list rows reference the buses and routes written before them.
    commit(&env.store, |tx| {
        for b in 0..2_500 {
            tx.put_object(&r, bus(b, &format!("bus {b}"), b % 60, None))
                .unwrap();
        }
        for n in 0..1_200i64 {
            let buses = [n, n + 1_000, (n * 7) % 2_500];
            tx.put_object(
                &r,
                route(&format!("r{n}"), &format!("route {n}"), &buses, &[n, -n]),
            )
            .unwrap();
        }
    });
    env.synced().await;
    env.assert_equal("/big", "Bus", None).await;
    env.assert_equal("/big", "Route", None).await;
    // Created again in a later changeset: the lists are replaced, not appended to.
    commit(&env.store, |tx| {
        for n in 0..1_200i64 {
            tx.put_object(&r, route(&format!("r{n}"), "again", &[n], &[]))
                .unwrap();
        }
    });
    env.synced().await;
    env.assert_equal("/big", "Route", None).await;
    let items: i64 = env
        .client
        .query_one("SELECT count(*) FROM route_buses", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(items, 1_200);
    env.stop().await;
}
