//! Shared pieces of the realm → PostgreSQL tests: a schema with every instruction kind's
//! needs (scalars, an optional link, a list of links, a list of primitives), a store plus a
//! database with the engine running, and the comparison of a realm with PostgreSQL.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pgrealm_runtime::pg::{object_from_row, read_list, select_columns};
use pgrealm_runtime::sync::realm_to_pg::{RealmToPg, RealmToPgOptions};
use pgrealm_runtime::testing::{PgCluster, TestDb};
use pgrealm_runtime::{RealmPath, Store, StoreOptions};
use pgrealm_schema::ddl::{quote_ident, render_ddl};
use pgrealm_schema::{
    Class, IntWidth, ListItem, Object, PrimaryKey, Property, PropertyType, ScalarType, Schema,
    Value,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub fn int() -> PropertyType {
    PropertyType::Scalar(ScalarType::Int(IntWidth::I64))
}

pub fn text() -> PropertyType {
    PropertyType::Scalar(ScalarType::String)
}

/// Route (string key, a list of bus links, a list of ints), Bus (int key, name, seats, an
/// optional link to a route), Item (for per-user realms).
pub fn schema() -> Schema {
    Schema::new(vec![
        Class::new("Route")
            .property(Property::new("id", text()).primary_key())
            .property(Property::new("name", text()))
            .property(Property::new(
                "buses",
                PropertyType::List(ListItem::Object("Bus".into())),
            ))
            .property(Property::new(
                "stops",
                PropertyType::List(ListItem::Scalar(ScalarType::Int(IntWidth::I64))),
            )),
        Class::new("Bus")
            .property(Property::new("id", int()).primary_key())
            .property(Property::new("name", text()))
            .property(Property::new("seats", int()))
            .property(
                Property::new("route", PropertyType::Link("Route".into()))
                    .column("routeid")
                    .optional(),
            ),
        Class::new("Item")
            .property(Property::new("id", int()).primary_key())
            .property(Property::new("title", text())),
    ])
}

pub fn path(p: &str) -> RealmPath {
    RealmPath::parse(p).unwrap()
}

pub fn bus(id: i64, name: &str, seats: i64, route: Option<&str>) -> Object {
    Object::new("Bus")
        .with("id", Value::Int(id))
        .with("name", Value::String(name.into()))
        .with("seats", Value::Int(seats))
        .with(
            "route",
            route.map_or(Value::Null, |r| Value::Link(PrimaryKey::String(r.into()))),
        )
}

pub fn route(id: &str, name: &str, buses: &[i64], stops: &[i64]) -> Object {
    Object::new("Route")
        .with("id", Value::String(id.into()))
        .with("name", Value::String(name.into()))
        .with(
            "buses",
            Value::List(
                buses
                    .iter()
                    .map(|b| Value::Link(PrimaryKey::Int(*b)))
                    .collect(),
            ),
        )
        .with(
            "stops",
            Value::List(stops.iter().map(|s| Value::Int(*s)).collect()),
        )
}

/// Commit `f`'s writes with origin `app`.
pub fn commit(store: &Store, f: impl FnOnce(&mut pgrealm_runtime::WriteTx)) {
    let mut tx = store.begin_write("app");
    f(&mut tx);
    tx.commit().unwrap();
}

/// A store in a temporary directory and a fresh database with the schema's tables.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub db: TestDb,
    pub client: tokio_postgres::Client,
    /// The realms the engine follows (what `synced` waits for).
    pub followed: regex::Regex,
    stop: Option<watch::Sender<bool>>,
    task: Option<JoinHandle<Result<(), pgrealm_runtime::sync::realm_to_pg::RealmToPgError>>>,
}

impl Env {
    pub async fn new(schema: Schema) -> Env {
        let ddl = render_ddl(&schema);
        Env::with_ddl(schema, &ddl).await
    }

    /// Like [`Env::new`], with tables made by `ddl` (an existing database's own).
    pub async fn with_ddl(schema: Schema, ddl: &str) -> Env {
        let db = PgCluster::shared().fresh_database().unwrap();
        let client = db.connect().await.unwrap();
        client.batch_execute(ddl).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), schema, StoreOptions::default()).unwrap();
        Env {
            dir,
            store,
            db,
            client,
            followed: regex::Regex::new("").unwrap(),
            stop: None,
            task: None,
        }
    }

    /// Start the engine as the superuser with `options`.
    pub fn start(&mut self, options: RealmToPgOptions) {
        let url = self.db.url.clone();
        self.start_as(&url, options);
    }

    pub fn start_as(&mut self, url: &str, options: RealmToPgOptions) {
        self.followed = options.realm_regex.clone();
        let engine = RealmToPg::new(self.store.clone(), url, options).unwrap();
        let (stop, shutdown) = watch::channel(false);
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(engine.run(shutdown)));
    }

    /// Stop the engine and check it returned Ok.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(true).unwrap();
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the engine stops within 30 s")
                .unwrap()
                .unwrap();
        }
    }

    /// Wait until PostgreSQL's progress rows reach every realm's newest changeset that did not
    /// come from PostgreSQL.
    pub async fn synced(&self) {
        wait_synced_matching(&self.store, &self.client, &self.followed).await
    }

    /// Assert that the realm holds exactly PostgreSQL's rows of `class` (with `filter`, an SQL
    /// condition such as `"user_id" = 'u1'`, selecting this realm's rows).
    pub async fn assert_equal(&self, realm: &str, class: &str, filter: Option<&str>) {
        assert_realm_equals_postgres(&self.store, &self.client, realm, class, filter).await
    }
}

pub async fn wait_synced(store: &Store, client: &tokio_postgres::Client) {
    wait_synced_matching(store, client, &regex::Regex::new("").unwrap()).await
}

pub async fn wait_synced_matching(
    store: &Store,
    client: &tokio_postgres::Client,
    followed: &regex::Regex,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut behind = Vec::new();
        let snapshot = store.snapshot().unwrap();
        for info in snapshot.realms().unwrap() {
            if !followed.is_match(info.path.as_str()) {
                continue;
            }
            let target = snapshot
                .changes(&info.path, 0, usize::MAX)
                .unwrap()
                .iter()
                .filter(|c| c.origin != "postgres")
                .map(|c| c.version)
                .max()
                .unwrap_or(0);
            if target == 0 {
                continue;
            }
            let row = client
                .query_opt(
                    "SELECT version FROM pgrealm.progress WHERE realm_path = $1",
                    &[&info.path.as_str()],
                )
                .await
                .ok()
                .flatten();
            let have = row.map_or(0, |r| r.get::<_, i64>(0) as u64);
            if have < target {
                behind.push(format!("{} at {have} of {target}", info.path));
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "PostgreSQL did not catch up within 60 s: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The rows of `class` in PostgreSQL (with `filter`), as objects with their lists.
pub async fn postgres_objects(
    client: &tokio_postgres::Client,
    schema: &Schema,
    class: &str,
    filter: Option<&str>,
) -> BTreeMap<PrimaryKey, Object> {
    let class = schema.class(class).unwrap();
    let sql = format!(
        "SELECT {} FROM {}{}",
        select_columns(class),
        quote_ident(&class.table),
        filter.map(|f| format!(" WHERE {f}")).unwrap_or_default()
    );
    let mut out = BTreeMap::new();
    for row in client.query(&sql, &[]).await.unwrap() {
        let mut object = object_from_row(schema, class, &row).unwrap();
        let key = object.primary_key(schema).unwrap();
        for p in class.list_properties() {
            let items = read_list(client, schema, class, p, &key).await.unwrap();
            object.values.insert(p.name.clone(), items);
        }
        out.insert(key, object);
    }
    out
}

/// `Ok` when the realm holds exactly PostgreSQL's rows of `class` (with `filter`), else the
/// difference in words.
pub async fn realm_matches_postgres(
    store: &Store,
    client: &tokio_postgres::Client,
    realm: &str,
    class: &str,
    filter: Option<&str>,
) -> Result<(), String> {
    let schema = store.schema().clone();
    let in_realm: BTreeMap<PrimaryKey, Object> = match store.realm(&path(realm)).unwrap() {
        Some(view) => view
            .objects(class)
            .unwrap()
            .into_iter()
            .map(|o| (o.primary_key(&schema).unwrap(), o))
            .collect(),
        None => BTreeMap::new(),
    };
    let in_postgres = postgres_objects(client, &schema, class, filter).await;
    if in_realm == in_postgres {
        Ok(())
    } else {
        Err(format!(
            "realm {realm}: {in_realm:?}\nPostgreSQL: {in_postgres:?}"
        ))
    }
}

pub async fn assert_realm_equals_postgres(
    store: &Store,
    client: &tokio_postgres::Client,
    realm: &str,
    class: &str,
    filter: Option<&str>,
) {
    let schema = store.schema().clone();
    let in_realm: BTreeMap<PrimaryKey, Object> = match store.realm(&path(realm)).unwrap() {
        Some(view) => view
            .objects(class)
            .unwrap()
            .into_iter()
            .map(|o| (o.primary_key(&schema).unwrap(), o))
            .collect(),
        None => BTreeMap::new(),
    };
    let in_postgres = postgres_objects(client, &schema, class, filter).await;
    assert_eq!(
        in_realm, in_postgres,
        "realm {realm} and PostgreSQL differ for class {class}"
    );
}

/// A small deterministic generator for seeded tests.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A seed from `var` or the clock, printed so a failure can be replayed.
pub fn seed(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("seed: {seed} (replay with {var}={seed})");
    seed
}
