//! The generated `transit` binary from the outside: help, configuration errors, tokens, the
//! object server, the catalog check, status and reset — against a real PostgreSQL.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgrealm::runtime::auth::{Identity, Keys};
use pgrealm::runtime::testing::PgCluster;

fn transit(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_transit"))
        .args(args)
        .current_dir(dir)
        .env_remove("PGREALM_POSTGRES_URL")
        .env_remove("PGREALM_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("the transit binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn help_lists_every_command_and_ddl_needs_no_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = transit(dir.path(), &["--help"]);
    assert!(out.status.success());
    let help = text(&out);
    for command in ["ddl", "serve", "token", "check", "status", "reset"] {
        assert!(help.contains(command), "--help lacks {command}: {help}");
    }
    // A broken configuration does not hide the DDL.
    std::fs::write(dir.path().join("pgrealm.toml"), "[sync\n").unwrap();
    let out = transit(dir.path(), &["ddl"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), transit::Schema::DDL);
}

#[test]
fn configuration_errors_name_the_key_and_what_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pgrealm.toml"),
        "[sync]\nrealm_regexp = \"^/myRealm$\"\n",
    )
    .unwrap();
    let out = transit(dir.path(), &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out);
    assert!(
        err.contains("pgrealm.toml: sync.realm_regexp: unknown key")
            && err.contains("sync.realm_regex"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("pgrealm.toml"),
        "[sync]\ncreate_postgres_db = 3\n",
    )
    .unwrap();
    let err = text(&transit(dir.path(), &["status"]));
    assert!(
        err.contains("sync.create_postgres_db: expected true or false"),
        "{err}"
    );

    std::fs::remove_file(dir.path().join("pgrealm.toml")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_transit"))
        .args(["status"])
        .current_dir(dir.path())
        .env("PGREALM_SYNC_INITIALIZE_REALM_FROM_POSTGRES", "perhaps")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("environment PGREALM_SYNC_INITIALIZE_REALM_FROM_POSTGRES"),
        "{}",
        text(&out)
    );

    let err = text(&transit(
        dir.path(),
        &["--set", "realm.listen=nowhere", "status"],
    ));
    assert!(
        err.contains("realm.listen") && err.contains("host:port"),
        "{err}"
    );
    let err = text(&transit(
        dir.path(),
        &["--config", "missing.toml", "status"],
    ));
    assert!(
        err.contains("missing.toml") && err.contains("cannot read"),
        "{err}"
    );

    // A password in the URL never reaches the output, even in an error.
    let err = text(&transit(
        dir.path(),
        &[
            "--set",
            "postgres.url=postgres://u:hunter2@127.0.0.1:1/db",
            "check",
        ],
    ));
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
}

#[test]
fn tokens_issued_by_the_binary_verify_with_the_data_dir_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = transit(dir.path(), &["token", "alice", "--ttl-seconds", "60"]);
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let keys = Keys::load_or_create(&dir.path().join("pgrealm-data"), None).unwrap();
    assert_eq!(
        keys.verify(&token, chrono::Utc::now().timestamp()).unwrap(),
        Identity::User("alice".into())
    );
    let out = transit(dir.path(), &["token", "../admin"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn serve_answers_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_transit"))
        .args(["--set", &format!("realm.listen=127.0.0.1:{port}"), "serve"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let answered = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            break out;
        }
        assert!(Instant::now() < deadline, "serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert!(dir.path().join("pgrealm-data/keys/admin.token").exists());
    // SIGTERM: graceful stop, exit 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "{code:?}");
}

#[test]
fn check_status_and_reset_against_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let db = PgCluster::shared().fresh_database().unwrap();
    let url_arg = format!("postgres.url={}", db.url);
    PgCluster::shared()
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();

    let out = transit(dir.path(), &["--set", &url_arg, "check"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("matches the schema"), "{}", text(&out));

    PgCluster::shared()
        .batch_execute(&db.name, "ALTER TABLE bus DROP COLUMN name")
        .unwrap();
    let out = transit(dir.path(), &["--set", &url_arg, "check"]);
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out);
    assert!(
        report.contains("\"bus\".\"name\"") && report.contains("missing"),
        "{report}"
    );

    // A slot and a publication to reset.
    PgCluster::shared()
        .batch_execute(
            &db.name,
            "SELECT pg_create_logical_replication_slot('pgrealm', 'pgoutput'); \
             CREATE PUBLICATION pgrealm FOR TABLE route",
        )
        .unwrap();
    let out = transit(dir.path(), &["--set", &url_arg, "status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("slot \"pgrealm\""), "{}", text(&out));

    // Without a terminal and without --yes, reset refuses and changes nothing.
    let out = transit(dir.path(), &["--set", &url_arg, "reset"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("--yes"), "{}", text(&out));

    let out = transit(
        dir.path(),
        &["--set", &url_arg, "reset", "--yes", "--realms"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = db.connect().await.unwrap();
        let slots: i64 = client
            .query_one("SELECT count(*) FROM pg_replication_slots", &[])
            .await
            .unwrap()
            .get(0);
        let publications: i64 = client
            .query_one("SELECT count(*) FROM pg_publication", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!((slots, publications), (0, 0));
    });
}
