//! Both directions side by side on per-user realms `/{user_id}/myRealm` over one table: rows
//! moved between users from either side, lists edited from either side, and a seeded
//! randomized run with writers on both sides colliding on a small key space, after which every
//! realm equals PostgreSQL and the engine's own transactions came back at most once each.
//! Seeds: `PGREALM_CONVERGENCE_SEEDS` (how many, default 2) from `PGREALM_CONVERGENCE_SEED`.

mod realm2pg_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrealm_runtime::metrics::Metrics;
use pgrealm_runtime::replication::PgConnectOptions;
use pgrealm_runtime::sync::pg_to_realm::{PgToRealm, PgToRealmOptions, PgToRealmStats, Progress};
use pgrealm_runtime::sync::realm_to_pg::{RealmMapping, RealmToPgOptions, BOOKKEEPING_DDL};
use pgrealm_runtime::template::PathTemplate;
use pgrealm_schema::{
    Class, IntWidth, ListItem, Object, PrimaryKey, Property, PropertyType, ScalarType, Schema,
    Value,
};
use realm2pg_support::*;
use regex::Regex;
use tokio::sync::watch;

const USERS: [&str; 3] = ["u1", "u2", "u3"];

fn items_schema() -> Schema {
    Schema::new(vec![Class::new("Item")
        .property(Property::new("id", int()).primary_key())
        .property(Property::new("title", text()))
        .property(Property::new(
            "tags",
            PropertyType::List(ListItem::Scalar(ScalarType::Int(IntWidth::I64))),
        ))])
}

fn item(id: i64, title: &str, tags: &[i64]) -> Object {
    Object::new("Item")
        .with("id", Value::Int(id))
        .with("title", Value::String(title.into()))
        .with(
            "tags",
            Value::List(tags.iter().map(|t| Value::Int(*t)).collect()),
        )
}

fn realm_of(user: &str) -> String {
    format!("/{user}/myRealm")
}

/// Both directions running on one store and one database.
struct TwoWay {
    env: Env,
    stats: Arc<PgToRealmStats>,
    sql_commits: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TwoWay {
    async fn start(case: &str) -> TwoWay {
        let mut env = Env::new(items_schema()).await;
        env.client
            .batch_execute("ALTER TABLE item ADD COLUMN user_id text NOT NULL;")
            .await
            .unwrap();
        env.client.batch_execute(BOOKKEEPING_DDL).await.unwrap();
        let sql_commits = Arc::new(AtomicU64::new(0));
        let counter = sql_commits.clone();
        let options = RealmToPgOptions {
            realm_regex: Regex::new("^/[^/]+/myRealm$").unwrap(),
            mapping: RealmMapping::template(PathTemplate::parse("/{user_id}/myRealm").unwrap()),
            ..RealmToPgOptions::default()
        };
        env.followed = options.realm_regex.clone();
        let engine = pgrealm_runtime::sync::realm_to_pg::RealmToPg::new(
            env.store.clone(),
            &env.db.url,
            options,
        )
        .unwrap()
        .on_commit(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let mut p2r_options = PgToRealmOptions::new(
            format!("r2p_twoway_{case}"),
            format!("r2p_twoway_{case}"),
            PgToRealmOptions::template("/{user_id}/myRealm").unwrap(),
        );
        p2r_options.progress = Progress::Quiet;
        let p2r = PgToRealm::new(
            PgConnectOptions::from_url(&env.db.url).unwrap(),
            p2r_options,
            env.store.clone(),
            Arc::new(Metrics::default()),
        );
        p2r.setup().await.unwrap();
        let stats = p2r.stats();
        let (stop, shutdown) = watch::channel(false);
        let shutdown2 = shutdown.clone();
        let task = tokio::spawn(async move {
            let (a, b) = tokio::join!(engine.run(shutdown), p2r.run(shutdown2));
            a.unwrap();
            b.unwrap();
        });
        TwoWay {
            env,
            stats,
            sql_commits,
            stop,
            task,
        }
    }

    /// Wait until every user's realm equals its rows in PostgreSQL, twice in a row 200 ms apart
    /// (so nothing was still in flight), and no item is in two realms.
    async fn converged(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut stable = 0;
        loop {
            let mut problem = None;
            for user in USERS {
                if let Err(e) = realm_matches_postgres(
                    &self.env.store,
                    &self.env.client,
                    &realm_of(user),
                    "Item",
                    Some(&format!("user_id = '{user}'")),
                )
                .await
                {
                    problem = Some(e);
                    break;
                }
            }
            if problem.is_none() {
                stable += 1;
                if stable == 2 {
                    return;
                }
            } else {
                stable = 0;
            }
            assert!(
                Instant::now() < deadline,
                "the sides did not converge within 60 s: {}",
                problem.unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("both directions stop within 30 s")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_and_lists_move_between_users_from_either_side() {
    let two = TwoWay::start("moves").await;
    let store = &two.env.store;
    for (u, user) in USERS.into_iter().enumerate() {
        commit(store, |tx| {
            for i in 0..3 {
                let id = 10 * u as i64 + i;
                tx.put_object(
                    &path(&realm_of(user)),
                    item(id, &format!("{user} {i}"), &[i, 1]),
                )
                .unwrap();
            }
        });
    }
    two.converged().await;

    // PostgreSQL moves item 1 from u1 to u2 and edits its list.
    two.env
        .client
        .batch_execute(
            "BEGIN; UPDATE item SET user_id = 'u2', title = 'moved by sql' WHERE id = 1;
             UPDATE item_tags SET idx = idx + 10 WHERE oid = 1;
             UPDATE item_tags SET idx = idx - 9 WHERE oid = 1;
             INSERT INTO item_tags (oid, idx, value) VALUES (1, 0, 42); COMMIT;",
        )
        .await
        .unwrap();
    two.converged().await;
    let u2 = store.realm(&path("/u2/myRealm")).unwrap().unwrap();
    let moved = u2.object("Item", &PrimaryKey::Int(1)).unwrap().unwrap();
    assert_eq!(
        moved.get("tags"),
        Some(&Value::List(vec![
            Value::Int(42),
            Value::Int(1),
            Value::Int(1)
        ]))
    );
    assert!(store
        .realm(&path("/u1/myRealm"))
        .unwrap()
        .unwrap()
        .object("Item", &PrimaryKey::Int(1))
        .unwrap()
        .is_none());

    // The realm side moves item 12 from u2 to u3 with a new list.
    commit(store, |tx| {
        tx.delete_object(&path("/u2/myRealm"), "Item", PrimaryKey::Int(12))
            .unwrap();
        tx.put_object(&path("/u3/myRealm"), item(12, "moved by realm", &[7, 8, 9]))
            .unwrap();
    });
    two.converged().await;
    let owner: String = two
        .env
        .client
        .query_one("SELECT user_id FROM item WHERE id = 12", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "u3");
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_writers_on_both_sides_converge() {
    let seeds: u64 = std::env::var("PGREALM_CONVERGENCE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let first = seed("PGREALM_CONVERGENCE_SEED");
    for n in 0..seeds {
        let seed = first.wrapping_add(n);
        eprintln!("convergence seed {seed}");
        run_seed(seed, n).await;
    }
}

async fn run_seed(seed: u64, n: u64) {
    let two = TwoWay::start(&format!("random{n}_{}", std::process::id())).await;
    let store = two.env.store.clone();
    let keys = 8u64;
    let run_for = Duration::from_millis(1500);

    // The realm side: an app that moves, edits, creates and deletes items.
    let realm_writer = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            let mut rng = Rng::new(seed);
            let start = Instant::now();
            let mut commits = 0;
            while start.elapsed() < run_for {
                let id = rng.below(keys) as i64;
                let user = USERS[rng.below(3) as usize];
                let found = store.locate("Item", &PrimaryKey::Int(id)).unwrap();
                let mut tx = store.begin_write("app");
                let tags: Vec<i64> = (0..rng.below(4)).map(|_| rng.below(5) as i64).collect();
                match rng.below(4) {
                    0 => {
                        for realm in &found {
                            tx.delete_object(realm, "Item", PrimaryKey::Int(id))
                                .unwrap();
                        }
                    }
                    _ => {
                        for realm in found.iter().filter(|r| r.as_str() != realm_of(user)) {
                            tx.delete_object(realm, "Item", PrimaryKey::Int(id))
                                .unwrap();
                        }
                        tx.put_object(
                            &path(&realm_of(user)),
                            item(id, &format!("realm {}", rng.below(100)), &tags),
                        )
                        .unwrap();
                    }
                }
                tx.commit().unwrap();
                commits += 1;
                std::thread::sleep(Duration::from_millis(rng.below(4)));
            }
            commits
        })
    };
    // The PostgreSQL side: another client updating, inserting, moving and deleting rows.
    let url = two.env.db.url.clone();
    let sql_writer = tokio::spawn(async move {
        let client = PgConnectOptions::from_url(&url)
            .unwrap()
            .connect_sql()
            .await
            .unwrap();
        let mut rng = Rng::new(seed ^ 0xABCD);
        let start = Instant::now();
        let mut commits = 0;
        while start.elapsed() < run_for {
            let id = rng.below(keys) as i64;
            let user = USERS[rng.below(3) as usize];
            let title = format!("sql {}", rng.below(100));
            let sql = match rng.below(4) {
                0 => format!("DELETE FROM item WHERE id = {id}"),
                1 => format!(
                    "INSERT INTO item (id, title, user_id) VALUES ({id}, '{title}', '{user}') \
                     ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, user_id = EXCLUDED.user_id"
                ),
                // A list edit with its owner's row in the same transaction (an append).
                2 => format!(
                    "BEGIN; UPDATE item SET title = '{title}' WHERE id = {id};
                     INSERT INTO item_tags (oid, idx, value) \
                     SELECT id, (SELECT count(*) FROM item_tags WHERE oid = {id}), {} FROM item \
                      WHERE id = {id}; COMMIT;",
                    rng.below(5)
                ),
                _ => format!("UPDATE item SET title = '{title}' WHERE id = {id}"),
            };
            // A concurrent change from the engine may make a statement fail (a list row
            // raced); that is an ordinary client's problem, not sync's.
            if client.batch_execute(&sql).await.is_ok() {
                commits += 1;
            } else {
                let _ = client.batch_execute("ROLLBACK").await;
            }
            tokio::time::sleep(Duration::from_millis(rng.below(4))).await;
        }
        commits
    });
    let realm_commits = realm_writer.await.unwrap();
    let sql_commits = sql_writer.await.unwrap();
    eprintln!("seed {seed}: {realm_commits} realm commits, {sql_commits} SQL commits");
    two.converged().await;
    let ours = two.sql_commits.load(Ordering::Relaxed);
    let echoes = two.stats.echoes.load(Ordering::Relaxed);
    eprintln!("seed {seed}: {ours} engine transactions, {echoes} seen back as echoes");
    assert!(
        echoes <= ours,
        "seed {seed}: {echoes} echoes for {ours} engine transactions: something came back twice"
    );
    two.stop().await;
}
