//! The command line of the binary a user builds from their schema (`pgrealm::main!(Schema)`).
//!
//! This is the binary edge: it loads the configuration, sets up logging, and turns errors into
//! messages and exit codes (anyhow is used here and nowhere below). Each subcommand is a thin
//! call into the runtime's modules.

mod commands;
mod demo;

pub use demo::Demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgrealm_schema::CompiledSchema;

use crate::config::Config;

/// Options every subcommand takes.
#[derive(Debug, Parser)]
#[command(
    about = "Keeps PostgreSQL and realms (object databases addressed by path) in live, two-way sync.",
    long_about = "Keeps PostgreSQL and realms (object databases addressed by path) in live, two-way sync.\n\n\
        Configuration comes from pgrealm.toml in the working directory (or --config), then from \
        PGREALM_<SECTION>_<KEY> environment variables (PGREALM_POSTGRES_URL, …), then from --set \
        section.key=value. Logging follows RUST_LOG (default: info).",
    version
)]
pub struct Cli {
    /// The configuration file (default: ./pgrealm.toml when present).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one configuration key, e.g. --set sync.realm_regex='^/.*/myRealm$'. Repeatable.
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sync engine (both directions) and the embedded object server until Ctrl-C; with
    /// realm.url, sync that remote object server instead (no embedded server).
    Run,
    /// Start a throwaway PostgreSQL with sample data, sync it both ways and show the round trip.
    Demo {
        /// Do the round trip and exit (for CI) instead of running until Ctrl-C.
        #[arg(long)]
        once: bool,
        /// Where the object server listens (default 127.0.0.1:9080; a free port with --once).
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
    },
    /// Print the PostgreSQL DDL of the compiled schema (tables, keys, foreign keys, list
    /// subtables).
    Ddl,
    /// Serve the realms over HTTP + WebSocket without syncing (the object server alone).
    Serve,
    /// Issue a user token for the object server's API (with realm.url, the remote server
    /// issues it).
    Token {
        /// The user id (one realm path segment: letters, digits, `_`, `.`, `-`).
        user: String,
        /// How long the token is valid, in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_seconds: i64,
    },
    /// Compare the live PostgreSQL catalog with the compiled schema and report differences.
    Check,
    /// Show the slot's position and retained WAL, realms and object counts, recent rejections.
    Status {
        /// How many recent rejections to show.
        #[arg(long, default_value_t = 10)]
        rejections: u64,
    },
    /// Drop the replication slot, the publication and pgrealm's progress and marker tables
    /// (the original's Reset.js); with --realms also wipe the realm data.
    Reset {
        /// Also delete every realm in the data directory (embedded store only: with realm.url,
        /// run it on the remote server's machine).
        #[arg(long)]
        realms: bool,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// Turn transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` asks for
/// something else.
///
/// The engine frees most of what it allocates within a commit or two, on another thread than
/// the one that allocated it, so the allocator keeps taking fresh pages; with huge pages the
/// kernel zeroes 2 MiB for each, which took 10–12 % of the applier's CPU. Without them it
/// zeroes only the 4 KiB pages actually touched: PostgreSQL → realm used about 20 % less CPU
/// per change (BENCHMARKS.md, "Huge pages"). The binary calls this first thing; so do the
/// benches, whose figures are the binary's.
#[allow(unsafe_code)] // one prctl(2) call
pub fn disable_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes one integer argument and touches no memory of ours;
    // the unused arguments must be zero.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not turn transparent huge pages off"
        );
    }
}

/// Run the command line for schema `S`: parse arguments, load the configuration, dispatch.
/// `name` is the binary's name, for messages.
pub fn main<S: CompiledSchema>(name: &str) -> ExitCode {
    main_with::<S>(name, None)
}

/// [`main`], with what the `demo` command shows for this schema.
pub fn main_with<S: CompiledSchema>(name: &str, demo: Option<&Demo>) -> ExitCode {
    disable_transparent_huge_pages();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging();
    match run::<S>(name, cli, demo) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    Ok(Config::load(
        cli.config.as_deref(),
        |k| std::env::var(k).ok(),
        &cli.overrides,
    )?)
}

fn run<S: CompiledSchema>(name: &str, cli: Cli, demo: Option<&Demo>) -> anyhow::Result<()> {
    if let Command::Ddl = cli.command {
        // The DDL needs no configuration, so a broken pgrealm.toml does not hide it.
        print!("{}", S::DDL);
        return Ok(());
    }
    if let Command::Demo { once, listen } = &cli.command {
        let Some(demo) = demo else {
            anyhow::bail!("this binary has no demo: its author did not give one to pgrealm::main!");
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(demo::demo(name, S::schema(), demo, *once, listen.clone()));
    }
    let config = load_config(&cli)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Ddl | Command::Demo { .. } => unreachable!("handled above"),
            Command::Run => demo::run(S::schema(), &config).await,
            Command::Serve => commands::serve(S::schema(), &config).await,
            Command::Token { user, ttl_seconds } => {
                commands::token(&config, &user, ttl_seconds).await
            }
            Command::Check => commands::check(S::schema(), &config).await,
            Command::Status { rejections } => {
                commands::status(name, S::schema(), &config, rejections).await
            }
            Command::Reset { realms, yes } => commands::reset(&config, realms, yes).await,
        }
    })
}

#[cfg(test)]
mod tests {
    /// The kernel's answer for this process (`THP_enabled` in `/proc/self/status`, Linux 6.x).
    fn thp_enabled() -> Option<bool> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("THP_enabled:"))?;
        Some(line.split_whitespace().nth(1)? != "0")
    }

    #[test]
    fn transparent_huge_pages_are_off_for_the_binary() {
        let Some(before) = thp_enabled() else {
            // An older kernel does not report it; the call must still succeed quietly.
            super::disable_transparent_huge_pages();
            return;
        };
        super::disable_transparent_huge_pages();
        let after = thp_enabled().expect("reported before, so reported after");
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
            assert_eq!(after, before, "MIMALLOC_ALLOW_THP leaves the setting alone");
        } else {
            assert!(!after, "huge pages are still on for this process");
        }
    }
}
