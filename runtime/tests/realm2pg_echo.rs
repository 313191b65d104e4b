//! The writer's transactions are recognisable in the WAL, as the roles of managed databases
//! allow: a role with only REPLICATION and table privileges marks them with a row in
//! `pgrealm.marker`; a role granted the replication origin functions (and the superuser) uses
//! origin `pgrealm`. Checked in the real WAL through a `test_decoding` slot: `only-local`
//! hides transactions that carry an origin.
//!
//! Replication origins are cluster-wide and one session at a time may use one, so the cases
//! run one after another in a single test.

mod realm2pg_support;

use pgrealm_runtime::sync::realm_to_pg::{RealmToPgOptions, BOOKKEEPING_DDL};
use pgrealm_runtime::testing::{PasswordAuth, PgCluster};
use realm2pg_support::*;

/// The decoded transactions (test_decoding lines between BEGIN and COMMIT) that touch
/// `public.bus`, read without consuming them.
async fn bus_transactions(
    client: &tokio_postgres::Client,
    slot: &str,
    only_local: bool,
) -> Vec<Vec<String>> {
    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_peek_changes($1, NULL, NULL, 'only-local', $2)",
            &[&slot, &if only_local { "1" } else { "0" }],
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut current = Vec::new();
    for row in rows {
        let line: String = row.get(0);
        if line.starts_with("BEGIN") {
            current.clear();
        } else if line.starts_with("COMMIT") {
            if current
                .iter()
                .any(|l: &String| l.starts_with("table public.bus:"))
            {
                out.push(std::mem::take(&mut current));
            }
        } else {
            current.push(line);
        }
    }
    out
}

/// Run the engine as `url`'s role on a fresh database, commit one bus, and return the decoded
/// transactions that wrote it (all of them, and the ones `only-local` keeps).
async fn write_one_bus(
    role: Option<(&str, bool)>,
    case: &str,
) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let cluster = PgCluster::shared();
    let mut env = Env::new(schema()).await;
    env.client.batch_execute(BOOKKEEPING_DDL).await.unwrap();
    let slot = format!("r2p_echo_{case}");
    env.client
        .query_one(
            "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
            &[&slot],
        )
        .await
        .unwrap();
    let url = match role {
        None => env.db.url.clone(),
        Some((name, origin_grants)) => {
            cluster
                .create_login_role(name, "secret", PasswordAuth::Scram, true)
                .unwrap();
            let mut grants = format!(
                "GRANT USAGE ON SCHEMA pgrealm TO {name};
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public, pgrealm TO {name};
                 GRANT USAGE ON ALL SEQUENCES IN SCHEMA pgrealm TO {name};"
            );
            if origin_grants {
                grants.push_str(&format!(
                    "GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text) TO {name};
                     GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text) TO {name};"
                ));
            }
            env.client.batch_execute(&grants).await.unwrap();
            cluster.url_as(name, "secret", &env.db.name)
        }
    };
    env.start_as(&url, RealmToPgOptions::default());
    commit(&env.store, |tx| {
        tx.put_object(&path("/echo"), bus(1, "one", 1, None))
            .unwrap()
    });
    env.synced().await;
    env.assert_equal("/echo", "Bus", None).await;
    env.stop().await;
    let all = bus_transactions(&env.client, &slot, false).await;
    let local = bus_transactions(&env.client, &slot, true).await;
    env.client
        .query_one("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    (all, local)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marker_without_origin_rights_origin_with_them() {
    let pid = std::process::id();

    // Only REPLICATION and table privileges: every transaction inserts a marker row.
    let plain = format!("r2p_plain_{pid}");
    let (all, local) = write_one_bus(Some((&plain, false)), "plain").await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(local, all, "no origin: only-local keeps the transaction");
    assert!(
        all[0]
            .iter()
            .any(|l| l.starts_with("table pgrealm.marker: INSERT")),
        "the transaction carries a marker row: {all:?}"
    );

    // The same kind of role, granted the origin functions: origin `pgrealm`, no marker row.
    let granted = format!("r2p_granted_{pid}");
    let (all, local) = write_one_bus(Some((&granted, true)), "granted").await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(
        local.is_empty(),
        "the origin hides it from only-local: {local:?}"
    );
    assert!(
        !all[0].iter().any(|l| l.contains("pgrealm.marker")),
        "no marker row under an origin: {all:?}"
    );

    // The superuser may use origins too.
    let (all, local) = write_one_bus(None, "superuser").await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(local.is_empty(), "{local:?}");
}
