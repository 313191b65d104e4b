//! Durability: a child process commits in a loop, printing each acknowledged commit, and is
//! killed with SIGKILL at random points. After each kill the store must hold every acknowledged
//! commit, no partial commit, and gapless per-realm versions.
//!
//! A second test does the same with several writer threads whose commits share fsyncs (group
//! commit): each thread's acknowledged commits must survive too.
//!
//! The child is this test binary run again with `PGREALM_STORE_CRASH_WRITER` set. Rounds default
//! to 20; set `PGREALM_CRASH_ROUNDS=1000` for a long run, and `PGREALM_CRASH_SEED` to repeat one.

mod store_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use pgrealm_runtime::{RealmPath, Store, StoreOptions};
use store_support::{bus, schema, Bus, Rng};

const WRITER_ENV: &str = "PGREALM_STORE_CRASH_WRITER";
const TEST_NAME: &str = "acknowledged_commits_survive_sigkill";
const GROUP_WRITER_ENV: &str = "PGREALM_STORE_CRASH_GROUP_WRITER";
const GROUP_TEST_NAME: &str = "acknowledged_grouped_commits_survive_sigkill";
const GROUP_THREADS: usize = 4;

fn realms() -> [RealmPath; 2] {
    [
        RealmPath::parse("/crash/a").unwrap(),
        RealmPath::parse("/crash/b").unwrap(),
    ]
}

fn last_commit(store: &Store) -> u64 {
    last_commit_of(store, "n")
}

fn last_commit_of(store: &Store, key: &str) -> u64 {
    store
        .metadata(key)
        .unwrap()
        .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

/// The child: commit n = last+1, last+2, … forever, each putting bus n into both realms with the
/// counter as metadata, and print `ack n` once the commit returned.
fn writer(dir: &str) -> ! {
    let store = Store::open(dir, schema(), StoreOptions::default()).unwrap();
    let mut n = last_commit(&store);
    loop {
        n += 1;
        let mut tx = store.begin_write("app");
        for realm in realms() {
            let mut b = bus(n as i64, "crash");
            b.tags = (0..n % 4).map(|i| format!("t{i}")).collect();
            tx.realm(&realm).put(&b).unwrap();
        }
        tx.set_metadata("n", n.to_be_bytes().to_vec());
        tx.commit().unwrap();
        println!("ack {n}");
    }
}

#[test]
fn acknowledged_commits_survive_sigkill() {
    if let Ok(dir) = std::env::var(WRITER_ENV) {
        writer(&dir);
    }
    let rounds: u32 = std::env::var("PGREALM_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut rng = Rng::from_env("PGREALM_CRASH_SEED");
    let dir = tempfile::tempdir().unwrap();
    let mut acked_total = 0;
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(WRITER_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("ack ") {
                    let _ = tx.send(n.parse::<u64>().unwrap());
                }
            }
        });
        // Kill after a random number of acknowledged commits (0 kills it while it may still be
        // opening the file), plus a random sub-commit delay.
        let wanted = rng.below(40);
        let (mut acked, mut last_acked) = (0, 0);
        while acked < wanted {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(n) => (acked, last_acked) = (acked + 1, n),
                Err(e) => panic!("round {round}: the writer stopped acknowledging: {e}"),
            }
        }
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let last_acked = rx.try_iter().fold(last_acked, u64::max);

        let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
        let n = last_commit(&store);
        assert!(
            n >= last_acked,
            "round {round}: acknowledged {last_acked}, stored {n}"
        );
        for realm in realms() {
            let Some(view) = store.realm(&realm).unwrap() else {
                assert_eq!(n, 0, "round {round}: {realm} missing after {n} commits");
                continue;
            };
            // Every commit made one version of each realm: versions 1..=n, nothing partial.
            assert_eq!(view.version(), n, "round {round}: {realm}");
            let ids: Vec<i64> = view.all::<Bus>().unwrap().iter().map(|b| b.id).collect();
            assert_eq!(
                ids,
                (1..=n as i64).collect::<Vec<_>>(),
                "round {round}: {realm}"
            );
            let versions: Vec<u64> = store
                .changes(&realm, 0, usize::MAX)
                .unwrap()
                .iter()
                .map(|c| c.version)
                .collect();
            assert_eq!(
                versions,
                (1..=n).collect::<Vec<_>>(),
                "round {round}: {realm}"
            );
        }
        acked_total = n;
    }
    eprintln!("{rounds} kills, {acked_total} commits survived");
}

fn group_realm(thread: usize) -> RealmPath {
    RealmPath::parse(&format!("/crash/group{thread}")).unwrap()
}

/// The child of the grouped test: each thread t commits n = last+1, last+2, … forever, each
/// putting bus n into its own realm with its counter as metadata `n{t}`, and prints `ack t n`
/// once the commit returned.
fn group_writer(dir: &str) -> ! {
    let store = Store::open(dir, schema(), StoreOptions::default()).unwrap();
    for t in 0..GROUP_THREADS {
        let store = store.clone();
        std::thread::spawn(move || {
            let key = format!("n{t}");
            let mut n = last_commit_of(&store, &key);
            loop {
                n += 1;
                let mut tx = store.begin_write("app");
                let mut b = bus(n as i64, "crash");
                b.tags = (0..n % 4).map(|i| format!("t{i}")).collect();
                tx.realm(&group_realm(t)).put(&b).unwrap();
                tx.set_metadata(key.clone(), n.to_be_bytes().to_vec());
                tx.commit().unwrap();
                println!("ack {t} {n}");
            }
        });
    }
    loop {
        std::thread::park();
    }
}

#[test]
fn acknowledged_grouped_commits_survive_sigkill() {
    if let Ok(dir) = std::env::var(GROUP_WRITER_ENV) {
        group_writer(&dir);
    }
    let rounds: u32 = std::env::var("PGREALM_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut rng = Rng::from_env("PGREALM_CRASH_SEED");
    let dir = tempfile::tempdir().unwrap();
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                GROUP_TEST_NAME,
                "--nocapture",
                "--test-threads=1",
            ])
            .env(GROUP_WRITER_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut words = line.split(' ');
                if words.next() == Some("ack") {
                    let t: usize = words.next().unwrap().parse().unwrap();
                    let n: u64 = words.next().unwrap().parse().unwrap();
                    let _ = tx.send((t, n));
                }
            }
        });
        let wanted = rng.below(120);
        let mut acked = 0;
        let mut last_acked = [0u64; GROUP_THREADS];
        while acked < wanted {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok((t, n)) => {
                    acked += 1;
                    last_acked[t] = last_acked[t].max(n);
                }
                Err(e) => panic!("round {round}: the writers stopped acknowledging: {e}"),
            }
        }
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        for (t, n) in rx.try_iter() {
            last_acked[t] = last_acked[t].max(n);
        }

        let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
        for (t, last_acked) in last_acked.iter().enumerate() {
            let n = last_commit_of(&store, &format!("n{t}"));
            assert!(
                n >= *last_acked,
                "round {round}: thread {t} acknowledged {last_acked}, stored {n}"
            );
            let realm = group_realm(t);
            let Some(view) = store.realm(&realm).unwrap() else {
                assert_eq!(n, 0, "round {round}: {realm} missing after {n} commits");
                continue;
            };
            assert_eq!(view.version(), n, "round {round}: {realm}");
            let ids: Vec<i64> = view.all::<Bus>().unwrap().iter().map(|b| b.id).collect();
            assert_eq!(
                ids,
                (1..=n as i64).collect::<Vec<_>>(),
                "round {round}: {realm}"
            );
        }
    }
    eprintln!("{rounds} kills of {GROUP_THREADS} writer threads survived");
}
