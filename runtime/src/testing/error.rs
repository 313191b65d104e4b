//! The one error type of the test harness. Every message says what to do next.

use std::path::PathBuf;

/// Why the harness could not give a test its PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// No `initdb`/`pg_ctl`/`postgres` on PATH, from `pg_config --bindir`, or in
    /// `/usr/lib/postgresql/<version>/bin`.
    #[error(
        "PostgreSQL binaries not found; install them with: apt-get install -y postgresql \
         (looked on PATH, in `pg_config --bindir` and in /usr/lib/postgresql/<version>/bin; \
         set PGREALM_PG_BIN_DIR to use another directory)"
    )]
    BinariesNotFound,

    /// We run as root, which PostgreSQL refuses, and no unprivileged user could be used.
    #[error(
        "running as root, which PostgreSQL refuses, and no unprivileged user is available: \
         {reason}. Create one with `useradd --system pgrealm-test` or run the tests as a \
         non-root user"
    )]
    NoUnprivilegedUser {
        /// What went wrong.
        reason: String,
    },

    /// A file system operation failed.
    #[error("{action}: {source}")]
    Io {
        /// What the harness was doing.
        action: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A PostgreSQL program exited with an error.
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stdout and stderr.
        output: String,
    },

    /// The server did not come up; its log says why.
    #[error("PostgreSQL did not start: {reason}\n--- server log ({log_path}) ---\n{log}")]
    ServerStart {
        /// What the harness saw.
        reason: String,
        /// Where the log is (removed with the cluster).
        log_path: PathBuf,
        /// The log's content.
        log: String,
    },

    /// An SQL statement the harness ran failed.
    #[error("{action}: {message}")]
    Sql {
        /// What the harness was doing.
        action: String,
        /// The server's message (with detail and hint), or the client's.
        message: String,
        /// The error from tokio-postgres.
        #[source]
        source: tokio_postgres::Error,
    },

    /// The shared cluster failed to start earlier in this test process.
    #[error("the shared test PostgreSQL could not start: {0}")]
    SharedUnavailable(String),
}

impl HarnessError {
    pub(crate) fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            action: action.into(),
            source,
        }
    }

    pub(crate) fn sql(action: impl Into<String>, source: tokio_postgres::Error) -> Self {
        HarnessError::Sql {
            action: action.into(),
            message: describe_postgres_error(&source),
            source,
        }
    }
}

/// The full text of a tokio-postgres error: its `Display` is only "db error" for server errors.
pub(crate) fn describe_postgres_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{}: {}", db.severity(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" (detail: {detail})"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!(" (hint: {hint})"));
            }
            text
        }
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}
