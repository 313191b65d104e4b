//! Publication and slot management, preflight and TLS against a real PostgreSQL 15. Tests that
//! change server settings (wal_level, ssl) own their cluster; the others share one.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pgrealm_runtime::replication::{
    drop_slot, ensure_publication, ensure_slot, preflight, reset_slot, slot_info, ChangeStream,
    PgConnectOptions, PreflightProblem, PublicationAction, QualifiedTable, ReplicationError,
    StreamEvent, StreamOptions,
};
use pgrealm_runtime::testing::{PasswordAuth, PgCluster};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

async fn published(sql: &tokio_postgres::Client, publication: &str) -> Vec<String> {
    sql.query(
        "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
        &[&publication],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

#[tokio::test]
async fn the_publication_covers_exactly_the_mapped_tables() {
    let db = PgCluster::shared().fresh_database().unwrap();
    let sql = PgConnectOptions::from_url(&db.url)
        .unwrap()
        .connect_sql()
        .await
        .unwrap();
    sql.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE \"B c\" (id int PRIMARY KEY);
         CREATE TABLE other (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    let a = QualifiedTable::public("a");
    let bc = QualifiedTable::public("B c");
    let name = "pgrealm pub";
    assert!(
        ensure_publication(&sql, name, std::slice::from_ref(&a))
            .await
            .is_err(),
        "a space is refused"
    );
    let name = "pgrealm-pub";
    let created = ensure_publication(&sql, name, std::slice::from_ref(&a))
        .await
        .unwrap();
    assert_eq!(created, PublicationAction::Created);
    let again = ensure_publication(&sql, name, std::slice::from_ref(&a))
        .await
        .unwrap();
    assert_eq!(again, PublicationAction::Unchanged);
    let altered = ensure_publication(&sql, name, &[bc.clone(), a.clone()])
        .await
        .unwrap();
    assert_eq!(altered, PublicationAction::Altered);
    assert_eq!(published(&sql, name).await, ["B c", "a"]);
    let narrowed = ensure_publication(&sql, name, std::slice::from_ref(&bc))
        .await
        .unwrap();
    assert_eq!(narrowed, PublicationAction::Altered);
    assert_eq!(published(&sql, name).await, ["B c"]);

    sql.batch_execute("ALTER PUBLICATION \"pgrealm-pub\" SET (publish = 'insert')")
        .await
        .unwrap();
    let fixed = ensure_publication(&sql, name, std::slice::from_ref(&bc))
        .await
        .unwrap();
    assert_eq!(
        fixed,
        PublicationAction::Altered,
        "missing operations are restored"
    );

    sql.batch_execute("CREATE PUBLICATION everything FOR ALL TABLES")
        .await
        .unwrap();
    let err = ensure_publication(&sql, "everything", &[a])
        .await
        .unwrap_err();
    assert!(matches!(err, ReplicationError::Unusable { .. }), "{err}");
}

#[tokio::test]
async fn slots_are_created_once_reset_forward_and_not_dropped_while_streaming() {
    let db = PgCluster::shared().fresh_database().unwrap();
    let pg = PgConnectOptions::from_url(&db.url).unwrap();
    let sql = pg.connect_sql().await.unwrap();
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    ensure_publication(&sql, "p", &[QualifiedTable::public("t")])
        .await
        .unwrap();
    let slot = format!("s_{}", db.name);
    assert!(ensure_slot(&sql, &slot).await.unwrap());
    assert!(!ensure_slot(&sql, &slot).await.unwrap(), "created twice");
    let info = slot_info(&sql, &slot).await.unwrap().unwrap();
    assert_eq!(info.plugin, "pgoutput");
    assert_eq!(info.database, db.name);

    // A change before the reset is not streamed after it.
    sql.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    reset_slot(&sql, &slot).await.unwrap();
    sql.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    let mut stream = ChangeStream::connect(&pg, &StreamOptions::new(&slot, "p"))
        .await
        .unwrap();
    let first_change = loop {
        match timeout(WAIT, stream.next_event()).await.unwrap().unwrap() {
            Some(StreamEvent::Change(change)) => break change,
            Some(_) => continue,
            None => panic!("stream ended"),
        }
    };
    let pgrealm_runtime::replication::Change::Insert { new, .. } = first_change else {
        panic!("{first_change:?}")
    };
    assert_eq!(new[0].as_text(), Some("2"));

    let err = drop_slot(&sql, &slot).await.unwrap_err();
    assert!(
        err.to_string().contains("stop the other pgrealm engine"),
        "{err}"
    );
    stream.shutdown().await.unwrap();
    // The walsender lets go of the slot shortly after the stream ends.
    let mut dropped = false;
    for _ in 0..100 {
        match drop_slot(&sql, &slot).await {
            Ok(true) => {
                dropped = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(dropped);
    assert!(!drop_slot(&sql, &slot).await.unwrap(), "dropped twice");

    let err = ChangeStream::connect(&pg, &StreamOptions::new(&slot, "p"))
        .await
        .unwrap_err();
    assert!(matches!(err, ReplicationError::SlotMissing(_)), "{err}");
    let err = ensure_slot(&sql, "Bad-Name").await.unwrap_err();
    assert!(err.to_string().contains("lower-case"), "{err}");
}

#[tokio::test]
async fn preflight_names_each_missing_grant_and_table_with_its_fix() {
    let cluster = PgCluster::shared();
    let db = cluster.fresh_database().unwrap();
    let role = format!("plain_{}", db.name);
    cluster
        .create_login_role(&role, "pw", PasswordAuth::Scram, false)
        .unwrap();
    cluster
        .batch_execute(
            &db.name,
            "CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE loose (id int)",
        )
        .unwrap();
    let sql = PgConnectOptions::from_url(&cluster.url_as(&role, "pw", &db.name))
        .unwrap()
        .connect_sql()
        .await
        .unwrap();
    let tables = [
        QualifiedTable::public("keyed"),
        QualifiedTable::public("loose"),
        QualifiedTable::new("nowhere", "missing"),
    ];
    let err = preflight(&sql, "pgrealm", &tables).await.unwrap_err();
    let ReplicationError::Preflight(problems) = &err else {
        panic!("{err}")
    };
    assert_eq!(
        problems,
        &[
            PreflightProblem::NoReplicationRole { role: role.clone() },
            PreflightProblem::NoPrimaryKey {
                table: QualifiedTable::public("loose")
            },
            PreflightProblem::TableMissing {
                table: QualifiedTable::new("nowhere", "missing")
            },
        ]
    );
    assert!(
        err.to_string()
            .contains(&format!("ALTER ROLE \"{role}\" REPLICATION")),
        "{err}"
    );

    let superuser = cluster.connect(&db.name).await.unwrap();
    preflight(&superuser, "pgrealm", &tables[..1])
        .await
        .unwrap();
}

#[tokio::test]
async fn preflight_reports_wal_level_and_slots_on_a_server_not_set_up_for_logical_replication() {
    let cluster = PgCluster::start().unwrap();
    // One statement per call: ALTER SYSTEM refuses to run inside a multi-statement query.
    for setting in ["wal_level = replica", "max_replication_slots = 0"] {
        cluster
            .batch_execute("postgres", &format!("ALTER SYSTEM SET {setting}"))
            .unwrap();
    }
    cluster.restart().unwrap();
    let sql = cluster.connect("postgres").await.unwrap();
    let err = preflight(&sql, "pgrealm", &[]).await.unwrap_err();
    let ReplicationError::Preflight(problems) = &err else {
        panic!("{err}")
    };
    assert_eq!(
        problems,
        &[
            PreflightProblem::WalLevel {
                current: "replica".into()
            },
            PreflightProblem::NoFreeSlot { max: 0, used: 0 },
        ]
    );
    let text = err.to_string();
    assert!(
        text.contains("`wal_level = logical` in postgresql.conf"),
        "{text}"
    );
    assert!(text.contains("restart PostgreSQL"), "{text}");
}

/// Make a CA and a server certificate for `localhost` in `dir` with the openssl tool (which
/// Debian's postgresql package brings, through ssl-cert).
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (it comes with PostgreSQL's ssl-cert package)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=pgrealm test CA"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca);
    let mut csr = vec!["req", "-subj", "/CN=localhost"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    run(&csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "server.crt",
        "-extfile",
        "server.ext",
    ]);
}

#[tokio::test]
async fn both_connections_speak_tls_and_verify_full_checks_the_certificate() {
    use std::os::unix::fs::MetadataExt as _;

    let cluster = PgCluster::start().unwrap();
    let data = cluster.data_dir();
    make_certificates(&data);
    let owner = std::fs::metadata(&data).unwrap();
    for file in ["server.crt", "server.key"] {
        std::os::unix::fs::chown(data.join(file), Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    std::fs::set_permissions(
        data.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    cluster
        .batch_execute(
            "postgres",
            "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t",
        )
        .unwrap();
    cluster
        .batch_execute(
            "postgres",
            "SELECT pg_create_logical_replication_slot('tls_slot', 'pgoutput')",
        )
        .unwrap();
    cluster
        .batch_execute("postgres", "ALTER SYSTEM SET ssl = on")
        .unwrap();
    cluster.restart().unwrap();
    let ca = data.join("ca.pem");
    let url = |mode: &str, ca: &Path| {
        format!(
            "postgres://postgres@localhost:{}/postgres?sslmode={mode}&sslrootcert={}&application_name=tls_test",
            cluster.port(),
            ca.display()
        )
    };

    for mode in ["require", "verify-ca", "verify-full"] {
        let pg = PgConnectOptions::from_url(&url(mode, &ca)).unwrap();
        let sql = pg.connect_sql().await.unwrap();
        let ssl: bool = sql
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(ssl, "{mode}: the SQL connection is not encrypted");

        let mut stream = ChangeStream::connect(&pg, &StreamOptions::new("tls_slot", "p"))
            .await
            .unwrap();
        sql.execute("INSERT INTO t VALUES ((SELECT count(*) FROM t)::int)", &[])
            .await
            .unwrap();
        let mut got_change = false;
        while !got_change {
            match timeout(WAIT, stream.next_event()).await.unwrap().unwrap() {
                Some(StreamEvent::Change(_)) => got_change = true,
                Some(StreamEvent::Commit(commit)) => stream.confirm(commit.end_lsn),
                Some(_) => {}
                None => panic!("stream ended"),
            }
        }
        let walsender_ssl: bool = sql
            .query_one(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_replication r ON r.pid = s.pid \
                 WHERE r.application_name = 'tls_test'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            walsender_ssl,
            "{mode}: the replication connection is not encrypted"
        );
        stream.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A certificate from another CA fails verification on both connections.
    let other = tempfile::tempdir().unwrap();
    make_certificates(other.path());
    let pg = PgConnectOptions::from_url(&url("verify-full", &other.path().join("ca.pem"))).unwrap();
    assert!(
        pg.connect_sql().await.is_err(),
        "SQL accepted an unknown CA"
    );
    let err = ChangeStream::connect(&pg, &StreamOptions::new("tls_slot", "p"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("tls") || err.to_string().contains("certificate"),
        "{err}"
    );
}
