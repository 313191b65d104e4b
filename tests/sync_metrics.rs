//! `/metrics` of a running engine: changes each way, lag and the WAL the slot retains.

use std::time::{Duration, Instant};

use pgrealm_runtime::config::Config;
use pgrealm_runtime::sync::engine;
use pgrealm_runtime::testing::PgCluster;
use pgrealm_runtime::RealmPath;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_both_directions_and_the_slot() {
    let db = PgCluster::shared().fresh_database().unwrap();
    PgCluster::shared()
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let overrides = vec![
        format!("postgres.url={}", db.url),
        format!("realm.data_dir={}", data.path().display()),
        "realm.listen=127.0.0.1:0".to_owned(),
        "sync.create_postgres_db=false".to_owned(),
    ];
    let config = Config::from_parts("", None, |_| None, &overrides).unwrap();
    let running = engine::start(transit::Schema::schema(), &config)
        .await
        .unwrap();

    // One change each way.
    PgCluster::shared()
        .batch_execute(
            &db.name,
            "INSERT INTO route (id, name) VALUES ('r1', 'Loop')",
        )
        .unwrap();
    let realm = RealmPath::parse("/myRealm").unwrap();
    let mut tx = running.store.begin_write("app");
    tx.realm(&realm)
        .put(&transit::Bus {
            id: 1,
            name: "One".into(),
            route: None,
        })
        .unwrap();
    tokio::task::spawn_blocking(move || tx.commit())
        .await
        .unwrap()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = get(running.addr, "/metrics").await;
        if gauge(&text, "pgrealm_changes_postgres_to_realm_total") >= 1.0
            && gauge(&text, "pgrealm_changes_realm_to_postgres_total") >= 1.0
            && gauge(&text, "pgrealm_slot_retained_wal_bytes") > 0.0
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed both directions:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        gauge(&text, "pgrealm_replication_lag_bytes") >= 0.0,
        "{text}"
    );
    assert!(
        gauge(&text, "pgrealm_replication_lag_seconds") >= 0.0,
        "{text}"
    );
    assert_eq!(gauge(&text, "pgrealm_rejections_total"), 0.0, "{text}");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_refuses_a_database_that_differs_from_the_schema() {
    let db = PgCluster::shared().fresh_database().unwrap();
    PgCluster::shared()
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    PgCluster::shared()
        .batch_execute(
            &db.name,
            "ALTER TABLE bus ALTER COLUMN name TYPE integer USING 0",
        )
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let overrides = vec![
        format!("postgres.url={}", db.url),
        format!("realm.data_dir={}", data.path().display()),
        "realm.listen=127.0.0.1:0".to_owned(),
        "sync.create_postgres_db=false".to_owned(),
        "sync.apply_realm_schema_changes_to_postgres=false".to_owned(),
    ];
    let config = Config::from_parts("", None, |_| None, &overrides).unwrap();
    let err = engine::start(transit::Schema::schema(), &config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not match the compiled schema") && err.contains("\"bus\".\"name\""),
        "{err}"
    );
}
