//! Connection settings from one PostgreSQL URL, for both kinds of connection pgrealm opens: the
//! ordinary SQL connection (tokio-postgres) and the replication connection (pgwire-replication).
//!
//! Owns URL parsing and TLS setup. The two drivers understand different `sslmode` values
//! (tokio-postgres stops at `require`), so the TLS parameters are read here once and handed to
//! each driver in its own terms; everything else in the URL is tokio-postgres's to parse.

use std::path::PathBuf;
use std::str::FromStr;

use pgwire_replication::{ReplicationConfig, SslMode as ReplSslMode, TlsConfig};
use tokio_postgres::config::Host;

use super::error::ReplicationError;

/// How the connection uses TLS (`sslmode` in the URL, as libpq reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, without verifying the certificate (libpq's default).
    #[default]
    Prefer,
    /// TLS required, certificate not verified.
    Require,
    /// TLS required, certificate chain verified against `sslrootcert` (or the web PKI roots).
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = ReplicationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            // `allow` tries plain first; no driver here can fall back that way round, and
            // plain-then-TLS only matters for servers that refuse plain, which `prefer` covers.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(ReplicationError::InvalidUrl(format!(
                    "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )))
            }
        })
    }
}

/// Where and how to connect to PostgreSQL, parsed from a URL such as
/// `postgres://user:secret@db.example.com:5432/app?sslmode=verify-full&sslrootcert=/ca.pem`.
///
/// ```
/// use pgrealm_runtime::replication::{PgConnectOptions, SslMode};
/// let options = PgConnectOptions::from_url("postgres://app:pw@127.0.0.1:5433/shop?sslmode=require")?;
/// assert_eq!(options.ssl_mode(), SslMode::Require);
/// assert_eq!(options.database(), "shop");
/// # Ok::<(), pgrealm_runtime::replication::ReplicationError>(())
/// ```
#[derive(Clone)]
pub struct PgConnectOptions {
    sql: tokio_postgres::Config,
    ssl_mode: SslMode,
    root_cert: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for PgConnectOptions {
    // Hand-written so the password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnectOptions")
            .field("target", &self.target())
            .field("ssl_mode", &self.ssl_mode)
            .field("root_cert", &self.root_cert)
            .finish_non_exhaustive()
    }
}

impl PgConnectOptions {
    /// Parse a `postgres://` or `postgresql://` URL. TLS parameters: `sslmode` (disable, allow,
    /// prefer, require, verify-ca, verify-full), `sslrootcert`, `sslcert` + `sslkey`; the rest
    /// (host, port, user, password, database, `application_name`, `options`, …) as libpq.
    pub fn from_url(url: &str) -> Result<Self, ReplicationError> {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (url, None),
        };
        if !(base.starts_with("postgres://") || base.starts_with("postgresql://")) {
            return Err(ReplicationError::InvalidUrl(
                "it must start with postgres:// or postgresql://".into(),
            ));
        }
        let mut ssl_mode = SslMode::default();
        let mut root_cert = None;
        let (mut cert, mut key) = (None, None);
        let mut passed_on = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = percent_decode(value)?;
            match name {
                "sslmode" => ssl_mode = decoded.parse()?,
                "sslrootcert" => root_cert = Some(PathBuf::from(decoded)),
                "sslcert" => cert = Some(PathBuf::from(decoded)),
                "sslkey" => key = Some(PathBuf::from(decoded)),
                _ => passed_on.push(pair),
            }
        }
        let client_cert = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(ReplicationError::InvalidUrl(
                    "sslcert and sslkey must be given together".into(),
                ))
            }
        };
        let rest = if passed_on.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", passed_on.join("&"))
        };
        let mut sql = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| ReplicationError::InvalidUrl(e.to_string()))?;
        if sql.get_user().is_none() {
            return Err(ReplicationError::InvalidUrl(
                "no user name; write it before the host: postgres://user@host/db".into(),
            ));
        }
        if sql.get_hosts().len() > 1 {
            return Err(ReplicationError::InvalidUrl(
                "several hosts are not supported: replication needs one primary server".into(),
            ));
        }
        if sql.get_hosts().is_empty() {
            sql.host("localhost");
        }
        sql.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(PgConnectOptions {
            sql,
            ssl_mode,
            root_cert,
            client_cert,
        })
    }

    /// The TLS mode.
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// The database name (the user name when the URL names none, as libpq does).
    pub fn database(&self) -> &str {
        self.sql
            .get_dbname()
            .or(self.sql.get_user())
            .unwrap_or_default()
    }

    /// The user name.
    pub fn user(&self) -> &str {
        self.sql.get_user().unwrap_or_default()
    }

    /// `host:port/database as user`, for messages (never the password).
    pub fn target(&self) -> String {
        format!(
            "{}:{}/{} as {}",
            self.host(),
            self.port(),
            self.database(),
            self.user()
        )
    }

    fn host(&self) -> String {
        match self.sql.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(Host::Unix(path)) => path.display().to_string(),
            None => "localhost".into(),
        }
    }

    fn port(&self) -> u16 {
        self.sql.get_ports().first().copied().unwrap_or(5432)
    }

    fn password(&self) -> String {
        self.sql
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default()
    }

    /// Open an ordinary SQL connection; its connection task runs on the current tokio runtime
    /// and ends when the returned client is dropped.
    pub async fn connect_sql(&self) -> Result<tokio_postgres::Client, ReplicationError> {
        let connect_error = |source| ReplicationError::Connect {
            target: self.target(),
            source,
        };
        let client = if self.ssl_mode == SslMode::Disable {
            let (client, connection) = self
                .sql
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(connect_error)?;
            tokio::spawn(log_connection_end(connection));
            client
        } else {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.rustls_config()?);
            let (client, connection) = self.sql.connect(tls).await.map_err(connect_error)?;
            tokio::spawn(log_connection_end(connection));
            client
        };
        Ok(client)
    }

    /// The replication client's settings for `slot` and `publication`, with pgrealm's defaults
    /// (see [`super::StreamOptions`]).
    pub(crate) fn replication_config(&self, slot: &str, publication: &str) -> ReplicationConfig {
        let mut config = ReplicationConfig::new(
            self.host(),
            self.user(),
            self.password(),
            self.database(),
            slot,
            publication,
        )
        .with_port(self.port())
        .with_tls(self.replication_tls());
        if let Some(name) = self.sql.get_application_name() {
            config = config.with_application_name(name);
        }
        if let Some(options) = self.sql.get_options() {
            config = config.with_options(options);
        }
        config
    }

    fn replication_tls(&self) -> TlsConfig {
        let mut tls = match self.ssl_mode {
            SslMode::Disable => TlsConfig::disabled(),
            SslMode::Prefer => TlsConfig {
                mode: ReplSslMode::Prefer,
                ..TlsConfig::default()
            },
            SslMode::Require => TlsConfig::require(),
            SslMode::VerifyCa => TlsConfig::verify_ca(self.root_cert.clone()),
            SslMode::VerifyFull => TlsConfig::verify_full(self.root_cert.clone()),
        };
        if let Some((cert, key)) = &self.client_cert {
            tls = tls.with_client_cert(cert.clone(), key.clone());
        }
        if self.ssl_mode != SslMode::Disable {
            install_crypto_provider();
        }
        tls
    }

    fn rustls_config(&self) -> Result<rustls::ClientConfig, ReplicationError> {
        super::tls::client_config(
            self.ssl_mode,
            self.root_cert.as_deref(),
            self.client_cert
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
        )
    }
}

/// rustls needs one process-wide crypto provider when more than one is compiled in (the
/// replication crate enables rustls' defaults, which bring a second); pgrealm uses ring.
pub(crate) fn install_crypto_provider() {
    // Err means one is installed already, by us or by the application: either is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn log_connection_end<C>(connection: C)
where
    C: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(error) = connection.await {
        tracing::debug!(%error, "PostgreSQL connection ended");
    }
}

fn percent_decode(value: &str) -> Result<String, ReplicationError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    ReplicationError::InvalidUrl(format!("bad percent escape in {value:?}"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ReplicationError::InvalidUrl(format!("{value:?} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_url_parses_for_both_drivers() {
        let options = PgConnectOptions::from_url(
            "postgresql://rep%40x:p%26ss@db.local:6543/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=pgrealm",
        )
        .unwrap();
        assert_eq!(options.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(options.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(options.target(), "db.local:6543/app as rep@x");
        let config = options.replication_config("s", "p");
        assert_eq!(config.host, "db.local");
        assert_eq!(config.port, 6543);
        assert_eq!(config.user, "rep@x");
        assert_eq!(config.password, "p&ss");
        assert_eq!(config.database, "app");
        assert_eq!(config.tls.mode, ReplSslMode::VerifyFull);
        assert_eq!(config.application_name.as_deref(), Some("pgrealm"));
        assert!(
            !format!("{options:?}").contains("p&ss"),
            "the password leaked into Debug"
        );
    }

    #[test]
    fn defaults_follow_libpq() {
        let options = PgConnectOptions::from_url("postgres://me@localhost").unwrap();
        assert_eq!(options.ssl_mode(), SslMode::Prefer);
        assert_eq!(options.database(), "me");
        assert_eq!(options.port(), 5432);
    }

    #[test]
    fn bad_urls_say_what_is_expected() {
        for (url, hint) in [
            ("mysql://x@y/z", "postgres://"),
            ("postgres://x@y/z?sslmode=sometimes", "verify-full"),
            ("postgres://x@y/z?sslcert=/a", "together"),
            ("postgres://y/z", "user"),
            ("postgres://x@y/z?sslrootcert=%zz", "percent"),
        ] {
            let err = PgConnectOptions::from_url(url).unwrap_err().to_string();
            assert!(err.contains(hint), "{url}: {err}");
        }
    }
}
