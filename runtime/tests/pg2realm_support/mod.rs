//! What the pg2realm_* tests share: a small transit-like schema with a routing column, a link,
//! a list, a custom enum and a TOASTable column; a running applier; sync points; comparison of
//! realms with PostgreSQL.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pgrealm_runtime::metrics::Metrics;
use pgrealm_runtime::replication::PgConnectOptions;
use pgrealm_runtime::sync::pg_to_realm::{
    PgToRealm, PgToRealmError, PgToRealmOptions, PgToRealmStats, Progress, SetupReport,
};
use pgrealm_runtime::sync::rejections::Rejection;
use pgrealm_runtime::testing::{PgCluster, TestDb};
use pgrealm_runtime::{RealmPath, Store, StoreOptions};
use pgrealm_schema::{
    Class, IntWidth, ListItem, Object, PrimaryKey, Property, PropertyType, ScalarType, Schema,
    Value,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(30);

pub fn int(width: IntWidth) -> PropertyType {
    PropertyType::Scalar(ScalarType::Int(width))
}

pub fn string() -> PropertyType {
    PropertyType::Scalar(ScalarType::String)
}

/// Route (string key, a list of buses) and Bus (int key, link to its route, a custom enum, a
/// TOASTable text, a change counter).
pub fn schema() -> Schema {
    Schema::new(vec![
        Class::new("Route")
            .table("route")
            .property(Property::new("id", string()).primary_key())
            .property(Property::new("name", string()))
            .property(Property::new(
                "buses",
                PropertyType::List(ListItem::Object("Bus".into())),
            )),
        Class::new("Bus")
            .table("bus")
            .property(Property::new("id", int(IntWidth::I64)).primary_key())
            .property(Property::new("name", string()))
            .property(Property::new("seats", int(IntWidth::I16)).optional())
            .property(Property::new("notes", string()).optional())
            .property(
                Property::new("route", PropertyType::Link("Route".into()))
                    .column("route_id")
                    .optional(),
            )
            .property(
                Property::new("mood", string())
                    .optional()
                    .custom_type("mood"),
            )
            .property(Property::new("level", int(IntWidth::I32)).optional())
            .property(Property::new("counter", int(IntWidth::I64))),
    ])
}

pub const DDL: &str = "
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TABLE route (id text PRIMARY KEY, name text, user_id text);
CREATE TABLE bus (
    id bigint PRIMARY KEY, name text, seats integer, notes text,
    route_id text REFERENCES route (id) ON UPDATE CASCADE DEFERRABLE INITIALLY DEFERRED,
    mood mood, level text, counter bigint NOT NULL DEFAULT 0, user_id text);
ALTER TABLE bus ALTER COLUMN notes SET STORAGE EXTERNAL;
CREATE TABLE route_buses (
    oid text NOT NULL REFERENCES route (id) ON UPDATE CASCADE ON DELETE CASCADE
        DEFERRABLE INITIALLY DEFERRED,
    idx bigint NOT NULL, target bigint NOT NULL, PRIMARY KEY (oid, idx));
CREATE TABLE other (id int PRIMARY KEY, v text);
";

pub fn path(p: &str) -> RealmPath {
    RealmPath::parse(p).unwrap()
}

pub fn slot_name(db: &TestDb) -> String {
    format!("p2r_{}", db.name).to_lowercase()
}

/// A fresh database with [`DDL`] and an empty store.
pub struct Fixture {
    pub db: TestDb,
    pub pg: PgConnectOptions,
    pub sql: tokio_postgres::Client,
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub slot: String,
    sync_points: u64,
}

impl Fixture {
    pub async fn new() -> Fixture {
        Self::with_ddl(DDL).await
    }

    pub async fn with_ddl(ddl: &str) -> Fixture {
        let db = PgCluster::shared().fresh_database().unwrap();
        let pg = PgConnectOptions::from_url(&db.url).unwrap();
        let sql = pg.connect_sql().await.unwrap();
        sql.batch_execute(ddl).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
        let slot = slot_name(&db);
        Fixture {
            db,
            pg,
            sql,
            dir,
            store,
            slot,
            sync_points: 0,
        }
    }

    pub fn options(&self) -> PgToRealmOptions {
        let mut options = PgToRealmOptions::new(
            self.slot.clone(),
            "pgrealm",
            PgToRealmOptions::template("/{user_id}/transit").unwrap(),
        );
        options.progress = Progress::Log;
        options
    }

    pub async fn start(&self, options: PgToRealmOptions) -> Running {
        let sync = PgToRealm::new(
            self.pg.clone(),
            options,
            self.store.clone(),
            Arc::new(Metrics::default()),
        );
        let setup = sync.setup().await.unwrap();
        let stats = sync.stats();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(sync.run(stopped));
        Running {
            setup,
            stats,
            stop,
            task,
        }
    }

    pub async fn exec(&self, sql: &str) {
        self.sql
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Write a row in a transaction of its own and wait until the realm holds it: everything
    /// committed before is applied then (WAL order).
    pub async fn sync_point(&mut self) {
        self.sync_points += 1;
        let id = format!("__sync_{}", self.sync_points);
        self.exec(&format!(
            "INSERT INTO route (id, name, user_id) VALUES ('{id}', 'sync', 'sync')"
        ))
        .await;
        let realm = path("/sync/transit");
        let key = PrimaryKey::String(id.clone());
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(view) = self.store.realm(&realm).unwrap() {
                if view.object("Route", &key).unwrap().is_some() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sync point {id} not applied within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn object(&self, realm: &str, class: &str, key: impl Into<PrimaryKey>) -> Option<Object> {
        self.store
            .realm(&path(realm))
            .unwrap()
            .and_then(|view| view.object(class, &key.into()).unwrap())
    }

    /// Every (realm, object) of a class, sync-point routes excluded.
    pub fn objects(&self, class: &str) -> BTreeMap<(String, String), Object> {
        let snapshot = self.store.snapshot().unwrap();
        let mut out = BTreeMap::new();
        for info in snapshot.realms().unwrap() {
            if info.path.as_str() == "/sync/transit" {
                continue;
            }
            let view = snapshot.realm(&info.path).unwrap().unwrap();
            for object in view.objects(class).unwrap() {
                let key = object.primary_key(&schema()).unwrap().to_string();
                out.insert((info.path.as_str().to_owned(), key), object);
            }
        }
        out
    }

    /// Buses as PostgreSQL holds them: (realm, key) → (name, counter).
    pub async fn pg_buses(&self) -> BTreeMap<(String, String), (Option<String>, i64)> {
        self.sql
            .query("SELECT user_id, id, name, counter FROM bus", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| {
                let user: String = row.get(0);
                let id: i64 = row.get(1);
                (
                    (format!("/{user}/transit"), id.to_string()),
                    (row.get(2), row.get(3)),
                )
            })
            .collect()
    }

    /// Buses as the realms hold them, in the shape of [`pg_buses`](Self::pg_buses).
    pub fn realm_buses(&self) -> BTreeMap<(String, String), (Option<String>, i64)> {
        self.objects("Bus")
            .into_iter()
            .map(|(k, o)| {
                let name = match o.get("name") {
                    Some(Value::String(s)) => Some(s.clone()),
                    _ => None,
                };
                let counter = match o.get("counter") {
                    Some(Value::Int(i)) => *i,
                    other => panic!("counter {other:?}"),
                };
                (k, (name, counter))
            })
            .collect()
    }

    pub async fn confirmed_flush_lsn(&self) -> u64 {
        let text: Option<String> = self
            .sql
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .unwrap()
            .get(0);
        pgrealm_runtime::replication::Lsn::parse(&text.unwrap())
            .unwrap()
            .as_u64()
    }

    /// Wait (up to [`WAIT`]) until the slot's confirmed position reaches `lsn`.
    pub async fn wait_confirmed(&self, lsn: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.confirmed_flush_lsn().await < lsn {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the slot's confirmed position never reached {lsn}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn current_wal_lsn(&self) -> u64 {
        let text: String = self
            .sql
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        pgrealm_runtime::replication::Lsn::parse(&text)
            .unwrap()
            .as_u64()
    }
}

pub struct Running {
    pub setup: SetupReport,
    pub stats: Arc<PgToRealmStats>,
    pub stop: watch::Sender<bool>,
    pub task: JoinHandle<Result<(), PgToRealmError>>,
}

impl Running {
    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the applier stops within the time limit")
            .unwrap()
            .unwrap();
    }
}

pub fn text(v: &str) -> Value {
    Value::String(v.into())
}

/// Bus `key`'s rejection among `rejected`: it says `reason`, names the table, class and LSN,
/// keeps the raw row, and no realm holds the bus.
pub fn assert_bus_rejected(f: &Fixture, rejected: &[Rejection], key: i64, reason: &str) {
    let r = rejected
        .iter()
        .find(|r| r.key.as_deref() == Some(&key.to_string()))
        .unwrap_or_else(|| panic!("no rejection of bus {key}: {rejected:#?}"));
    assert!(r.reason.contains(reason), "bus {key}: {}", r.reason);
    assert_eq!(r.table.as_deref(), Some("public.bus"));
    assert_eq!(r.class.as_deref(), Some("Bus"));
    assert!(r.lsn.is_some());
    assert_eq!(r.raw["id"], serde_json::json!(key.to_string()));
    assert!(f
        .store
        .locate("Bus", &PrimaryKey::Int(key))
        .unwrap()
        .is_empty());
}

/// Wait until `holds` (a counter of the applier: they are updated just after a commit is
/// durable, so a reader of the store can see the commit a moment before its counts).
pub async fn eventually(what: &str, holds: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !holds() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
