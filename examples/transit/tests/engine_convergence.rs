//! The one engine, embedded, under concurrent writers on both sides of a small transit key space
//! (creates, updates, deletes and list edits that collide): once the writers stop and the engine
//! is idle, the realm equals PostgreSQL exactly, and PostgreSQL's own counts show that nothing
//! was echoed back more than once. Also with PostgreSQL restarted mid-run, and with per-user
//! realms (`/{user_id}/myRealm`) over one table.
//!
//! Seeds print first; rerun one with `PGREALM_CONVERGENCE_SEEDS=<seed>` (or `random:N` for N
//! fresh ones).

mod engine_support;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engine_support::*;
use pgrealm::runtime::config::Config;
use pgrealm::runtime::sync::engine::{self, RunningEngine};
use pgrealm::runtime::sync::realm_to_pg::BOOKKEEPING_DDL;
use pgrealm::runtime::sync::rejections::{self, Direction};
use pgrealm::runtime::testing::{self, PasswordAuth, PgCluster, TestDb};
use pgrealm::runtime::{RealmPath, Store};
use pgrealm::{Object, Value};

const REALM: &str = "/myRealm";
/// Writers per side, and transactions per writer.
const WRITERS: u64 = 2;
const OPS: u64 = 120;
/// Generous: on 2 shared cores the engine is usually idle within a few seconds.
const SETTLE: Duration = Duration::from_secs(90);

/// Start the engine on database `db`, with a slot and publication named after it (slots are
/// per cluster, and other tests of this binary run at the same time).
async fn start_engine(db: &TestDb, data: &Path, extra: &[&str]) -> RunningEngine {
    let mut overrides = vec![
        format!("postgres.url={}", db.url),
        format!("postgres.slot={}", slot_name(&db.name)),
        format!("postgres.publication={}", slot_name(&db.name)),
        format!("realm.data_dir={}", data.display()),
        "realm.listen=127.0.0.1:0".to_owned(),
        "sync.create_postgres_db=false".to_owned(),
    ];
    overrides.extend(extra.iter().map(|s| s.to_string()));
    let config = Config::from_parts("", None, |_| None, &overrides).unwrap();
    engine::start(schema(), &config)
        .await
        .unwrap_or_else(|e| panic!("the engine did not start: {e}"))
}

/// Stop the engine and drop its slot, so the shared cluster does not keep WAL for it.
async fn stop_engine(engine: RunningEngine, db: &TestDb) -> Result<(), String> {
    let stopped = engine.stop().await.map_err(|e| e.to_string());
    if let Ok(client) = db.connect().await {
        let _ = client
            .execute(
                "SELECT pg_drop_replication_slot($1)",
                &[&slot_name(&db.name)],
            )
            .await;
    }
    stopped
}

#[derive(Debug, Default)]
struct Tally {
    /// Realm commits of the writers that created a version.
    app_versions: AtomicU64,
    /// Realm commits the store refused (a list edit of a route deleted in the same commit).
    app_refused: AtomicU64,
    pg_commits: AtomicU64,
    pg_refused: AtomicU64,
    pg_reconnects: AtomicU64,
    /// PostgreSQL writer transactions done, to time a restart.
    pg_done: AtomicU64,
}

async fn realm_writer(store: Store, mut rng: Rng, tally: Arc<Tally>) {
    let realm = RealmPath::parse(REALM).unwrap();
    for _ in 0..OPS {
        let mut tx = store.begin_write("app");
        for op in realm_ops(&mut rng) {
            match op {
                RealmOp::Put(object) => tx.put_object(&realm, object).unwrap(),
                RealmOp::Delete(class, key) => tx.delete_object(&realm, class, key).unwrap(),
                RealmOp::EditList(route) => {
                    let current = store
                        .realm(&realm)
                        .unwrap()
                        .and_then(|v| v.object("Route", &route.as_str().into()).unwrap());
                    let edited = edit_list(&mut rng, &route, current.as_ref());
                    tx.put_object(&realm, edited).unwrap();
                }
            }
        }
        match tokio::task::spawn_blocking(move || tx.commit())
            .await
            .unwrap()
        {
            Ok(info) if !info.is_empty() => {
                tally.app_versions.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => {
                tally.app_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(4))).await;
    }
}

async fn pg_writer(url: String, mut rng: Rng, tally: Arc<Tally>) {
    let mut client = connect_writer!(&url).await.unwrap();
    for _ in 0..OPS {
        let sql = pg_transaction(&mut rng);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match pg_write!(&mut client, &sql).await {
                Ok(true) => {
                    tally.pg_commits.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(false) => {
                    tally.pg_refused.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                // The connection is gone (PostgreSQL restarting): reconnect and try again; a
                // transaction that did commit just runs twice, which changes nothing we assert.
                Err(()) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "PostgreSQL did not come back within 60 s"
                    );
                    tally.pg_reconnects.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Some(c) = connect_writer!(&url).await {
                        client = c;
                    }
                }
            }
        }
        tally.pg_done.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(rng.below(4))).await;
    }
}

/// Everything the idle check compares between two polls.
#[derive(Debug, PartialEq)]
struct Idle {
    state: State,
    version: u64,
    counts: PgCounts,
    echoes: u64,
}

async fn wait_until_idle(seed: u64, engine: &RunningEngine, url: &str) -> Idle {
    let store = engine.store.clone();
    let stats = engine.pg_to_realm.clone();
    let realm = RealmPath::parse(REALM).unwrap();
    settle(SETTLE, Duration::from_millis(500), async || {
        let realm_now = realm_state(&store);
        let pg_now = pg_state(url, None, |_| REALM.to_owned()).await;
        if realm_now != pg_now {
            return Err(format!(
                "seed {seed}: the realm and PostgreSQL differ:\n{}",
                diff(&realm_now, &pg_now)
            ));
        }
        Ok(Idle {
            state: realm_now,
            version: store.realm(&realm).unwrap().map_or(0, |v| v.version()),
            counts: pg_counts(url).await,
            echoes: stats.echoes.load(Ordering::Relaxed),
        })
    })
    .await
}

/// The counts that show no change went round more than once. `exact_echoes`: every engine
/// transaction that changed a row came back as exactly one echo (true when nothing restarted).
fn assert_no_echo_loop(
    seed: u64,
    engine: &RunningEngine,
    idle: &Idle,
    tally: &Tally,
    exact_echoes: bool,
) {
    let origins = versions_by_origin(&engine.store, REALM);
    let app: u64 = origins
        .iter()
        .filter(|(o, _)| o.as_str() != "postgres")
        .map(|(_, n)| n)
        .sum();
    let from_postgres = origins.get("postgres").copied().unwrap_or(0);
    let compensations = rejections::count(&engine.store, Direction::RealmToPostgres).unwrap();
    let c = idle.counts;
    eprintln!(
        "seed {seed}: realm versions by origin {origins:?}; writers: {} realm versions, {} realm \
         commits refused, {} PostgreSQL commits, {} refused, {} reconnects; PostgreSQL counted {} \
         engine transactions ({} changing rows) and {} transactions changing rows; {} echoes; {} \
         realm → PostgreSQL rejections",
        tally.app_versions.load(Ordering::Relaxed),
        tally.app_refused.load(Ordering::Relaxed),
        tally.pg_commits.load(Ordering::Relaxed),
        tally.pg_refused.load(Ordering::Relaxed),
        tally.pg_reconnects.load(Ordering::Relaxed),
        c.engine,
        c.engine_touched,
        c.touched,
        idle.echoes,
        compensations,
    );
    // The engine never writes into a realm under the app's name.
    assert_eq!(
        app,
        tally.app_versions.load(Ordering::Relaxed),
        "seed {seed}"
    );
    // Realm → PostgreSQL writes each app changeset at most once (batching only merges them).
    assert!(
        c.engine_touched as u64 <= app,
        "seed {seed}: {} engine transactions changed rows for only {app} app changesets",
        c.engine_touched
    );
    // Each engine transaction comes back at most once as an echo.
    if exact_echoes {
        assert_eq!(
            idle.echoes, c.engine_touched as u64,
            "seed {seed}: echoes vs engine transactions that changed rows"
        );
    } else {
        assert!(
            idle.echoes <= c.engine_touched as u64,
            "seed {seed}: {} echoes for {} engine transactions",
            idle.echoes,
            c.engine_touched
        );
    }
    // Each PostgreSQL transaction (anyone's) becomes at most one realm version, plus one
    // compensating version per refused realm change.
    assert!(
        from_postgres <= c.touched as u64 + compensations,
        "seed {seed}: {from_postgres} realm versions from PostgreSQL for {} PostgreSQL \
         transactions and {compensations} compensations",
        c.touched
    );
    assert!(
        app > 0 && c.touched > 0,
        "seed {seed}: the writers wrote nothing"
    );
}

/// What else happens during a convergence run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing: the engine runs as the superuser.
    Plain,
    /// PostgreSQL restarts once mid-run.
    RestartPostgres,
    /// The engine runs as a role with REPLICATION and its own tables only, as on a managed
    /// database: no replication origin, so its transactions carry marker rows.
    ReplicationRole,
}

/// Give database `db` to a new REPLICATION role that is not a superuser: it creates the tables
/// and the engine's bookkeeping, so it owns them (a publication needs that). Its URL.
async fn replication_role(cluster: &PgCluster, db: &TestDb) -> String {
    let role: String = format!("r_{}", slot_name(&db.name))
        .chars()
        .take(60)
        .collect();
    let password = "convergence-secret";
    cluster
        .create_login_role(&role, password, PasswordAuth::Scram, true)
        .unwrap();
    cluster
        .batch_execute(
            &db.name,
            &format!(
                "GRANT CREATE, CONNECT ON DATABASE \"{}\" TO \"{role}\";
                 GRANT ALL ON SCHEMA public TO \"{role}\";",
                db.name
            ),
        )
        .unwrap();
    let url = cluster.url_as(&role, password, &db.name);
    let client = testing::connect(&url).await.unwrap();
    client.batch_execute(transit::Schema::DDL).await.unwrap();
    client.batch_execute(BOOKKEEPING_DDL).await.unwrap();
    url
}

async fn converge(seed: u64, cluster: &PgCluster, mode: Mode) {
    eprintln!("seed {seed}: convergence, {mode:?}");
    let db = cluster.fresh_database().unwrap();
    let engine_db = if mode == Mode::ReplicationRole {
        TestDb {
            url: replication_role(cluster, &db).await,
            ..db.clone()
        }
    } else {
        cluster
            .batch_execute(&db.name, transit::Schema::DDL)
            .unwrap();
        db.clone()
    };
    install_counters(cluster, &db.name);
    let data = tempfile::tempdir().unwrap();
    let engine = start_engine(&engine_db, data.path(), &[]).await;

    let tally = Arc::new(Tally::default());
    let mut writers = Vec::new();
    for n in 0..WRITERS {
        writers.push(tokio::spawn(realm_writer(
            engine.store.clone(),
            Rng::fork(seed, n),
            tally.clone(),
        )));
        writers.push(tokio::spawn(pg_writer(
            db.url.clone(),
            Rng::fork(seed, 100 + n),
            tally.clone(),
        )));
    }
    if mode == Mode::RestartPostgres {
        // Restart once a third of PostgreSQL's transactions are done, so writes on both sides
        // continue while it is down and after it is back.
        while tally.pg_done.load(Ordering::Relaxed) < WRITERS * OPS / 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // On this task's thread: the writers and the engine keep running on the others.
        tokio::task::block_in_place(|| cluster.restart()).unwrap();
        eprintln!("seed {seed}: PostgreSQL restarted");
    }
    for w in writers {
        w.await.unwrap();
    }
    if engine.any_finished() {
        let why = engine.stop().await;
        panic!("seed {seed}: a part of the engine ended during the run: {why:?}");
    }

    let idle = wait_until_idle(seed, &engine, &db.url).await;
    assert_no_echo_loop(seed, &engine, &idle, &tally, mode != Mode::RestartPostgres);
    if mode == Mode::ReplicationRole {
        let client = db.connect().await.unwrap();
        let markers: i64 = client
            .query_one("SELECT count(*) FROM pgrealm.marker", &[])
            .await
            .unwrap()
            .get(0);
        assert!(
            markers > 0,
            "seed {seed}: the engine's transactions carry no marker rows"
        );
    }

    // Idle means idle: nothing keeps going round.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = wait_until_idle(seed, &engine, &db.url).await;
    assert_eq!(
        later, idle,
        "seed {seed}: the engine kept writing after it was idle"
    );
    if mode == Mode::RestartPostgres {
        assert!(
            engine.pg_to_realm.reconnects.load(Ordering::Relaxed) > 0,
            "seed {seed}: PostgreSQL → realm did not notice the restart"
        );
    }
    stop_engine(engine, &db)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: the engine did not stop cleanly: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_both_sides_converge() {
    let cluster = tokio::task::block_in_place(PgCluster::shared);
    for seed in seeds(&[0x5EED_0001, 0x5EED_0002]) {
        converge(seed, cluster, Mode::Plain).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn converges_with_postgres_restarted_mid_run() {
    // Its own cluster: restarting the shared one would break the other tests.
    let cluster = tokio::task::block_in_place(|| PgCluster::start().unwrap());
    for seed in seeds(&[0x5EED_1001]) {
        converge(seed, &cluster, Mode::RestartPostgres).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn converges_as_a_replication_role_without_superuser() {
    let cluster = tokio::task::block_in_place(PgCluster::shared);
    for seed in seeds(&[0x5EED_3001]) {
        converge(seed, cluster, Mode::ReplicationRole).await;
    }
}

fn user_realm(user: Option<&str>) -> String {
    format!("/{}/myRealm", user.unwrap_or("(no user)"))
}

async fn wait_for_state(engine: &RunningEngine, url: &str, what: &str) -> State {
    let store = engine.store.clone();
    settle(
        Duration::from_secs(60),
        Duration::from_millis(300),
        async || {
            let realm_now = realm_state(&store);
            let pg_now = pg_state(url, Some("user_id"), user_realm).await;
            if realm_now == pg_now {
                Ok(realm_now)
            } else {
                Err(format!(
                    "{what}: the realms and PostgreSQL differ:\n{}",
                    diff(&realm_now, &pg_now)
                ))
            }
        },
    )
    .await
}

fn bus(id: i64, name: &str) -> Object {
    Object::new("Bus")
        .with("id", Value::Int(id))
        .with("name", Value::String(name.into()))
        .with("route", Value::Null)
}

fn buses_of(state: &State, user: &str) -> Vec<Object> {
    state
        .get(&user_realm(Some(user)))
        .map(|objects| objects.values().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_realms_over_one_table() {
    let cluster = tokio::task::block_in_place(PgCluster::shared);
    let db = cluster.fresh_database().unwrap();
    cluster
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    cluster
        .batch_execute(
            &db.name,
            "ALTER TABLE bus ADD COLUMN user_id text;
             INSERT INTO bus (id, name, user_id) VALUES (1, 'one', 'u1');",
        )
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let engine = start_engine(
        &db,
        data.path(),
        &[
            "sync.realm_path=/{user_id}/myRealm",
            "sync.realm_regex=^/[^/]+/myRealm$",
            "sync.initialize_realm_from_postgres=true",
        ],
    )
    .await;

    // The initial load routes the existing row to its user's realm.
    let state = wait_for_state(&engine, &db.url, "after the initial load").await;
    assert_eq!(buses_of(&state, "u1"), vec![bus(1, "one")]);

    // Rows written in PostgreSQL arrive in their users' realms.
    cluster
        .batch_execute(
            &db.name,
            "INSERT INTO bus (id, name, user_id) VALUES (2, 'two', 'u2'), (3, 'three', 'u3')",
        )
        .unwrap();
    let state = wait_for_state(&engine, &db.url, "after inserting rows for u2 and u3").await;
    assert_eq!(buses_of(&state, "u2"), vec![bus(2, "two")]);
    assert_eq!(buses_of(&state, "u3"), vec![bus(3, "three")]);

    // An object written in a user's realm lands in PostgreSQL with that user's id.
    let u2 = RealmPath::parse("/u2/myRealm").unwrap();
    let mut tx = engine.store.begin_write("app");
    tx.put_object(&u2, bus(10, "ten")).unwrap();
    tokio::task::spawn_blocking(move || tx.commit())
        .await
        .unwrap()
        .unwrap();
    let pg = testing::connect(&db.url).await.unwrap();
    let user = settle(
        Duration::from_secs(60),
        Duration::from_millis(200),
        async || match pg
            .query_opt("SELECT user_id, name FROM bus WHERE id = 10", &[])
            .await
            .unwrap()
        {
            Some(row) => Ok((row.get::<_, Option<String>>(0), row.get::<_, String>(1))),
            None => Err("bus 10, written in /u2/myRealm, is not in PostgreSQL".to_owned()),
        },
    )
    .await;
    assert_eq!(user, (Some("u2".to_owned()), "ten".to_owned()));

    // A row moved to another user moves between realms.
    cluster
        .batch_execute(&db.name, "UPDATE bus SET user_id = 'u3' WHERE id = 1")
        .unwrap();
    let state = wait_for_state(&engine, &db.url, "after moving bus 1 from u1 to u3").await;
    assert_eq!(buses_of(&state, "u1"), Vec::<Object>::new());
    assert_eq!(buses_of(&state, "u3"), vec![bus(1, "one"), bus(3, "three")]);

    // Changing the moved object in its new realm updates the row and keeps its user.
    let u3 = RealmPath::parse("/u3/myRealm").unwrap();
    let mut tx = engine.store.begin_write("app");
    tx.put_object(&u3, bus(1, "one, now u3's")).unwrap();
    tokio::task::spawn_blocking(move || tx.commit())
        .await
        .unwrap()
        .unwrap();
    let row = settle(
        Duration::from_secs(60),
        Duration::from_millis(200),
        async || {
            let row = pg
                .query_one("SELECT user_id, name FROM bus WHERE id = 1", &[])
                .await
                .unwrap();
            let now = (row.get::<_, Option<String>>(0), row.get::<_, String>(1));
            if now.1 == "one, now u3's" {
                Ok(now)
            } else {
                Err(format!("bus 1 in PostgreSQL is still {now:?}"))
            }
        },
    )
    .await;
    assert_eq!(row.0.as_deref(), Some("u3"));
    let state = wait_for_state(&engine, &db.url, "at the end").await;
    assert_eq!(state.len(), 2, "only u2 and u3 hold objects now: {state:?}");
    stop_engine(engine, &db).await.unwrap();
}

/// PostgreSQL edits a route's list while the realm deletes and recreates that route, over and
/// over: PostgreSQL → realm must neither stop nor leave the two sides apart, whichever commit
/// lands between its snapshot and its store commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_edits_in_postgres_race_deletes_of_their_owner_in_the_realm() {
    let cluster = tokio::task::block_in_place(PgCluster::shared);
    let db = cluster.fresh_database().unwrap();
    cluster
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    cluster
        .batch_execute(
            &db.name,
            "INSERT INTO route (id, name) VALUES ('r1', 'one');
             INSERT INTO schedule (id, day, departure) VALUES ('s1', 'Monday', '2026-11-30 07:00:00+00');",
        )
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let engine = start_engine(
        &db,
        data.path(),
        &["sync.initialize_realm_from_postgres=true"],
    )
    .await;
    let realm = RealmPath::parse(REALM).unwrap();
    const ROUNDS: usize = 150;

    let store = engine.store.clone();
    let app = tokio::spawn(async move {
        for i in 0..ROUNDS {
            let mut tx = store.begin_write("app");
            if i % 2 == 0 {
                tx.delete_object(&realm, "Route", "r1".into()).unwrap();
            } else {
                tx.put_object(
                    &realm,
                    Object::new("Route")
                        .with("id", Value::String("r1".into()))
                        .with("name", Value::String(format!("one {i}"))),
                )
                .unwrap();
            }
            tokio::task::spawn_blocking(move || tx.commit())
                .await
                .unwrap()
                .unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let url = db.url.clone();
    let pg = tokio::spawn(async move {
        let mut client = testing::connect(&url).await.unwrap();
        for i in 0..ROUNDS {
            let sql = if i % 3 == 2 {
                "DELETE FROM route_schedules WHERE oid = 'r1'"
            } else {
                "INSERT INTO route_schedules (oid, idx, target) \
                 SELECT 'r1', coalesce(max(idx) + 1, 0), 's1' FROM route_schedules WHERE oid = 'r1'"
            };
            pg_write!(&mut client, sql).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    app.await.unwrap();
    pg.await.unwrap();
    if engine.any_finished() {
        let why = engine.stop().await;
        panic!("a part of the engine ended: {why:?}");
    }
    let store = engine.store.clone();
    let url = db.url.clone();
    settle(SETTLE, Duration::from_millis(500), async || {
        let realm_now = realm_state(&store);
        let pg_now = pg_state(&url, None, |_| REALM.to_owned()).await;
        if realm_now == pg_now {
            Ok(realm_now)
        } else {
            Err(format!(
                "the realm and PostgreSQL differ:\n{}",
                diff(&realm_now, &pg_now)
            ))
        }
    })
    .await;
    stop_engine(engine, &db).await.unwrap();
}

const USERS: &[&str] = &["u1", "u2", "u3"];

/// Per-user realms under concurrent writers: PostgreSQL moves buses between users and the
/// realms write the same bus ids in different users' realms; once idle, every row is in exactly
/// its user's realm and every object is a row of that user.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_user_realms_converge_under_concurrent_writers() {
    let cluster = tokio::task::block_in_place(PgCluster::shared);
    for seed in seeds(&[0x5EED_4001]) {
        eprintln!("seed {seed}: per-user realms under concurrent writers");
        let db = cluster.fresh_database().unwrap();
        cluster
            .batch_execute(&db.name, transit::Schema::DDL)
            .unwrap();
        cluster
            .batch_execute(&db.name, "ALTER TABLE bus ADD COLUMN user_id text NOT NULL")
            .unwrap();
        let data = tempfile::tempdir().unwrap();
        let engine = start_engine(
            &db,
            data.path(),
            &[
                "sync.realm_path=/{user_id}/myRealm",
                "sync.realm_regex=^/[^/]+/myRealm$",
            ],
        )
        .await;
        let mut writers = Vec::new();
        for n in 0..WRITERS {
            let store = engine.store.clone();
            let mut rng = Rng::fork(seed, n);
            writers.push(tokio::spawn(async move {
                for _ in 0..OPS {
                    let user = USERS[rng.below(USERS.len() as u64) as usize];
                    let realm = RealmPath::parse(&user_realm(Some(user))).unwrap();
                    let id = rng.below(5) as i64;
                    let mut tx = store.begin_write("app");
                    if rng.percent(25) {
                        tx.delete_object(&realm, "Bus", id.into()).unwrap();
                    } else {
                        tx.put_object(&realm, bus(id, &format!("n{}", rng.below(1000))))
                            .unwrap();
                    }
                    tokio::task::spawn_blocking(move || tx.commit())
                        .await
                        .unwrap()
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(rng.below(4))).await;
                }
            }));
            let url = db.url.clone();
            let mut rng = Rng::fork(seed, 100 + n);
            writers.push(tokio::spawn(async move {
                let mut client = connect_writer!(&url).await.unwrap();
                for _ in 0..OPS {
                    let user = USERS[rng.below(USERS.len() as u64) as usize];
                    let id = rng.below(5);
                    let name = rng.below(1000);
                    let sql = match rng.below(4) {
                        0 => format!(
                            "INSERT INTO bus (id, name, user_id) VALUES ({id}, 'n{name}', '{user}') \
                             ON CONFLICT (id) DO UPDATE SET name = excluded.name, user_id = excluded.user_id"
                        ),
                        1 => format!("UPDATE bus SET user_id = '{user}' WHERE id = {id}"),
                        2 => format!("UPDATE bus SET name = 'n{name}' WHERE id = {id}"),
                        _ => format!("DELETE FROM bus WHERE id = {id}"),
                    };
                    pg_write!(&mut client, &sql).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(rng.below(4))).await;
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        if engine.any_finished() {
            let why = engine.stop().await;
            panic!("seed {seed}: a part of the engine ended during the run: {why:?}");
        }
        let state = wait_for_state(&engine, &db.url, &format!("seed {seed}")).await;
        eprintln!(
            "seed {seed}: buses per realm at the end: {:?}",
            state.iter().map(|(r, o)| (r, o.len())).collect::<Vec<_>>()
        );
        stop_engine(engine, &db).await.unwrap();
    }
}
