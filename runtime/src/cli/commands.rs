//! The subcommands' bodies. Each returns an error whose message says what to do next.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use anyhow::{bail, Context};
use pgrealm_schema::catalog::check_catalog;
use pgrealm_schema::Schema;
use regex::Regex;

use crate::auth::Keys;
use crate::client::Client;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::replication::{drop_slot, slot_info, PgConnectOptions};
use crate::server::{Server, ServerOptions};
use crate::store::{Store, StoreError, StoreOptions, STORE_FILE, WAL_FILE};
use crate::sync::engine::{given_admin_token, open_store, store_for};
use crate::sync::rejections::{self, Direction};

pub(super) fn server_options(config: &Config) -> anyhow::Result<ServerOptions> {
    let readable = config
        .realm
        .readable
        .iter()
        .map(|r| Regex::new(r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ServerOptions {
        readable,
        ..ServerOptions::default()
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub(super) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub(super) async fn serve(schema: &Schema, config: &Config) -> anyhow::Result<()> {
    if config.realm.url.is_some() {
        bail!("realm.url names a remote object server; `serve` runs the embedded one: remove realm.url or run serve on that machine");
    }
    let store = open_store(schema, config)?;
    let keys = Keys::load_or_create(&config.realm.data_dir, given_admin_token(config)?)?;
    let server = Server::new(
        store,
        keys.clone(),
        Arc::new(Metrics::default()),
        server_options(config)?,
    );
    let listener = tokio::net::TcpListener::bind(&config.realm.listen)
        .await
        .with_context(|| format!("cannot listen on realm.listen = {}", config.realm.listen))?;
    let addr = listener.local_addr()?;
    eprintln!("object server listening on http://{addr}");
    match keys.admin_token_path() {
        Some(p) => eprintln!("admin token: {}", p.display()),
        None => eprintln!("admin token: as given in the environment"),
    }
    server.serve(listener, shutdown_signal()).await?;
    eprintln!("object server stopped");
    Ok(())
}

pub(super) async fn token(config: &Config, user: &str, ttl_seconds: i64) -> anyhow::Result<()> {
    if ttl_seconds <= 0 {
        bail!("--ttl-seconds must be positive");
    }
    if let Some(url) = &config.realm.url {
        // The signing key lives with the remote server: ask it.
        let admin = given_admin_token(config)?.with_context(|| {
            format!("realm.url = {url}: give the server's admin token with realm.admin_token_file or PGREALM_ADMIN_TOKEN to issue tokens there")
        })?;
        let client = Client::new(url, &admin, Schema::default());
        let token = client
            .issue_token(user, ttl_seconds)
            .await
            .with_context(|| format!("asking the object server at {url} for a token"))?;
        println!("{token}");
        return Ok(());
    }
    let keys = Keys::load_or_create(&config.realm.data_dir, given_admin_token(config)?)?;
    let token = keys.issue(user, ttl_seconds, chrono::Utc::now().timestamp())?;
    println!("{token}");
    Ok(())
}

fn postgres_url(config: &Config) -> anyhow::Result<&str> {
    config.postgres.url.as_deref().context(
        "no PostgreSQL to talk to: set [postgres] url in pgrealm.toml, or PGREALM_POSTGRES_URL",
    )
}

async fn connect(config: &Config) -> anyhow::Result<tokio_postgres::Client> {
    let url = postgres_url(config)?;
    let options = PgConnectOptions::from_url(url)?;
    Ok(options.connect_sql().await?)
}

pub(super) async fn check(schema: &Schema, config: &Config) -> anyhow::Result<()> {
    let client = connect(config).await?;
    let catalog = crate::pg::read_catalog(&client, "public").await?;
    let problems = check_catalog(schema, &catalog);
    if problems.is_empty() {
        println!(
            "the database matches the schema: {} tables checked",
            schema.tables().len()
        );
        return Ok(());
    }
    let mut errors = 0;
    for p in &problems {
        if p.is_warning() {
            println!("warning: {p}");
        } else {
            errors += 1;
            println!("error: {p}");
        }
    }
    if errors > 0 {
        bail!("{errors} difference(s) between the database and the schema");
    }
    Ok(())
}

pub(super) async fn status(
    name: &str,
    schema: &Schema,
    config: &Config,
    recent: u64,
) -> anyhow::Result<()> {
    println!("{name} status");
    // Realms: from the remote object server in remote mode; else from the store when it is
    // free, else from the running server.
    let local = match &config.realm.url {
        Some(url) => {
            let store = store_for(schema, config).await?;
            println!("object server: {url} (remote mode)");
            Ok(store)
        }
        None => open_store(schema, config),
    };
    match local {
        Ok(store) => {
            let schema = schema.clone();
            tokio::task::spawn_blocking(move || print_store(&store, &schema, recent)).await??;
        }
        Err(StoreError::Locked { .. }) => {
            let token = match given_admin_token(config)? {
                Some(t) => t,
                None => std::fs::read_to_string(config.realm.data_dir.join("keys/admin.token"))
                    .context("the store is in use and the admin token cannot be read to ask the running server")?
                    .trim()
                    .to_owned(),
            };
            let client = Client::new(
                &format!("http://{}", config.realm.listen),
                &token,
                schema.clone(),
            );
            let realms = client
                .realms()
                .await
                .context("the store is in use; asking the running server")?;
            println!("realms ({}, from the running server):", realms.len());
            for (path, version) in realms {
                println!("  {path}  version {version}");
            }
        }
        Err(e) => return Err(e.into()),
    }
    if config.postgres.url.is_none() {
        println!("postgres: not configured");
        return Ok(());
    }
    let client = connect(config).await?;
    match slot_info(&client, &config.postgres.slot).await? {
        None => println!(
            "slot {:?}: absent (created at the first `run`)",
            config.postgres.slot
        ),
        Some(info) => {
            let row = client
                .query_one(
                    "SELECT pg_current_wal_lsn()::text, \
                            (pg_current_wal_lsn() - restart_lsn)::bigint, \
                            (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint \
                     FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                    &[&config.postgres.slot],
                )
                .await?;
            let current: String = row.get(0);
            let retained: Option<i64> = row.get(1);
            let behind: Option<i64> = row.get(2);
            println!(
                "slot {:?}: {}, confirmed {} (server at {current}), {} bytes behind, {} bytes of WAL retained",
                config.postgres.slot,
                if info.active { "streaming" } else { "idle" },
                info.confirmed_flush_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                behind.unwrap_or(0),
                retained.unwrap_or(0),
            );
        }
    }
    let progress = client
        .query(
            "SELECT realm_path, version FROM pgrealm.progress ORDER BY realm_path",
            &[],
        )
        .await;
    match progress {
        Ok(rows) => {
            println!("realm → PostgreSQL progress ({} realms):", rows.len());
            for row in rows {
                let path: String = row.get(0);
                let version: i64 = row.get(1);
                println!("  {path}  written up to version {version}");
            }
        }
        Err(_) => println!("realm → PostgreSQL progress: none yet"),
    }
    Ok(())
}

/// Realms with object counts, and recent rejections, as the store holds them.
fn print_store(store: &Store, schema: &Schema, recent: u64) -> anyhow::Result<()> {
    let snapshot = store.snapshot()?;
    let realms = snapshot.realms()?;
    println!("realms ({}):", realms.len());
    for info in &realms {
        let mut counts = Vec::new();
        if let Some(view) = snapshot.realm(&info.path)? {
            for class in &schema.classes {
                let n = view.count(&class.name)?;
                if n > 0 {
                    counts.push(format!("{} {}", n, class.name));
                }
            }
        }
        println!(
            "  {}  version {}  {}",
            info.path,
            info.version,
            counts.join(", ")
        );
    }
    for direction in [Direction::PostgresToRealm, Direction::RealmToPostgres] {
        let total = rejections::count(store, direction)?;
        println!("rejections {direction:?}: {total}");
        for r in rejections::recent(store, direction, recent)? {
            println!(
                "  {} {} {} {}: {}",
                r.at.format("%Y-%m-%d %H:%M:%S"),
                r.realm.as_deref().unwrap_or("-"),
                r.class.as_deref().or(r.table.as_deref()).unwrap_or("-"),
                r.key.as_deref().unwrap_or("-"),
                r.reason
            );
        }
    }
    Ok(())
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("{question}: refusing without a terminal to ask; pass --yes to confirm");
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES"))
}

pub(super) async fn reset(config: &Config, realms: bool, yes: bool) -> anyhow::Result<()> {
    if realms {
        if let Some(url) = &config.realm.url {
            bail!(
                "--realms deletes the embedded store's file, but realm.url = {url} keeps the realms \
                 on a remote object server: stop it and run `reset --realms` on its machine (its \
                 data_dir), or run `reset` without --realms here for the PostgreSQL side"
            );
        }
    }
    let mut what = format!(
        "drop replication slot {:?}, publication {:?} and the pgrealm schema (progress, marker) in PostgreSQL",
        config.postgres.slot, config.postgres.publication
    );
    if realms {
        what.push_str(&format!(
            ", and DELETE EVERY REALM in {}",
            config.realm.data_dir.display()
        ));
    }
    if !yes && !confirm(&format!("This will {what}. Continue?"))? {
        println!("nothing done");
        return Ok(());
    }
    if config.postgres.url.is_some() {
        let client = connect(config).await?;
        if let Some(info) = slot_info(&client, &config.postgres.slot).await? {
            if info.active {
                bail!(
                    "slot {:?} is in use: stop the running engine first",
                    config.postgres.slot
                );
            }
        }
        let dropped = drop_slot(&client, &config.postgres.slot).await?;
        println!(
            "slot {:?}: {}",
            config.postgres.slot,
            if dropped { "dropped" } else { "absent" }
        );
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                pgrealm_schema::ddl::quote_ident(&config.postgres.publication)
            ))
            .await?;
        println!("publication {:?}: dropped", config.postgres.publication);
        client
            .batch_execute(
                "DROP TABLE IF EXISTS pgrealm.progress; DROP TABLE IF EXISTS pgrealm.marker; \
                 DROP SCHEMA IF EXISTS pgrealm",
            )
            .await
            .context("dropping pgrealm's progress and marker tables")?;
        println!("pgrealm.progress, pgrealm.marker: dropped");
        // The replication origin may not exist or the role may not manage origins; neither
        // stops a reset.
        let _ = client
            .batch_execute(
                "SELECT pg_replication_origin_drop('pgrealm') \
                 WHERE EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = 'pgrealm')",
            )
            .await;
    } else {
        println!("postgres: not configured, nothing to drop there");
    }
    if realms {
        let file = config.realm.data_dir.join(STORE_FILE);
        // Opening proves no other process holds it.
        match Store::open(
            &config.realm.data_dir,
            Schema::default(),
            StoreOptions::default(),
        ) {
            Ok(store) => drop(store),
            Err(StoreError::Locked { .. }) => {
                bail!("the realm store is in use: stop the running engine first")
            }
            Err(e) => return Err(e.into()),
        }
        match std::fs::remove_file(&file) {
            Ok(()) => println!("realms: {} deleted", file.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("realms: none"),
            Err(e) => return Err(e).with_context(|| format!("deleting {}", file.display())),
        }
        // The write-ahead log holds nothing the store file does not after a clean close; a
        // stale one would be ignored (it names its store), but it is the store's too.
        let wal = config.realm.data_dir.join(WAL_FILE);
        match std::fs::remove_file(&wal) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("deleting {}", wal.display())),
        }
    }
    Ok(())
}
