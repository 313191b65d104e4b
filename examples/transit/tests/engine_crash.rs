//! `transit run` as an operator runs it, as a child process: SIGKILLed and restarted mid-run
//! under writers on both sides (realm writes through the object server's API, PostgreSQL writes
//! through SQL), it still converges, and nothing is applied twice; SIGINT and SIGTERM stop it
//! cleanly with exit 0.
//!
//! Seeds print first; `PGREALM_CONVERGENCE_SEEDS` picks seeds, `PGREALM_CRASH_ROUNDS` the number
//! of kills per seed.

mod engine_support;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_support::*;
use pgrealm::runtime::client::{Client, RemoteRealm};
use pgrealm::runtime::testing::{PgCluster, TestDb};
use pgrealm::runtime::{Store, StoreOptions};
use pgrealm::{Object, RealmObject, Value};

const REALM: &str = "/myRealm";
const ADMIN_TOKEN: &str = "engine-crash-test-admin-token";
const WRITERS: u64 = 2;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `transit run` setup: a configuration file, a data directory, a port and a log file that
/// every start of the child appends to.
struct Setup {
    dir: tempfile::TempDir,
    port: u16,
}

impl Setup {
    fn new(db: &TestDb) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let slot = slot_name(&db.name);
        std::fs::write(
            dir.path().join("pgrealm.toml"),
            format!(
                "[postgres]\nurl = \"{}\"\nslot = \"{slot}\"\npublication = \"{slot}\"\n\n\
                 [realm]\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n\n\
                 [sync]\ncreate_postgres_db = false\n",
                db.url,
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        Setup { dir, port }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("transit.log")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Start `transit run` and wait until its object server answers (it listens only once both
    /// directions are set up).
    async fn start(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_transit"))
            .args(["--config", "pgrealm.toml", "run"])
            .current_dir(self.dir.path())
            .env_remove("PGREALM_POSTGRES_URL")
            .env("PGREALM_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "transit run exited ({status}) before listening:\n{}",
                    self.log_text()
                );
            }
            if healthy(self.port) {
                return child;
            }
            assert!(
                Instant::now() < deadline,
                "transit run did not listen within 60 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Send `signal` (`INT`, `TERM`) and wait for the exit.
async fn signal_and_wait(child: &mut Child, signal: &str, setup: &Setup) -> ExitStatus {
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "transit run did not stop within 30 s of SIG{signal}:\n{}",
                setup.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes through the API until `stop`; a write refused or lost with the engine is counted and
/// not retried (whether it committed is unknown, and need not be known: the check compares
/// whatever both sides hold at the end).
async fn api_writer(remote: RemoteRealm, mut rng: Rng, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    while !stop.load(Ordering::Relaxed) {
        let mut ops = Vec::new();
        let mut lost = false;
        for op in realm_ops(&mut rng) {
            match op {
                RealmOp::EditList(route) => match remote.get::<transit::Route>(route.clone()).await
                {
                    Ok(current) => ops.push(RealmOp::Put(edit_list(
                        &mut rng,
                        &route,
                        current.map(|r| r.to_object()).as_ref(),
                    ))),
                    Err(_) => {
                        lost = true;
                        break;
                    }
                },
                other => ops.push(other),
            }
        }
        let written = !lost
            && remote
                .write(|tx| {
                    for op in &ops {
                        match op {
                            RealmOp::Put(object) => {
                                tx.put_object(object);
                            }
                            RealmOp::Delete(class, key) => delete_dynamic(tx, class, key),
                            RealmOp::EditList(_) => unreachable!("resolved above"),
                        }
                    }
                })
                .await
                .is_ok();
        if written {
            tally.api_ok.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(rng.below(5))).await;
        } else {
            tally.api_not_ok.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn drop_slot(db: &TestDb) {
    let client = db.connect().await.unwrap();
    let _ = client
        .execute(
            "SELECT pg_drop_replication_slot($1)",
            &[&slot_name(&db.name)],
        )
        .await;
}

async fn crash_run(seed: u64, rounds: u64) {
    eprintln!("seed {seed}: {rounds} SIGKILLs of transit run under writers on both sides");
    let cluster = tokio::task::block_in_place(PgCluster::shared);
    let db = cluster.fresh_database().unwrap();
    cluster
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    install_counters(cluster, &db.name);
    let setup = Setup::new(&db);
    let mut child = setup.start().await;
    let client = Client::new(&setup.base_url(), ADMIN_TOKEN, schema().clone());
    let remote = client.realm(REALM);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let writers = spawn_writers(WRITERS, api_writer, &remote, &db.url, seed, &stop, &tally);
    let mut rng = Rng::fork(seed, 1000);
    for round in 1..=rounds {
        tokio::time::sleep(Duration::from_millis(400 + rng.below(800))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!(
            "seed {seed}: SIGKILL {round} after {} API writes and {} PostgreSQL commits",
            tally.api_ok.load(Ordering::Relaxed),
            tally.pg_commits.load(Ordering::Relaxed)
        );
        child = setup.start().await;
    }
    // Writers run on after the last restart too.
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        tally.api_ok.load(Ordering::Relaxed) > 0 && tally.pg_commits.load(Ordering::Relaxed) > 0,
        "seed {seed}: the writers wrote nothing"
    );

    let live = settle(
        Duration::from_secs(90),
        Duration::from_millis(500),
        async || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "seed {seed}: transit run exited ({status}) after the writers stopped:\n{}",
                    setup.log_text()
                );
            }
            let realm_now = api_state(&remote, REALM).await?;
            let pg_now = pg_state(&db.url, None, |_| REALM.to_owned()).await;
            if realm_now != pg_now {
                return Err(format!(
                    "seed {seed}: the realm (through the API) and PostgreSQL differ:\n{}",
                    diff(&realm_now, &pg_now)
                ));
            }
            Ok((realm_now, pg_counts(&db.url).await))
        },
    )
    .await;

    let status = signal_and_wait(&mut child, "TERM", &setup).await;
    assert!(
        status.success(),
        "seed {seed}: {status}:\n{}",
        setup.log_text()
    );

    // What is on disk equals PostgreSQL, and no transaction was applied twice across the kills.
    let store =
        Store::open_compiled::<transit::Schema>(setup.data(), StoreOptions::default()).unwrap();
    let on_disk = realm_state(&store);
    assert_eq!(
        on_disk, live.0,
        "seed {seed}: the store on disk differs from what the API showed"
    );
    let counts = live.1;
    assert_applied_once(seed, &store, REALM, &counts, tally.writes());
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn converges_with_the_engine_sigkilled_and_restarted() {
    let rounds = env_number("PGREALM_CRASH_ROUNDS", 3);
    for seed in seeds(&[0x5EED_2001]) {
        crash_run(seed, rounds).await;
    }
}

fn bus(id: i64, name: &str) -> Object {
    Object::new("Bus")
        .with("id", Value::Int(id))
        .with("name", Value::String(name.into()))
        .with("route", Value::Null)
}

async fn wait_for_row(db: &TestDb, sql: &str) -> String {
    let client = db.connect().await.unwrap();
    settle(
        Duration::from_secs(60),
        Duration::from_millis(100),
        async || match client.query_opt(sql, &[]).await.unwrap() {
            Some(row) => Ok(row.get::<_, String>(0)),
            None => Err(format!("no row for {sql}")),
        },
    )
    .await
}

async fn stop_with(signal: &str, setup: &Setup, db: &TestDb, id: i64) {
    let mut child = setup.start().await;
    let remote = Client::new(&setup.base_url(), ADMIN_TOKEN, schema().clone()).realm(REALM);
    // Both directions run: a write through the API reaches PostgreSQL, a row written in
    // PostgreSQL reaches the realm.
    remote
        .write(|tx| {
            tx.put_object(&bus(id, "from the API"));
        })
        .await
        .unwrap();
    let name = wait_for_row(db, &format!("SELECT name FROM bus WHERE id = {id}")).await;
    assert_eq!(name, "from the API");
    db.connect()
        .await
        .unwrap()
        .batch_execute(&format!(
            "INSERT INTO bus (id, name) VALUES ({}, 'from PostgreSQL')",
            id + 100
        ))
        .await
        .unwrap();
    settle(
        Duration::from_secs(60),
        Duration::from_millis(100),
        async || match remote.get::<transit::Bus>(id + 100).await {
            Ok(Some(b)) => Ok(b.name),
            other => Err(format!("bus {} not in the realm yet: {other:?}", id + 100)),
        },
    )
    .await;

    let status = signal_and_wait(&mut child, signal, setup).await;
    let log = setup.log_text();
    assert_eq!(status.code(), Some(0), "SIG{signal}: {status}:\n{log}");
    assert!(log.contains("stopped cleanly"), "SIG{signal}:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_and_sigterm_stop_run_cleanly() {
    let cluster = tokio::task::block_in_place(PgCluster::shared);
    let db = cluster.fresh_database().unwrap();
    cluster
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    let setup = Setup::new(&db);
    stop_with("INT", &setup, &db, 1).await;
    stop_with("TERM", &setup, &db, 2).await;
    // After both stops, the store on disk equals PostgreSQL.
    let store =
        Store::open_compiled::<transit::Schema>(setup.data(), StoreOptions::default()).unwrap();
    let pg = pg_state(&db.url, None, |_| REALM.to_owned()).await;
    let realm = realm_state(&store);
    assert_eq!(realm, pg, "{}", diff(&realm, &pg));
    assert_eq!(realm[REALM].len(), 4);
    drop_slot(&db).await;
}
