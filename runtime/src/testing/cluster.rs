//! One private PostgreSQL cluster: `initdb` into a temporary directory, start, stop, restart,
//! create databases, and remove everything afterwards — also when the owning process dies.
//!
//! Cleanup does not rely on `Drop` alone (a `static` never drops, and a killed process runs no
//! destructors): at start we spawn a tiny watchdog shell that blocks reading a pipe whose only
//! writer is this process. When the cluster drops, or the process exits, panics or is killed,
//! the kernel closes the pipe, the read returns, and the watchdog stops the server (SIGQUIT, an
//! immediate shutdown) and removes the directory.

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use super::binaries::find_bin_dir;
use super::user::ServerUser;
use super::HarnessError;

/// The superuser role of every test cluster (`initdb -U postgres`), trusted from 127.0.0.1.
pub const SUPERUSER: &str = "postgres";

/// Members of this role must authenticate with SCRAM-SHA-256 over TCP (see
/// [`PgCluster::create_login_role`]); everyone else is trusted.
const SCRAM_GROUP: &str = "pgrealm_scram_auth";
/// Members of this role must authenticate with md5 over TCP.
const MD5_GROUP: &str = "pgrealm_md5_auth";

/// How often we try another port when the one we picked was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// The watchdog: `$1` is the cluster directory, `$2` the data directory. It ignores terminal
/// signals (Ctrl-C must not kill it before it cleans up) and waits for EOF on stdin.
const WATCHDOG_SCRIPT: &str = r#"
trap '' HUP INT TERM
while read -r _line; do :; done
pidfile="$2/postmaster.pid"
if [ -f "$pidfile" ]; then
  pid=$(head -n 1 "$pidfile")
  if [ -n "$pid" ] && kill -QUIT "$pid" 2>/dev/null; then
    i=0
    while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done
    kill -KILL "$pid" 2>/dev/null
  fi
fi
rm -rf "$1"
"#;

/// A private PostgreSQL server for tests (and the `demo` command), listening on 127.0.0.1 at
/// a free port, with `wal_level = logical`, 20 replication slots and wal senders, and
/// `trust` authentication for [`SUPERUSER`] (also for replication connections).
///
/// Use [`PgCluster::shared`] in tests: one cluster per test process, a fresh database per test.
/// A test that stops or restarts the server should own its cluster ([`PgCluster::start`]) so it
/// does not pull the server from under tests running beside it.
///
/// ```no_run
/// # async fn demo() -> Result<(), pgrealm_runtime::testing::HarnessError> {
/// use pgrealm_runtime::testing::PgCluster;
///
/// let db = PgCluster::shared().fresh_database()?;
/// let client = db.connect().await?;
/// client.batch_execute("CREATE TABLE t (id bigint PRIMARY KEY)").await.unwrap();
/// println!("psql {}", db.url);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PgCluster {
    bin_dir: PathBuf,
    dir: PathBuf,
    port: u16,
    user: ServerUser,
    /// Serializes stop/start; `true` while the server runs.
    running: Mutex<bool>,
    /// Dropping it (its stdin) tells the watchdog to clean up.
    watchdog: Mutex<Option<Child>>,
}

/// A database created for one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// The database name (unique in its cluster).
    pub name: String,
    /// `postgres://postgres@127.0.0.1:<port>/<name>`.
    pub url: String,
    /// The server's port.
    pub port: u16,
}

impl TestDb {
    /// Connect as the superuser; the connection runs on a task of the current tokio runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, HarnessError> {
        connect(&self.url).await
    }
}

/// How a role made by [`PgCluster::create_login_role`] authenticates over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordAuth {
    /// `scram-sha-256`.
    Scram,
    /// `md5` (the password is stored as an md5 hash).
    Md5,
}

static SHARED: OnceLock<Result<PgCluster, String>> = OnceLock::new();
static DATABASE_COUNTER: AtomicU64 = AtomicU64::new(0);

impl PgCluster {
    /// The cluster shared by every test of this process, started on first use.
    ///
    /// # Panics
    /// When the cluster cannot start; the message says why and what to do (for example
    /// `PostgreSQL binaries not found; install them with: apt-get install -y postgresql`).
    pub fn shared() -> &'static PgCluster {
        match Self::try_shared() {
            Ok(cluster) => cluster,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`PgCluster::shared`] without the panic.
    pub fn try_shared() -> Result<&'static PgCluster, HarnessError> {
        // The error is kept as text: a failed start is not retried by every test.
        SHARED
            .get_or_init(|| PgCluster::start().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| HarnessError::SharedUnavailable(e.clone()))
    }

    /// Create and start a new cluster. It is stopped and removed when dropped, or when this
    /// process exits in any way.
    pub fn start() -> Result<PgCluster, HarnessError> {
        let bin_dir = find_bin_dir()?;
        let user = ServerUser::choose()?;
        let dir = tempfile::Builder::new()
            .prefix("pgrealm-pg-")
            .tempdir_in(parent_dir_for(user))
            .map_err(|e| HarnessError::io("creating the cluster's temporary directory", e))?
            .keep();
        let mut cluster = PgCluster {
            bin_dir,
            dir,
            port: 0,
            user,
            running: Mutex::new(false),
            watchdog: Mutex::new(None),
        };
        // From here on `cluster` owns the directory: any early return drops it and cleans up.
        cluster.spawn_watchdog()?;
        user.chown(&cluster.dir)?;
        cluster.initdb()?;
        cluster.start_on_free_port()?;
        cluster.batch_execute(
            "postgres",
            &format!("CREATE ROLE {SCRAM_GROUP} NOLOGIN; CREATE ROLE {MD5_GROUP} NOLOGIN;"),
        )?;
        Ok(cluster)
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host to connect to: always `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The directory of the PostgreSQL programs (`pg_recvlogical`, `psql`, … live here too).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The superuser role name ([`SUPERUSER`]).
    pub fn superuser(&self) -> &'static str {
        SUPERUSER
    }

    /// URL of database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@127.0.0.1:{}/{}",
            self.port,
            percent_encode(db)
        )
    }

    /// URL of the `postgres` database as the superuser.
    pub fn superuser_url(&self) -> String {
        self.url("postgres")
    }

    /// URL of database `db` as `role` with `password`.
    pub fn url_as(&self, role: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            percent_encode(role),
            percent_encode(password),
            self.port,
            percent_encode(db)
        )
    }

    /// The server log so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Connect to database `db` as the superuser; the connection runs on a task of the
    /// current tokio runtime.
    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client, HarnessError> {
        connect(&self.url(db)).await
    }

    /// Create database `name` and return its URL.
    pub fn create_database(&self, name: &str) -> Result<String, HarnessError> {
        self.batch_execute(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        )?;
        Ok(self.url(name))
    }

    /// Create a database with a name unique in this cluster, derived from the current test's
    /// name (tests run on threads named after them) so a leftover is easy to place.
    pub fn fresh_database(&self) -> Result<TestDb, HarnessError> {
        let n = DATABASE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let thread = std::thread::current();
        let hint: String = thread
            .name()
            .unwrap_or("db")
            .rsplit("::")
            .next()
            .unwrap_or("db")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(48)
            .collect();
        let name = format!("t{n}_{hint}");
        let url = self.create_database(&name)?;
        Ok(TestDb {
            name,
            url,
            port: self.port,
        })
    }

    /// Drop database `name`, disconnecting its sessions.
    pub fn drop_database(&self, name: &str) -> Result<(), HarnessError> {
        self.batch_execute(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name)),
        )
    }

    /// Create a login role that must authenticate with a password over TCP. With `replication`
    /// it may open replication connections. Connect with [`PgCluster::url_as`].
    pub fn create_login_role(
        &self,
        role: &str,
        password: &str,
        auth: PasswordAuth,
        replication: bool,
    ) -> Result<(), HarnessError> {
        let (encryption, group) = match auth {
            PasswordAuth::Scram => ("scram-sha-256", SCRAM_GROUP),
            PasswordAuth::Md5 => ("md5", MD5_GROUP),
        };
        let replication = if replication { " REPLICATION" } else { "" };
        self.batch_execute(
            "postgres",
            &format!(
                "SET password_encryption = '{encryption}'; \
                 CREATE ROLE {} LOGIN{replication} PASSWORD {} IN ROLE {group};",
                quote_ident(role),
                quote_literal(password)
            ),
        )
    }

    /// Run SQL statements in database `db` as the superuser, from synchronous code or from
    /// inside a tokio runtime alike (it runs on its own thread).
    pub fn batch_execute(&self, db: &str, sql: &str) -> Result<(), HarnessError> {
        let url = self.url(db);
        let sql = sql.to_owned();
        let action = format!("running SQL in database `{db}` of the test cluster");
        std::thread::spawn(move || -> Result<(), HarnessError> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| HarnessError::io("starting a tokio runtime for the harness", e))?;
            runtime.block_on(async {
                let client = connect(&url).await?;
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| HarnessError::sql(format!("{action}: {sql}"), e))
            })
        })
        .join()
        .unwrap_or_else(|_| {
            Err(HarnessError::io(
                "running SQL for the harness",
                std::io::Error::other("the SQL thread panicked"),
            ))
        })
    }

    /// Stop the server (fast shutdown: sessions are disconnected). The files stay until the
    /// cluster is dropped; [`PgCluster::start_again`] brings it back on the same port.
    pub fn stop(&self) -> Result<(), HarnessError> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if *running {
            self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"])?;
            *running = false;
        }
        Ok(())
    }

    /// Start a stopped server again, same port, same data.
    pub fn start_again(&self) -> Result<(), HarnessError> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if !*running {
            self.start_server()?;
            *running = true;
        }
        Ok(())
    }

    /// Stop and start the server, as an operator restarting PostgreSQL would.
    pub fn restart(&self) -> Result<(), HarnessError> {
        self.stop()?;
        self.start_again()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn spawn_watchdog(&mut self) -> Result<(), HarnessError> {
        let child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("pgrealm-pg-watchdog")
            .arg(&self.dir)
            .arg(self.data_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: Ctrl-C in a terminal must not reach it.
            .process_group(0)
            .spawn()
            .map_err(|e| HarnessError::io("starting the cleanup watchdog (`sh`)", e))?;
        *self.watchdog.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(())
    }

    fn server_command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        command.current_dir(&self.dir);
        for var in [
            "PGDATA",
            "PGPORT",
            "PGHOST",
            "PGUSER",
            "PGDATABASE",
            "PGOPTIONS",
        ] {
            command.env_remove(var);
        }
        self.user.apply(&mut command);
        command
    }

    fn initdb(&self) -> Result<(), HarnessError> {
        let mut command = self.server_command("initdb");
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C"])
            // A throwaway cluster: no need to wait for the disk.
            .arg("--no-sync");
        run(command, "initdb")?;
        let data = self.data_dir();
        let hba = format!(
            "# Written by pgrealm's test harness.\n\
             local all all trust\n\
             local replication all trust\n\
             host all +{SCRAM_GROUP} 127.0.0.1/32 scram-sha-256\n\
             host replication +{SCRAM_GROUP} 127.0.0.1/32 scram-sha-256\n\
             host all +{MD5_GROUP} 127.0.0.1/32 md5\n\
             host replication +{MD5_GROUP} 127.0.0.1/32 md5\n\
             host all all 127.0.0.1/32 trust\n\
             host replication all 127.0.0.1/32 trust\n"
        );
        write_file(&data.join("pg_hba.conf"), &hba)?;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .map_err(|e| HarnessError::io("opening postgresql.conf", e))?;
        conf.write_all(b"\ninclude 'pgrealm_test.conf'\n")
            .map_err(|e| HarnessError::io("writing postgresql.conf", e))?;
        Ok(())
    }

    /// Our settings live in their own file so a retry on another port rewrites it whole.
    fn write_settings(&self, port: u16) -> Result<(), HarnessError> {
        let settings = format!(
            "listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{}'\n\
             wal_level = logical\n\
             max_replication_slots = 20\n\
             max_wal_senders = 20\n\
             max_connections = 200\n\
             log_min_messages = warning\n",
            self.dir.display()
        );
        let path = self.data_dir().join("pgrealm_test.conf");
        write_file(&path, &settings)?;
        self.user.chown(&path)
    }

    fn start_on_free_port(&mut self) -> Result<(), HarnessError> {
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port()?;
            self.write_settings(self.port)?;
            match self.start_server() {
                Ok(()) => {
                    *self.running.get_mut().unwrap_or_else(|e| e.into_inner()) = true;
                    return Ok(());
                }
                // Someone took the port between our probe and the server's bind.
                Err(e) if port_was_taken(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt was made"))
    }

    fn start_server(&self) -> Result<(), HarnessError> {
        // A fresh log per start, so a failure shows only this attempt.
        write_file(&self.log_path(), "")?;
        self.user.chown(&self.log_path())?;
        let log = self.log_path();
        let log = log.to_string_lossy();
        match self.pg_ctl(&["start", "-w", "-t", "60", "-l", &log]) {
            Ok(_) => Ok(()),
            Err(e) => Err(HarnessError::ServerStart {
                reason: e.to_string(),
                log_path: self.log_path(),
                log: self.server_log(),
            }),
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<String, HarnessError> {
        let mut command = self.server_command("pg_ctl");
        command.arg("-D").arg(self.data_dir()).args(args);
        run(command, "pg_ctl")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let watchdog = self
            .watchdog
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut child) = watchdog {
            // Closing its stdin is the signal; then wait so the directory is gone when we return.
            drop(child.stdin.take());
            let _ = child.wait();
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Connect to `url` without TLS, driving the connection on a task of the current runtime.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, HarnessError> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| HarnessError::sql(format!("connecting to {url}"), e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("test connection ended: {e}");
        }
    });
    Ok(client)
}

fn run(mut command: Command, name: &str) -> Result<String, HarnessError> {
    let line = format!("{command:?}");
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HarnessError::io(format!("running {name}"), e))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(HarnessError::Command {
            command: line,
            status: out.status.to_string(),
            output: text,
        })
    }
}

/// Where the cluster directory goes: the system temporary directory, unless the server runs as
/// another user who could not reach it (a `TMPDIR` under root's home), then `/tmp`.
fn parent_dir_for(user: ServerUser) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let temp = std::env::temp_dir();
    if user == ServerUser::Current {
        return temp;
    }
    let reachable = temp
        .ancestors()
        .all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if reachable {
        temp
    } else {
        PathBuf::from("/tmp")
    }
}

fn port_was_taken(e: &HarnessError) -> bool {
    matches!(e, HarnessError::ServerStart { log, .. }
        if log.contains("could not bind") || log.contains("already in use"))
}

fn write_file(path: &Path, text: &str) -> Result<(), HarnessError> {
    std::fs::write(path, text)
        .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))
}

fn free_port() -> Result<u16, HarnessError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| HarnessError::io("finding a free port on 127.0.0.1", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| HarnessError::io("finding a free port on 127.0.0.1", e))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Percent-encode everything but unreserved URL characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
