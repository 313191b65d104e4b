//! `run` and `demo`: the engine with its embedded object server, for real or on a throwaway
//! PostgreSQL.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgrealm_schema::{Object, Schema, Value};
use serde_json::Value as Json;

use crate::client::Client;
use crate::config::Config;
use crate::json::{key_from_json, object_from_json};
use crate::store::RealmPath;
use crate::sync::engine;
use crate::testing::PgCluster;

/// What the `demo` command shows for one schema: sample rows, a change made in PostgreSQL and
/// watched for in the realm, and an object written through the API and looked for in
/// PostgreSQL. The binary's author supplies it (`pgrealm::main!(Schema, demo = DEMO)`).
#[derive(Debug, Clone, Copy)]
pub struct Demo {
    /// SQL inserting the sample rows (run after the schema's DDL).
    pub seed_sql: &'static str,
    /// SQL changing one row in PostgreSQL.
    pub pg_change_sql: &'static str,
    /// The class of the object that change touches.
    pub watch_class: &'static str,
    /// Its primary key, as JSON (`1` or `"r1"`).
    pub watch_key_json: &'static str,
    /// The property that changes.
    pub watch_property: &'static str,
    /// Its new value, as JSON.
    pub watch_value_json: &'static str,
    /// The class of the object written through the API.
    pub api_class: &'static str,
    /// The object written through the API, as JSON.
    pub api_object_json: &'static str,
    /// SQL returning one text column once that object is in PostgreSQL.
    pub pg_check_sql: &'static str,
}

/// `run`: the engine and the object server until Ctrl-C or SIGTERM.
pub(super) async fn run(schema: &Schema, config: &Config) -> anyhow::Result<()> {
    let running = engine::start(schema, config).await?;
    match (running.store.remote_url(), &running.keys) {
        (Some(url), _) => eprintln!(
            "pgrealm is syncing with the remote object server at {url} (remote mode: no embedded \
             object server here)"
        ),
        (None, keys) => {
            eprintln!(
                "pgrealm is syncing; the object server listens on http://{}",
                running.addr
            );
            if let Some(p) = keys.as_ref().and_then(|k| k.admin_token_path()) {
                eprintln!("admin token: {}", p.display());
            }
        }
    }
    running
        .run_until(super::commands::shutdown_signal())
        .await?;
    eprintln!("stopped cleanly");
    Ok(())
}

async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `demo`: a throwaway PostgreSQL with sample data, the engine and the server, a round trip
/// each way; with `once`, exit after it, else keep running until Ctrl-C.
pub(super) async fn demo(
    name: &str,
    schema: &Schema,
    demo: &Demo,
    once: bool,
    listen: Option<String>,
) -> anyhow::Result<()> {
    eprintln!("{name} demo: starting a throwaway PostgreSQL (it is removed when the demo ends)…");
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await?
        .context("the demo needs PostgreSQL's server binaries (initdb, postgres); install them with: apt-get install -y postgresql")?;
    let result = demo_on(name, schema, demo, once, listen, &cluster).await;
    drop(cluster);
    result
}

async fn demo_on(
    name: &str,
    schema: &Schema,
    demo: &Demo,
    once: bool,
    listen: Option<String>,
    cluster: &PgCluster,
) -> anyhow::Result<()> {
    let db = "transit_demo";
    let url = cluster.create_database(db)?;
    let ddl = pgrealm_schema::ddl::render_ddl(schema);
    cluster.batch_execute(db, &ddl)?;
    cluster.batch_execute(db, demo.seed_sql)?;
    eprintln!("PostgreSQL is up with sample data: psql {url}");

    let data = tempfile::tempdir()?;
    let listen = listen.unwrap_or_else(|| {
        if once {
            "127.0.0.1:0".into()
        } else {
            "127.0.0.1:9080".into()
        }
    });
    let overrides = vec![
        format!("postgres.url={url}"),
        format!("realm.data_dir={}", data.path().display()),
        format!("realm.listen={listen}"),
        "sync.initialize_realm_from_postgres=true".into(),
        "sync.create_postgres_db=false".into(),
        "sync.realm_path=/myRealm".into(),
        "sync.realm_regex=^/myRealm$".into(),
    ];
    let config = Config::from_parts("", None, |_| None, &overrides)?;
    let running = engine::start(schema, &config).await?;
    let base = format!("http://{}", running.addr);
    let token = running
        .keys
        .as_ref()
        .context("the demo runs the embedded object server, which has keys")?
        .admin_token()
        .to_owned();
    let realm = RealmPath::parse("/myRealm")?;
    let client = Client::new(&base, &token, schema.clone());

    let outcome = async {
        // 1. The initial load brought PostgreSQL's rows into the realm.
        let class = schema.class(demo.watch_class).context("the demo's watch class is not in the schema")?;
        let key = key_from_json(schema, class, &serde_json::from_str(demo.watch_key_json)?)?;
        let store = running.store.clone();
        let loaded = wait_for("the initial load", Duration::from_secs(60), async || {
            Ok(store.realm(&realm)?.and_then(|v| v.object(demo.watch_class, &key).ok().flatten()))
        })
        .await?;
        eprintln!("realm /myRealm holds PostgreSQL's rows: {} {} = {:?}", demo.watch_class, key, loaded.get(demo.watch_property));

        // 2. A change made in PostgreSQL arrives in the realm.
        cluster.batch_execute(db, demo.pg_change_sql)?;
        let want = object_from_json(schema, class, &serde_json::json!({ demo.watch_property: serde_json::from_str::<Json>(demo.watch_value_json)? }))?;
        let want: Value = want.values.into_values().next().unwrap_or(Value::Null);
        let started = Instant::now();
        wait_for("the PostgreSQL change to reach the realm", Duration::from_secs(60), async || {
            let now = store.realm(&realm)?.and_then(|v| v.object(demo.watch_class, &key).ok().flatten());
            Ok(now.filter(|o: &Object| o.get(demo.watch_property) == Some(&want)).map(|_| ()))
        })
        .await?;
        eprintln!("PostgreSQL → realm: `{}` arrived in /myRealm after {:?}", demo.pg_change_sql, started.elapsed());

        // 3. An object written through the API arrives in PostgreSQL.
        let api_class = schema.class(demo.api_class).context("the demo's API class is not in the schema")?;
        let object = object_from_json(schema, api_class, &serde_json::from_str(demo.api_object_json)?)?;
        let started = Instant::now();
        client.realm("/myRealm").write(|tx| {
            tx.put_object(&object);
        }).await?;
        let pg = crate::testing::connect(&url).await?;
        let found = wait_for("the API write to reach PostgreSQL", Duration::from_secs(60), async || {
            Ok(pg.query_opt(demo.pg_check_sql, &[]).await?.map(|row| row.get::<_, String>(0)))
        })
        .await?;
        eprintln!("realm → PostgreSQL: the {} written through the API is in PostgreSQL ({found}) after {:?}", demo.api_class, started.elapsed());
        anyhow::Ok(())
    }
    .await;

    if outcome.is_ok() && !once {
        println!("\nThe demo keeps running. Try:");
        println!(
            "  curl -H 'Authorization: Bearer {token}' {base}/v1/realms/myRealm/-/objects/{}",
            demo.watch_class
        );
        println!(
            "  psql '{url}' -c 'SELECT * FROM {}'",
            schema
                .class(demo.watch_class)
                .map(|c| c.table.as_str())
                .unwrap_or("?")
        );
        println!("Press Ctrl-C to stop; the throwaway database is removed.");
        running
            .run_until(super::commands::shutdown_signal())
            .await?;
    } else {
        running.stop().await?;
    }
    outcome?;
    eprintln!("{name} demo: done, the throwaway PostgreSQL is removed");
    Ok(())
}
