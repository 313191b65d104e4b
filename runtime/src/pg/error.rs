//! Errors of the PostgreSQL side's conversions and catalog reading.

use pgrealm_schema::ValueError;

/// Why a row, a list or the catalog could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A value does not fit its property or column; nothing was converted silently.
    #[error(transparent)]
    Value(#[from] ValueError),

    /// The row lacks a column the class maps to.
    #[error(
        "the row has no column `{column}` for property `{property}`; select every column the \
         class maps to (see `pg::select_columns`)"
    )]
    MissingColumn {
        /// The column.
        column: String,
        /// The property: `Bus.name`.
        property: String,
    },

    /// The schema does not know this class or property, or a link's target has no key.
    #[error("{0}")]
    Schema(String),

    /// PostgreSQL refused a statement.
    #[error("{action}: {message}")]
    Sql {
        /// What we were doing.
        action: String,
        /// The server's message with its detail and hint.
        message: String,
        /// The error from tokio-postgres.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl PgError {
    pub(crate) fn sql(action: impl Into<String>, source: tokio_postgres::Error) -> Self {
        PgError::Sql {
            action: action.into(),
            message: describe(&source),
            source,
        }
    }
}

/// The full text of a tokio-postgres error (its `Display` is only "db error" for server
/// errors), with the value error inside when one of our parameters was refused.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" (detail: {detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!(" (hint: {hint})"));
        }
        return text;
    }
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}
