//! Shared by the engine tests: a seeded random source, writers on both sides over a small
//! transit key space (so they collide), the full contents of both sides for comparison, and the
//! counters PostgreSQL keeps for us (which transactions were the engine's, which touched rows).
//!
//! Everything random is drawn from [`Rng`] seeded by the test's seed, so a failing seed names
//! the same operations when run again; only the interleaving with the engine varies.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrealm::runtime::client::{RemoteRealm, RemoteTx};
use pgrealm::runtime::pg::{object_from_row, read_list, select_columns};
use pgrealm::runtime::testing::PgCluster;
use pgrealm::runtime::{RealmPath, Store};
use pgrealm::{Object, PrimaryKey, Schema, Value};

/// Every object of one realm by (class, key).
pub type Objects = BTreeMap<(String, PrimaryKey), Object>;
/// Every non-empty realm by path.
pub type State = BTreeMap<String, Objects>;

/// The classes the tests write, in dependency order.
pub const CLASSES: &[&str] = &["Route", "Schedule", "Bus", "Driver"];

const ROUTES: u64 = 3;
const SCHEDULES: u64 = 5;
const BUSES: u64 = 4;
const DRIVERS: u64 = 3;
const DAYS: &[&str] = &["Monday", "Tuesday", "Saturday"];

/// The transit schema.
pub fn schema() -> &'static Schema {
    transit::Schema::schema()
}

/// splitmix64: small, fast and the same on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// An independent stream for writer `n` of the same seed.
    pub fn fork(seed: u64, n: u64) -> Rng {
        let mut r = Rng(seed ^ n.wrapping_mul(0xA24B_AED4_963E_E407));
        r.next();
        r
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// The seeds to run: `PGREALM_CONVERGENCE_SEEDS` as a comma-separated list (`7,8,9`) or
/// `random:N` for N fresh seeds; `defaults` otherwise.
pub fn seeds(defaults: &[u64]) -> Vec<u64> {
    match std::env::var("PGREALM_CONVERGENCE_SEEDS") {
        Ok(v) if v.starts_with("random:") => {
            let n: u64 = v["random:".len()..]
                .parse()
                .expect("PGREALM_CONVERGENCE_SEEDS=random:N needs a number");
            let base = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            (0..n).map(|i| Rng::fork(base, i).next()).collect()
        }
        Ok(v) => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("PGREALM_CONVERGENCE_SEEDS is a comma-separated list of seeds")
            })
            .collect(),
        Err(_) => defaults.to_vec(),
    }
}

/// A number from the environment, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

fn route_id(rng: &mut Rng) -> String {
    format!("r{}", rng.below(ROUTES))
}
fn schedule_id(rng: &mut Rng) -> String {
    format!("s{}", rng.below(SCHEDULES))
}
fn bus_id(rng: &mut Rng) -> i64 {
    rng.below(BUSES) as i64
}
fn driver_id(rng: &mut Rng) -> i64 {
    rng.below(DRIVERS) as i64
}
fn name(rng: &mut Rng) -> String {
    format!("n{}", rng.below(1000))
}
/// Whole seconds, so realm and PostgreSQL agree on the precision without rounding.
fn minutes(rng: &mut Rng) -> pgrealm::DateTime<pgrealm::Utc> {
    let base: pgrealm::DateTime<pgrealm::Utc> = "2026-11-30T06:00:00Z".parse().unwrap();
    base + chrono::Duration::minutes(rng.below(10_000) as i64)
}

/// One operation of a realm writer.
#[derive(Debug, Clone)]
pub enum RealmOp {
    Put(Object),
    Delete(&'static str, PrimaryKey),
    /// Read the route's list now and edit it (insert, remove, move or replace).
    EditList(String),
}

/// One realm transaction: one to three operations.
pub fn realm_ops(rng: &mut Rng) -> Vec<RealmOp> {
    let n = 1 + rng.below(3);
    (0..n).map(|_| realm_op(rng)).collect()
}

fn realm_op(rng: &mut Rng) -> RealmOp {
    match rng.below(12) {
        0 => RealmOp::Put(
            Object::new("Route")
                .with("id", Value::String(route_id(rng)))
                .with("name", Value::String(name(rng))),
        ),
        1..=3 => RealmOp::EditList(route_id(rng)),
        4 => {
            let arrival = if rng.percent(50) {
                Value::Null
            } else {
                Value::Date(minutes(rng))
            };
            RealmOp::Put(
                Object::new("Schedule")
                    .with("id", Value::String(schedule_id(rng)))
                    .with(
                        "day",
                        Value::String(DAYS[rng.below(DAYS.len() as u64) as usize].into()),
                    )
                    .with("departure", Value::Date(minutes(rng)))
                    .with("arrival", arrival),
            )
        }
        5 | 6 => {
            let route = if rng.percent(30) {
                Value::Null
            } else {
                Value::Link(route_id(rng).into())
            };
            RealmOp::Put(
                Object::new("Bus")
                    .with("id", Value::Int(bus_id(rng)))
                    .with("name", Value::String(name(rng)))
                    .with("route", route),
            )
        }
        7 => {
            let bus = if rng.percent(30) {
                Value::Null
            } else {
                Value::Link(bus_id(rng).into())
            };
            RealmOp::Put(
                Object::new("Driver")
                    .with("id", Value::Int(driver_id(rng)))
                    .with("name", Value::String(name(rng)))
                    .with("bus", bus),
            )
        }
        8 => RealmOp::Delete("Route", route_id(rng).into()),
        9 => RealmOp::Delete("Schedule", schedule_id(rng).into()),
        10 => RealmOp::Delete("Bus", bus_id(rng).into()),
        _ => RealmOp::Delete("Driver", driver_id(rng).into()),
    }
}

/// The route as it should be after editing its list; `current` is the route now, if any.
pub fn edit_list(rng: &mut Rng, route: &str, current: Option<&Object>) -> Object {
    let Some(current) = current else {
        let items = (0..rng.below(4))
            .map(|_| Value::Link(schedule_id(rng).into()))
            .collect();
        return Object::new("Route")
            .with("id", Value::String(route.into()))
            .with("name", Value::String(name(rng)))
            .with("schedules", Value::List(items));
    };
    let mut items = match current.get("schedules") {
        Some(Value::List(items)) => items.clone(),
        _ => Vec::new(),
    };
    match rng.below(4) {
        0 => {
            let at = rng.below(items.len() as u64 + 1) as usize;
            items.insert(at, Value::Link(schedule_id(rng).into()));
        }
        1 if !items.is_empty() => {
            let at = rng.below(items.len() as u64) as usize;
            items.remove(at);
        }
        2 if items.len() > 1 => {
            let a = rng.below(items.len() as u64) as usize;
            let b = rng.below(items.len() as u64) as usize;
            items.swap(a, b);
        }
        _ => {
            items = (0..rng.below(4))
                .map(|_| Value::Link(schedule_id(rng).into()))
                .collect();
        }
    }
    Object::new("Route")
        .with("id", Value::String(route.into()))
        .with("schedules", Value::List(items))
}

/// One PostgreSQL transaction: one to three statements on the same key space, as SQL text (the
/// values are ours: identifiers `r1`, `s2`, small integers, names `n123`).
pub fn pg_transaction(rng: &mut Rng) -> String {
    let n = 1 + rng.below(3);
    (0..n)
        .map(|_| pg_statement(rng))
        .collect::<Vec<_>>()
        .join(";\n")
}

fn pg_statement(rng: &mut Rng) -> String {
    let r = route_id(rng);
    let s = schedule_id(rng);
    let b = bus_id(rng);
    let d = driver_id(rng);
    let nm = name(rng);
    match rng.below(14) {
        0 => format!(
            "INSERT INTO route (id, name) VALUES ('{r}', '{nm}') \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name"
        ),
        1 => {
            let day = DAYS[rng.below(DAYS.len() as u64) as usize];
            let dep = minutes(rng).to_rfc3339();
            let arr = if rng.percent(50) {
                "NULL".to_owned()
            } else {
                format!("'{}'", minutes(rng).to_rfc3339())
            };
            format!(
                "INSERT INTO schedule (id, day, departure, arrival) VALUES ('{s}', '{day}', '{dep}', {arr}) \
                 ON CONFLICT (id) DO UPDATE SET day = excluded.day, departure = excluded.departure, \
                 arrival = excluded.arrival"
            )
        }
        2 | 3 => {
            let route = if rng.percent(30) {
                "NULL".to_owned()
            } else {
                format!("'{r}'")
            };
            format!(
                "INSERT INTO bus (id, name, routeid) VALUES ({b}, '{nm}', {route}) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, routeid = excluded.routeid"
            )
        }
        4 => {
            let bus = if rng.percent(30) {
                "NULL".to_owned()
            } else {
                b.to_string()
            };
            format!(
                "INSERT INTO driver (id, name, bus) VALUES ({d}, '{nm}', {bus}) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, bus = excluded.bus"
            )
        }
        5 => format!("UPDATE bus SET name = '{nm}' WHERE id = {b}"),
        6 => format!("UPDATE route SET name = '{nm}' WHERE id = '{r}'"),
        7 => format!("DELETE FROM bus WHERE id = {b}"),
        8 => format!("DELETE FROM route WHERE id = '{r}'"),
        9 => format!("DELETE FROM schedule WHERE id = '{s}'"),
        10 => format!("DELETE FROM driver WHERE id = {d}"),
        // List edits on the subtable: append, remove the first, replace the whole list.
        11 => format!(
            "INSERT INTO route_schedules (oid, idx, target) \
             SELECT '{r}', coalesce(max(idx) + 1, 0), '{s}' FROM route_schedules WHERE oid = '{r}'"
        ),
        12 => format!(
            "DELETE FROM route_schedules WHERE oid = '{r}' AND idx = \
             (SELECT min(idx) FROM route_schedules WHERE oid = '{r}')"
        ),
        _ => {
            let s2 = schedule_id(rng);
            format!(
                "DELETE FROM route_schedules WHERE oid = '{r}'; \
                 INSERT INTO route_schedules (oid, idx, target) VALUES ('{r}', 0, '{s2}'), ('{r}', 1, '{s}')"
            )
        }
    }
}

/// Counters kept by PostgreSQL itself: every transaction that wrote `pgrealm.progress` (the
/// engine's realm → PostgreSQL writes) and every transaction that changed a row of a published
/// table (the synced tables and `pgrealm.marker`: what logical replication streams). The
/// functions run as their owner, the superuser, whichever role writes. Install with
/// [`install_counters`] before the engine starts.
pub const COUNTERS_DDL: &str = "
CREATE SCHEMA conv;
CREATE TABLE conv.engine_tx (xid xid8 PRIMARY KEY);
CREATE TABLE conv.touched_tx (xid xid8 PRIMARY KEY);
CREATE FUNCTION conv.note_engine() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN INSERT INTO conv.engine_tx VALUES (pg_current_xact_id()) ON CONFLICT DO NOTHING; RETURN NULL; END $$;
CREATE FUNCTION conv.note_touched() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN INSERT INTO conv.touched_tx VALUES (pg_current_xact_id()) ON CONFLICT DO NOTHING; RETURN NULL; END $$;
CREATE TRIGGER note_engine AFTER INSERT OR UPDATE ON pgrealm.progress
    FOR EACH ROW EXECUTE FUNCTION conv.note_engine();
CREATE TRIGGER note_touched AFTER INSERT OR UPDATE OR DELETE ON pgrealm.marker
    FOR EACH ROW EXECUTE FUNCTION conv.note_touched();
CREATE TRIGGER note_touched AFTER INSERT OR UPDATE OR DELETE ON route
    FOR EACH ROW EXECUTE FUNCTION conv.note_touched();
CREATE TRIGGER note_touched AFTER INSERT OR UPDATE OR DELETE ON route_schedules
    FOR EACH ROW EXECUTE FUNCTION conv.note_touched();
CREATE TRIGGER note_touched AFTER INSERT OR UPDATE OR DELETE ON schedule
    FOR EACH ROW EXECUTE FUNCTION conv.note_touched();
CREATE TRIGGER note_touched AFTER INSERT OR UPDATE OR DELETE ON bus
    FOR EACH ROW EXECUTE FUNCTION conv.note_touched();
CREATE TRIGGER note_touched AFTER INSERT OR UPDATE OR DELETE ON driver
    FOR EACH ROW EXECUTE FUNCTION conv.note_touched();
";

/// Create the engine's bookkeeping tables (unless they exist) and the counters on them and on
/// the transit tables of database `db`.
pub fn install_counters(cluster: &PgCluster, db: &str) {
    cluster
        .batch_execute(db, pgrealm::runtime::sync::realm_to_pg::BOOKKEEPING_DDL)
        .unwrap();
    cluster.batch_execute(db, COUNTERS_DDL).unwrap();
}

/// What PostgreSQL counted (see [`COUNTERS_DDL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgCounts {
    /// Transactions of the engine's realm → PostgreSQL writer.
    pub engine: i64,
    /// Transactions that changed a row of a published table (anyone's).
    pub touched: i64,
    /// The engine's transactions that changed a row of a published table: each must come back
    /// as exactly one echo.
    pub engine_touched: i64,
}

/// Read the counters.
pub async fn pg_counts(url: &str) -> PgCounts {
    let client = pgrealm::runtime::testing::connect(url).await.unwrap();
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM conv.engine_tx), (SELECT count(*) FROM conv.touched_tx), \
             (SELECT count(*) FROM conv.engine_tx e JOIN conv.touched_tx t USING (xid))",
            &[],
        )
        .await
        .unwrap();
    PgCounts {
        engine: row.get(0),
        touched: row.get(1),
        engine_touched: row.get(2),
    }
}

/// Run one PostgreSQL writer transaction on a `&mut` tokio-postgres client: `Ok(true)` when it
/// committed, `Ok(false)` when PostgreSQL refused it (a foreign key, a deadlock: expected on a
/// colliding key space), `Err(())` when the connection is gone. A macro, so this package needs
/// no direct dependency on tokio-postgres to name the client's type.
macro_rules! pg_write {
    ($client:expr, $sql:expr) => {
        async {
            let client = $client;
            let tx = match client.transaction().await {
                Ok(tx) => tx,
                Err(_) => return Err(()),
            };
            if tx.batch_execute($sql).await.is_err() {
                drop(tx);
                return if client.is_closed() {
                    Err(())
                } else {
                    Ok(false)
                };
            }
            let committed = tx.commit().await.is_ok();
            if committed {
                Ok(true)
            } else if client.is_closed() {
                Err(())
            } else {
                Ok(false)
            }
        }
    };
}
#[allow(unused_imports)]
// Test files that write PostgreSQL only through pg_writer do not name it.
pub(crate) use pg_write;

/// A connection for a PostgreSQL writer (`Option<tokio_postgres::Client>`, `None` when
/// PostgreSQL is not there). Writers collide on purpose: their deadlocks are found in 100 ms
/// rather than the default second. A macro for the same reason as [`pg_write!`].
macro_rules! connect_writer {
    ($url:expr) => {
        async {
            let client = pgrealm::runtime::testing::connect($url).await.ok()?;
            client
                .batch_execute("SET deadlock_timeout = '100ms'")
                .await
                .ok()?;
            Some(client)
        }
    };
}
#[allow(unused_imports)]
// Test files that write PostgreSQL only through pg_writer do not name it.
pub(crate) use connect_writer;

/// PostgreSQL's full contents as realms: each row in the realm `realm_of` names (`None`: the
/// row is routed nowhere), lists read from their subtables in `idx` order.
pub async fn pg_state(
    url: &str,
    routing_column: Option<&str>,
    realm_of: impl Fn(Option<&str>) -> String,
) -> State {
    let client = pgrealm::runtime::testing::connect(url).await.unwrap();
    let schema = schema();
    let mut state = State::new();
    for class_name in CLASSES {
        let class = schema.class(class_name).unwrap();
        let routing = match routing_column {
            Some(c) if class.name == "Bus" => format!(", {c}::text AS conv_routing"),
            _ => ", NULL::text AS conv_routing".to_owned(),
        };
        let sql = format!(
            "SELECT {}{routing} FROM \"{}\"",
            select_columns(class),
            class.table
        );
        for row in client.query(&sql, &[]).await.unwrap() {
            let mut object = object_from_row(schema, class, &row).unwrap();
            let key = object.primary_key(schema).unwrap();
            for property in class.properties.iter().filter(|p| p.ty.is_list()) {
                let list = read_list(&client, schema, class, property, &key)
                    .await
                    .unwrap();
                object.values.insert(property.name.clone(), list);
            }
            let routed: Option<String> = row.get("conv_routing");
            state
                .entry(realm_of(routed.as_deref()))
                .or_default()
                .insert((class.name.clone(), key), object);
        }
    }
    state
}

/// The store's full contents (every non-empty realm).
pub fn realm_state(store: &Store) -> State {
    let snapshot = store.snapshot().unwrap();
    let mut state = State::new();
    for info in snapshot.realms().unwrap() {
        let view = snapshot.realm(&info.path).unwrap().unwrap();
        let mut objects = Objects::new();
        for class in CLASSES {
            for object in view.objects(class).unwrap() {
                let key = object.primary_key(schema()).unwrap();
                objects.insert((class.to_string(), key), object);
            }
        }
        if !objects.is_empty() {
            state.insert(info.path.as_str().to_owned(), objects);
        }
    }
    state
}

/// How the realm side and PostgreSQL differ, one line per object.
pub fn diff(realm: &State, pg: &State) -> String {
    let mut out = String::new();
    let empty = Objects::new();
    let paths: std::collections::BTreeSet<&String> = realm.keys().chain(pg.keys()).collect();
    for path in paths {
        let r = realm.get(path).unwrap_or(&empty);
        let p = pg.get(path).unwrap_or(&empty);
        let keys: std::collections::BTreeSet<&(String, PrimaryKey)> =
            r.keys().chain(p.keys()).collect();
        for key in keys {
            match (r.get(key), p.get(key)) {
                (Some(a), Some(b)) if a == b => {}
                (a, b) => {
                    let _ = writeln!(
                        out,
                        "  {path} {} {}: realm {:?} / PostgreSQL {:?}",
                        key.0,
                        key.1,
                        a.map(|o| &o.values),
                        b.map(|o| &o.values)
                    );
                }
            }
        }
    }
    out
}

/// Per origin, how many versions the realm's log holds.
pub fn versions_by_origin(store: &Store, realm: &str) -> BTreeMap<String, u64> {
    let snapshot = store.snapshot().unwrap();
    let path = RealmPath::parse(realm).unwrap();
    let mut out = BTreeMap::new();
    for changeset in snapshot.changes(&path, 0, usize::MAX).unwrap() {
        *out.entry(changeset.origin).or_insert(0) += 1;
    }
    out
}

/// What a crash test's writers did, for the account [`assert_applied_once`] prints.
#[derive(Debug, Clone, Copy)]
pub struct Writes {
    /// Writes through the API the server acknowledged.
    pub api_ok: u64,
    /// Writes through the API that were refused or lost with a killed engine.
    pub api_not_ok: u64,
    /// PostgreSQL transactions committed.
    pub pg_commits: u64,
    /// PostgreSQL transactions refused.
    pub pg_refused: u64,
}

/// After a crash run: judged from the realm's log in `store` and PostgreSQL's counters, no
/// changeset was written to PostgreSQL twice and no PostgreSQL transaction was applied to the
/// realm twice (compensating writes excepted: they also carry origin `postgres`).
pub fn assert_applied_once(
    seed: u64,
    store: &Store,
    realm: &str,
    counts: &PgCounts,
    writes: Writes,
) {
    use pgrealm::runtime::sync::rejections::{self, Direction};
    let origins = versions_by_origin(store, realm);
    let app: u64 = origins
        .iter()
        .filter(|(o, _)| o.as_str() != "postgres")
        .map(|(_, n)| n)
        .sum();
    let from_postgres = origins.get("postgres").copied().unwrap_or(0);
    let compensations = rejections::count(store, Direction::RealmToPostgres).unwrap();
    eprintln!(
        "seed {seed}: realm versions by origin {origins:?}; {} API writes ({} refused or lost), {} \
         PostgreSQL commits ({} refused); PostgreSQL counted {} engine transactions ({} changing \
         rows), {} transactions changing rows; {compensations} realm → PostgreSQL rejections",
        writes.api_ok,
        writes.api_not_ok,
        writes.pg_commits,
        writes.pg_refused,
        counts.engine,
        counts.engine_touched,
        counts.touched,
    );
    assert!(
        counts.engine_touched as u64 <= app,
        "seed {seed}: {} engine transactions changed rows for only {app} API changesets: a \
         changeset was written to PostgreSQL twice",
        counts.engine_touched
    );
    assert!(
        from_postgres <= counts.touched as u64 + compensations,
        "seed {seed}: {from_postgres} realm versions from PostgreSQL for {} PostgreSQL \
         transactions and {compensations} compensations: a transaction was applied twice",
        counts.touched
    );
}

/// Poll until `probe` gives the same non-`None` answer twice `gap` apart, or panic after
/// `timeout` with `describe`'s account of the last state.
pub async fn settle<T: PartialEq>(
    timeout: Duration,
    gap: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut last: Option<T> = None;
    loop {
        match probe().await {
            Ok(now) => {
                if last.as_ref() == Some(&now) {
                    return now;
                }
                last = Some(now);
            }
            Err(why) => {
                last = None;
                if Instant::now() > deadline {
                    panic!("not converged after {timeout:?}:\n{why}");
                }
            }
        }
        tokio::time::sleep(gap).await;
    }
}

/// A slot or publication name for database `db`: lowercase letters, digits and `_`, at most 63.
pub fn slot_name(db: &str) -> String {
    db.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(63)
        .collect()
}

/// The shared cluster of this test binary.
pub fn cluster() -> &'static PgCluster {
    PgCluster::shared()
}

// ---- Shared by the crash tests (engine_crash, remote_crash) ----

/// Whether something answers `GET /healthz` with 200 on 127.0.0.1:`port`.
pub fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

/// Delete a transit object by class name and key through the typed client.
pub fn delete_dynamic(tx: &mut RemoteTx, class: &str, key: &PrimaryKey) {
    match (class, key) {
        ("Route", PrimaryKey::String(k)) => tx.delete::<transit::Route>(k.clone()),
        ("Schedule", PrimaryKey::String(k)) => tx.delete::<transit::Schedule>(k.clone()),
        ("Bus", PrimaryKey::Int(k)) => tx.delete::<transit::Bus>(*k),
        ("Driver", PrimaryKey::Int(k)) => tx.delete::<transit::Driver>(*k),
        _ => panic!("no {class} with key {key}"),
    };
}

/// What the crash tests' writers did.
#[derive(Debug, Default)]
pub struct Tally {
    /// Writes through the API the server acknowledged.
    pub api_ok: AtomicU64,
    /// Writes through the API refused, or lost with a killed engine.
    pub api_not_ok: AtomicU64,
    /// PostgreSQL transactions committed.
    pub pg_commits: AtomicU64,
    /// PostgreSQL transactions refused.
    pub pg_refused: AtomicU64,
}

impl Tally {
    /// The counts so far, for [`assert_applied_once`].
    pub fn writes(&self) -> Writes {
        Writes {
            api_ok: self.api_ok.load(Ordering::Relaxed),
            api_not_ok: self.api_not_ok.load(Ordering::Relaxed),
            pg_commits: self.pg_commits.load(Ordering::Relaxed),
            pg_refused: self.pg_refused.load(Ordering::Relaxed),
        }
    }
}

/// `writers` API writers (`api_writer`, each test's own) and as many [`pg_writer`]s, each with
/// its own random stream forked from `seed`, all running until `stop`.
pub fn spawn_writers<F>(
    writers: u64,
    api_writer: fn(RemoteRealm, Rng, Arc<AtomicBool>, Arc<Tally>) -> F,
    remote: &RemoteRealm,
    url: &str,
    seed: u64,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut handles = Vec::new();
    for n in 0..writers {
        handles.push(tokio::spawn(api_writer(
            remote.clone(),
            Rng::fork(seed, n),
            stop.clone(),
            tally.clone(),
        )));
        handles.push(tokio::spawn(pg_writer(
            url.to_owned(),
            Rng::fork(seed, 100 + n),
            stop.clone(),
            tally.clone(),
        )));
    }
    handles
}

/// Random PostgreSQL transactions until `stop`; refusals are counted, not retried.
pub async fn pg_writer(url: String, mut rng: Rng, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut client = connect_writer!(&url).await.unwrap();
    while !stop.load(Ordering::Relaxed) {
        let sql = pg_transaction(&mut rng);
        match pg_write!(&mut client, &sql).await {
            Ok(true) => tally.pg_commits.fetch_add(1, Ordering::Relaxed),
            Ok(false) => tally.pg_refused.fetch_add(1, Ordering::Relaxed),
            Err(()) => panic!("the shared PostgreSQL went away"),
        };
        tokio::time::sleep(Duration::from_millis(rng.below(5))).await;
    }
}

/// `realm` as the object server shows it.
pub async fn api_state(remote: &RemoteRealm, realm: &str) -> Result<State, String> {
    let mut objects = Objects::new();
    for class in CLASSES {
        for object in remote
            .objects_dynamic(class)
            .await
            .map_err(|e| format!("reading {class} through the API: {e}"))?
        {
            let key = object.primary_key(schema()).unwrap();
            objects.insert((class.to_string(), key), object);
        }
    }
    let mut state = State::new();
    if !objects.is_empty() {
        state.insert(realm.to_owned(), objects);
    }
    Ok(state)
}
