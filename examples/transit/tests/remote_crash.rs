//! Remote mode under crashes: `transit serve` keeps the realms, `transit run` with `realm.url`
//! syncs them with PostgreSQL and is SIGKILLed and restarted mid-run under writers on both sides
//! (realm writes through the server's API, PostgreSQL writes through SQL). It still converges,
//! and nothing is applied twice: each commit and its LSN checkpoint land on the server together
//! or not at all.
//!
//! Seeds print first; `PGREALM_CONVERGENCE_SEEDS` picks seeds, `PGREALM_CRASH_ROUNDS` the number
//! of kills per seed.

mod engine_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_support::*;
use pgrealm::runtime::client::{Client, ClientError, RemoteRealm};
use pgrealm::runtime::testing::{PgCluster, TestDb};
use pgrealm::runtime::{Store, StoreOptions};
use pgrealm::RealmObject;

const REALM: &str = "/myRealm";
const ADMIN_TOKEN: &str = "remote-crash-test-admin-token";
const WRITERS: u64 = 2;

/// A child process killed (SIGKILL) when dropped, so a failing test leaves none behind.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server's and the engine's directories, the server's port and the engine's log.
struct Setup {
    dir: tempfile::TempDir,
    port: u16,
}

impl Setup {
    fn new(db: &TestDb) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let slot = slot_name(&db.name);
        std::fs::create_dir_all(dir.path().join("engine")).unwrap();
        std::fs::write(
            dir.path().join("engine/pgrealm.toml"),
            format!(
                "[postgres]\nurl = \"{}\"\nslot = \"{slot}\"\npublication = \"{slot}\"\n\n\
                 [realm]\nurl = \"http://127.0.0.1:{port}\"\nlisten = \"127.0.0.1:0\"\n\n\
                 [sync]\ncreate_postgres_db = false\n",
                db.url,
            ),
        )
        .unwrap();
        Setup { dir, port }
    }

    fn server_data(&self) -> PathBuf {
        self.dir.path().join("server")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("run.log")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn spawn(&self, dir: &Path, args: &[&str], log: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_transit"))
            .args(args)
            .current_dir(dir)
            .env_remove("PGREALM_POSTGRES_URL")
            .env_remove("PGREALM_REALM_URL")
            .env("PGREALM_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap()
    }

    /// `transit serve`, waited for until it answers.
    async fn serve(&self) -> Process {
        let listen = format!("realm.listen=127.0.0.1:{}", self.port);
        let data = format!("realm.data_dir={}", self.server_data().display());
        let child = Process(self.spawn(
            self.dir.path(),
            &["--set", &listen, "--set", &data, "serve"],
            &self.dir.path().join("serve.log"),
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !healthy(self.port) {
            assert!(Instant::now() < deadline, "serve did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child
    }

    /// `transit run` against the server, waited for until both directions are set up.
    async fn run(&self) -> Process {
        let ready_before = self.log_text().matches("PostgreSQL → realm ready").count();
        let mut child = Process(self.spawn(
            &self.dir.path().join("engine"),
            &["--config", "pgrealm.toml", "run"],
            &self.log(),
        ));
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.log_text().matches("PostgreSQL → realm ready").count() == ready_before {
            if let Some(status) = child.0.try_wait().unwrap() {
                panic!(
                    "transit run exited ({status}) during setup:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "transit run was not set up within 60 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child
    }
}

/// Writes through the server's API until `stop`. The server stays up, but a write may still be
/// refused (a list edit racing a delete leaves a partial object); that is counted, not retried.
async fn api_writer(remote: RemoteRealm, mut rng: Rng, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    while !stop.load(Ordering::Relaxed) {
        let mut ops = Vec::new();
        for op in realm_ops(&mut rng) {
            match op {
                RealmOp::EditList(route) => {
                    let current = remote.get::<transit::Route>(route.clone()).await.unwrap();
                    ops.push(RealmOp::Put(edit_list(
                        &mut rng,
                        &route,
                        current.map(|r| r.to_object()).as_ref(),
                    )));
                }
                other => ops.push(other),
            }
        }
        let written = remote
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
            .await;
        match written {
            Ok(_) => tally.api_ok.fetch_add(1, Ordering::Relaxed),
            Err(ClientError::Api { status: 400, .. }) => {
                tally.api_not_ok.fetch_add(1, Ordering::Relaxed)
            }
            Err(e) => panic!("the object server failed: {e}"),
        };
        tokio::time::sleep(Duration::from_millis(rng.below(5))).await;
    }
}

async fn crash_run(seed: u64, rounds: u64) {
    eprintln!("seed {seed}: {rounds} SIGKILLs of a remote-mode transit run under writers");
    let cluster = tokio::task::block_in_place(PgCluster::shared);
    let db = cluster.fresh_database().unwrap();
    cluster
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    install_counters(cluster, &db.name);
    let setup = Setup::new(&db);
    let server = setup.serve().await;
    let mut engine = setup.run().await;
    let client = Client::new(
        &format!("http://127.0.0.1:{}", setup.port),
        ADMIN_TOKEN,
        schema().clone(),
    );
    let remote = client.realm(REALM);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let writers = spawn_writers(WRITERS, api_writer, &remote, &db.url, seed, &stop, &tally);
    let mut rng = Rng::fork(seed, 1000);
    for round in 1..=rounds {
        tokio::time::sleep(Duration::from_millis(400 + rng.below(800))).await;
        drop(engine);
        eprintln!(
            "seed {seed}: SIGKILL {round} after {} API writes and {} PostgreSQL commits",
            tally.api_ok.load(Ordering::Relaxed),
            tally.pg_commits.load(Ordering::Relaxed)
        );
        engine = setup.run().await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        tally.api_ok.load(Ordering::Relaxed) > 0 && tally.pg_commits.load(Ordering::Relaxed) > 0,
        "seed {seed}: the writers wrote nothing"
    );

    let counts = settle(
        Duration::from_secs(90),
        Duration::from_millis(500),
        async || {
            if let Some(status) = engine.0.try_wait().unwrap() {
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
            Ok(pg_counts(&db.url).await)
        },
    )
    .await;
    drop(engine);
    drop(server);

    // No transaction was applied twice across the kills, judged from the server's store.
    let store =
        Store::open_compiled::<transit::Schema>(setup.server_data(), StoreOptions::default())
            .unwrap();
    assert_applied_once(seed, &store, REALM, &counts, tally.writes());
    let client = db.connect().await.unwrap();
    let _ = client
        .execute(
            "SELECT pg_drop_replication_slot($1)",
            &[&slot_name(&db.name)],
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remote_mode_engine_sigkilled_and_restarted_converges_without_repeats() {
    let rounds = env_number("PGREALM_CRASH_ROUNDS", 3);
    for seed in seeds(&[0x5EED_2006]) {
        crash_run(seed, rounds).await;
    }
}
