//! What the remote-mode tests share: an object server on 127.0.0.1, in this process but on a
//! runtime and thread of its own, as a server in another process would be (the remote store
//! blocks its caller's thread on each request, so the server must not depend on the caller's
//! runtime), raw HTTP requests to it, a PostgreSQL → realm engine writing to it, and polling.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod lists;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrealm_runtime::auth::Keys;
use pgrealm_runtime::config::Config;
use pgrealm_runtime::metrics::Metrics;
use pgrealm_runtime::replication::PgConnectOptions;
use pgrealm_runtime::server::{Server, ServerOptions};
use pgrealm_runtime::sync::pg_to_realm::{
    PgToRealm, PgToRealmError, PgToRealmOptions, PgToRealmStats, Progress,
};
use pgrealm_runtime::testing::TestDb;
use pgrealm_runtime::{Store, StoreOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// An object server on 127.0.0.1:0, on its own runtime thread; stopped when dropped.
pub struct RemoteServer {
    _dir: tempfile::TempDir,
    /// The server's own (embedded) store, to check what arrived.
    pub store: Store,
    pub keys: Keys,
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub token_file: std::path::PathBuf,
    /// The server's counters (kept across restarts).
    pub metrics: Arc<Metrics>,
    options: ServerOptions,
    stop: Option<Stop>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RemoteServer {
    pub fn start() -> RemoteServer {
        RemoteServer::start_with(ServerOptions::default())
    }

    pub fn start_with(options: ServerOptions) -> RemoteServer {
        RemoteServer::start_with_store(options, StoreOptions::default())
    }

    /// A server whose store has `store_options` (a small cache, say).
    pub fn start_with_store(options: ServerOptions, store_options: StoreOptions) -> RemoteServer {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open_compiled::<transit::Schema>(dir.path().join("server"), store_options)
                .unwrap();
        let keys = Keys::load_or_create(&dir.path().join("server"), None).unwrap();
        let token_file = dir.path().join("admin.token");
        std::fs::write(&token_file, keys.admin_token()).unwrap();
        let metrics = Arc::new(Metrics::default());
        let (addr, stop, thread) = serve(&store, &keys, &metrics, &options, "127.0.0.1:0");
        RemoteServer {
            _dir: dir,
            store,
            keys,
            base: format!("http://{addr}"),
            addr,
            token_file,
            metrics,
            options,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stop the server (dropping every connection) and serve the same store again on the
    /// same address, as a restarted server process would.
    pub fn restart(&mut self) {
        self.restart_after(Duration::ZERO);
    }

    /// Stop the server, wait `down`, and serve the same store again on the same address: an
    /// outage long enough for the engine to hit it.
    pub fn restart_after(&mut self, down: Duration) {
        drop(self.stop.take());
        self.thread.take().unwrap().join().unwrap();
        std::thread::sleep(down);
        let (_, stop, thread) = serve(
            &self.store,
            &self.keys,
            &self.metrics,
            &self.options,
            &self.addr.to_string(),
        );
        self.stop = Some(stop);
        self.thread = Some(thread);
    }

    pub fn config(
        &self,
        db_url: &str,
        data: &std::path::Path,
        token_file: &std::path::Path,
    ) -> Config {
        let overrides = vec![
            format!("postgres.url={db_url}"),
            format!("realm.url={}", self.base),
            format!("realm.admin_token_file={}", token_file.display()),
            format!("realm.data_dir={}", data.display()),
            // The engine's own /healthz and /metrics, on a port of its own.
            "realm.listen=127.0.0.1:0".to_owned(),
            "sync.create_postgres_db=false".to_owned(),
        ];
        Config::from_parts("", None, |_| None, &overrides).unwrap()
    }

    /// One raw HTTP/1.1 request; the status and what came back (only the head after a
    /// WebSocket upgrade).
    pub async fn raw(
        &self,
        method: &str,
        target: &str,
        token: Option<&str>,
        extra: &str,
        body: &str,
    ) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let connection = if extra.is_empty() {
            "Connection: close\r\n"
        } else {
            ""
        };
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{connection}{extra}");
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut buf = [0u8; 4096];
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            }
            if complete(&out) {
                break;
            }
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    }
}

impl RemoteServer {
    /// Open a stream of origin `postgres` with raw HTTP as the admin; its id.
    /// A remote store of this server, as the sync engine's remote mode opens it (on the
    /// blocking pool: connecting blocks its caller).
    pub async fn connect(&self) -> Store {
        let (base, token) = (self.base.clone(), self.keys.admin_token().to_owned());
        let schema = transit::Schema::schema().clone();
        tokio::task::spawn_blocking(move || Store::connect_remote(&base, &token, schema))
            .await
            .unwrap()
            .unwrap()
    }

    /// `DELETE /v1/admin/streams/{id}` as the admin: the status and what came back.
    pub async fn abort_stream(&self, id: &str) -> (u16, String) {
        let admin = self.keys.admin_token().to_owned();
        self.raw(
            "DELETE",
            &format!("/v1/admin/streams/{id}"),
            Some(&admin),
            "",
            "",
        )
        .await
    }

    pub async fn open_stream(&self) -> String {
        let admin = self.keys.admin_token().to_owned();
        let (status, text) = self
            .raw(
                "POST",
                "/v1/admin/streams",
                Some(&admin),
                "",
                r#"{"origin":"postgres"}"#,
            )
            .await;
        assert_eq!(status, 200, "{text}");
        stream_id(&text)
    }
}

/// The stream id in the raw answer to `POST /v1/admin/streams`.
pub fn stream_id(answer: &str) -> String {
    answer
        .split("\"id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no stream id in {answer}"))
        .to_owned()
}

/// Whether `out` holds a whole answer: the head of a 101, or a head and its body.
fn complete(out: &[u8]) -> bool {
    let text = String::from_utf8_lossy(out);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    if head.starts_with("HTTP/1.1 101") {
        return true;
    }
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .is_some_and(|n| body.len() >= n)
}

impl Drop for RemoteServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Stop = tokio::sync::oneshot::Sender<()>;

/// Serve `store` on `bind` from a runtime on a thread of its own, until the sender is dropped.
fn serve(
    store: &Store,
    keys: &Keys,
    metrics: &Arc<Metrics>,
    options: &ServerOptions,
    bind: &str,
) -> (std::net::SocketAddr, Stop, std::thread::JoinHandle<()>) {
    let server = Server::new(
        store.clone(),
        keys.clone(),
        metrics.clone(),
        options.clone(),
    );
    let bind = bind.to_owned();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(&bind).await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            server
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        // Dropping the runtime here ends the upgraded WebSocket tasks too.
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (addr, stop, thread)
}

/// Poll `probe` (on the blocking pool: remote store calls block) until it returns `Some`.
pub async fn wait_for<T: Send + 'static>(
    what: &str,
    probe: impl Fn() -> Option<T> + Send + Sync + 'static,
) -> T {
    let probe = Arc::new(probe);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = probe.clone();
        if let Some(v) = tokio::task::spawn_blocking(move || p()).await.unwrap() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PostgreSQL → realm in remote mode, running on the test's runtime.
pub struct Engine {
    pub stats: Arc<PgToRealmStats>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), PgToRealmError>>,
}

/// An engine writing to `remote`, routing rows by `template` and streaming transactions past
/// `stream_after` operations, set up (its slot `stream_<database>`, checkpoint) but not running
/// yet.
pub async fn setup_engine(
    db: &TestDb,
    remote: &Store,
    template: &str,
    stream_after: usize,
) -> PgToRealm {
    setup_engine_with(db, remote, template, stream_after, false).await
}

/// [`setup_engine`], loading the tables into the realms first when `initial_load`
/// (`initialize_realm_from_postgres`).
pub async fn setup_engine_with(
    db: &TestDb,
    remote: &Store,
    template: &str,
    stream_after: usize,
    initial_load: bool,
) -> PgToRealm {
    let mut options = engine_options(db, template, stream_after);
    options.initialize_realm_from_postgres = initial_load;
    setup_engine_as(db, remote, options).await
}

/// The options [`setup_engine`] gives the engine: its slot and publication named after the
/// database.
pub fn engine_options(db: &TestDb, template: &str, stream_after: usize) -> PgToRealmOptions {
    let slot = format!("stream_{}", db.name).to_lowercase();
    let mut options = PgToRealmOptions::new(
        slot.clone(),
        slot,
        PgToRealmOptions::template(template).unwrap(),
    );
    options.stream_after_changes = stream_after;
    options.progress = Progress::Log;
    options
}

/// An engine with `options` against `remote`, set up.
pub async fn setup_engine_as(db: &TestDb, remote: &Store, options: PgToRealmOptions) -> PgToRealm {
    let sync = PgToRealm::new(
        PgConnectOptions::from_url(&db.url).unwrap(),
        options,
        remote.clone(),
        Arc::new(Metrics::default()),
    );
    sync.setup().await.unwrap();
    sync
}

/// Run an engine set up by [`setup_engine`].
pub fn run_engine(sync: PgToRealm) -> Engine {
    let stats = sync.stats();
    let (stop, stopped) = watch::channel(false);
    Engine {
        stats,
        stop,
        task: tokio::spawn(sync.run(stopped)),
    }
}

impl Engine {
    /// Stop the engine; it must have run without error.
    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }

    /// Drop the engine wherever it is (its task aborted), as a crash would leave it.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
        drop(self.stop);
    }
}
