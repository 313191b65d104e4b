//! The harness's own tests: a cluster starts, serves databases, survives a restart, and leaves
//! nothing behind.

use super::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_cluster_serves_fresh_databases_restarts_and_is_removed_on_drop() {
    let cluster = PgCluster::start().unwrap();
    let data_dir = cluster.data_dir();
    assert!(data_dir.join("PG_VERSION").is_file());
    assert!(cluster.bin_dir().join("pg_ctl").is_file());

    let a = cluster.fresh_database().unwrap();
    let b = cluster.fresh_database().unwrap();
    assert_ne!(a.name, b.name);
    assert!(a.url.starts_with(&format!(
        "postgres://postgres@127.0.0.1:{}/",
        cluster.port()
    )));

    rt().block_on(async {
        let client = a.connect().await.unwrap();
        let row = client
            .query_one(
                "SELECT current_setting('wal_level'), current_user::text",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "logical");
        assert_eq!(row.get::<_, String>(1), SUPERUSER);
    });

    cluster.restart().unwrap();
    rt().block_on(async {
        let client = cluster.connect(&a.name).await.unwrap();
        client.batch_execute("SELECT 1").await.unwrap();
    });

    drop(cluster);
    assert!(
        !data_dir.exists(),
        "the cluster directory must be removed on drop"
    );
}

#[test]
fn password_roles_must_authenticate() {
    let cluster = PgCluster::shared();
    for (role, auth) in [
        ("pw_scram", PasswordAuth::Scram),
        ("pw_md5", PasswordAuth::Md5),
    ] {
        cluster
            .create_login_role(role, "s3cret'pw", auth, true)
            .unwrap();
        rt().block_on(async {
            connect(&cluster.url_as(role, "s3cret'pw", "postgres"))
                .await
                .unwrap();
            let wrong = connect(&cluster.url_as(role, "wrong", "postgres")).await;
            let message = wrong.unwrap_err().to_string();
            assert!(
                message.contains("password authentication failed"),
                "{message}"
            );
        });
    }
}

#[test]
fn missing_binaries_say_how_to_install_them() {
    let e = super::binaries::find_bin_dir_from(Some("/nonexistent/pgrealm".into())).unwrap_err();
    assert!(matches!(e, HarnessError::BinariesNotFound));
    assert!(
        e.to_string().starts_with(
            "PostgreSQL binaries not found; install them with: apt-get install -y postgresql"
        ),
        "{e}"
    );
}

#[test]
fn a_failed_start_shows_the_server_log() {
    // A library that does not exist makes the server refuse to start; the error carries its log.
    let cluster = PgCluster::start().unwrap();
    cluster
        .batch_execute(
            "postgres",
            "ALTER SYSTEM SET shared_preload_libraries = 'pgrealm_no_such_library'",
        )
        .unwrap();
    let e = cluster.restart().unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, HarnessError::ServerStart { .. }), "{text}");
    assert!(text.contains("--- server log"), "{text}");
    assert!(text.contains("pgrealm_no_such_library"), "{text}");
}
