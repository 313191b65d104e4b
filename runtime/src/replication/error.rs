//! The errors of the PostgreSQL replication side, each saying what to do next.

use super::pgoutput::DecodeError;
use super::Lsn;

/// An error of the replication side: connecting, managing the slot and publication, or reading
/// the stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// The PostgreSQL URL could not be understood.
    #[error(
        "invalid PostgreSQL URL: {0}; expected postgres://user:password@host:port/database?sslmode=…"
    )]
    InvalidUrl(String),
    /// TLS could not be set up (certificate files, modes).
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The ordinary SQL connection could not be opened.
    #[error("cannot connect to PostgreSQL at {target}: {source}; check the URL, that the server is running and pg_hba.conf allows this host and user")]
    Connect {
        /// Host, port, database and user.
        target: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// An SQL statement failed.
    #[error("{context}: {source}")]
    Sql {
        /// What was being done.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The replication connection failed.
    #[error("{context}: {source}")]
    Stream {
        /// What was being done.
        context: String,
        /// The replication client's error.
        #[source]
        source: pgwire_replication::PgWireError,
    },
    /// A pgoutput message could not be decoded.
    #[error("at WAL position {lsn}: {source}")]
    Decode {
        /// Where in the stream.
        lsn: Lsn,
        /// What was wrong.
        #[source]
        source: DecodeError,
    },
    /// The stream broke the protocol's rules (a change outside a transaction, a change of a
    /// table whose Relation message never came).
    #[error("replication protocol violation at WAL position {lsn}: {message}")]
    Protocol {
        /// Where in the stream.
        lsn: Lsn,
        /// What happened.
        message: String,
    },
    /// A slot or publication name PostgreSQL would not accept unquoted.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// "replication slot" or "publication".
        kind: &'static str,
        /// The name given.
        name: String,
        /// Why it is not valid.
        reason: &'static str,
    },
    /// An existing slot or publication that pgrealm must not take over or change.
    #[error("{kind} {name:?} cannot be used: {reason}")]
    Unusable {
        /// "replication slot" or "publication".
        kind: &'static str,
        /// Its name.
        name: String,
        /// Why, and what to do.
        reason: &'static str,
    },
    /// The slot to stream from does not exist.
    #[error("replication slot {0:?} does not exist; create it (pgrealm creates it at start) or check the `slot` setting")]
    SlotMissing(String),
    /// The server is not ready for logical replication; each problem says its fix.
    #[error("PostgreSQL is not ready for pgrealm:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Preflight(Vec<super::preflight::PreflightProblem>),
}

impl ReplicationError {
    /// Whether retrying later may succeed without a change of configuration: the connection
    /// dropped or the server went away (a restart, a failover), as opposed to a refusal
    /// (authentication, a missing slot, a protocol error).
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicationError::Stream { source, .. } => source.is_transient(),
            ReplicationError::Connect { source, .. } | ReplicationError::Sql { source, .. } => {
                source.is_closed() || source.as_db_error().is_none()
            }
            _ => false,
        }
    }

    pub(crate) fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| ReplicationError::Sql { context, source }
    }

    pub(crate) fn stream(
        context: impl Into<String>,
    ) -> impl FnOnce(pgwire_replication::PgWireError) -> Self {
        let context = context.into();
        move |source| ReplicationError::Stream { context, source }
    }
}
