//! The object server on the network: the HTTP + WebSocket API over the realm store.
//!
//! Realm paths contain slashes, so routes put the realm path first and the action after `/-/`
//! (`/v1/realms/u1/myRealm/-/objects/Bus/5`). Every request is authenticated before anything is
//! read or written; paths are validated by [`RealmPath`] (no `..`, no empty segments, bounded
//! length — percent-encoded forms are decoded first, so they meet the same rules). Request bodies
//! and WebSocket messages have size limits. This module never talks to PostgreSQL.

mod admin;
mod error;
mod streams;
mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Json as JsonBody;
use axum::Router;
use pgrealm_schema::{Class, Object};
use regex::Regex;
use serde::Deserialize;
use serde_json::{json, Value as Json};
use tokio::net::TcpListener;

pub(crate) use admin::{MAX_LOCATE_KEYS, MAX_METADATA_KEYS, MAX_OBJECT_KEYS};
pub(crate) use error::ApiError;
pub use wire::{changeset_from_json, changeset_to_json};

use crate::auth::{authorize, Access, Identity, Keys};
use crate::json::{key_from_json, object_from_json, object_to_json};
use crate::metrics::Metrics;
use crate::store::{RealmPath, Store, Subscription};

/// Limits and access rules of a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Realm path regexes every signed-in user may read.
    pub readable: Vec<Regex>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Largest WebSocket message accepted from a client, in bytes.
    pub max_ws_message_bytes: usize,
    /// Most changesets one `changes` request returns.
    pub max_changes_per_request: usize,
    /// Longest user token lifetime the token endpoint issues.
    pub max_token_ttl_seconds: i64,
    /// Largest request body (and feed subscription message) of the admin-only sync endpoints,
    /// in bytes: it bounds the largest PostgreSQL transaction a remote engine sends as one
    /// commit (larger ones it streams in requests of a few MiB each, see
    /// `/v1/admin/streams`). Checked only after the admin token.
    pub max_admin_body_bytes: usize,
    /// How long a streamed write (`/v1/admin/streams`) may wait for its next request before
    /// the server aborts it: it holds the store's write lock, which a dead engine must not keep.
    pub stream_idle_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            readable: Vec::new(),
            max_body_bytes: 16 * 1024 * 1024,
            max_ws_message_bytes: 64 * 1024,
            max_changes_per_request: 1000,
            max_token_ttl_seconds: 30 * 24 * 3600,
            max_admin_body_bytes: 1024 * 1024 * 1024,
            stream_idle_timeout: Duration::from_secs(60),
        }
    }
}

struct Shared {
    store: Store,
    keys: Keys,
    metrics: Arc<Metrics>,
    options: ServerOptions,
    streams: streams::Streams,
}

/// The object server: cheap to clone, one per process.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("store", &self.shared.store)
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server over `store`, authenticating with `keys`.
    pub fn new(store: Store, keys: Keys, metrics: Arc<Metrics>, options: ServerOptions) -> Self {
        Server {
            shared: Arc::new(Shared {
                store,
                keys,
                metrics,
                options,
                streams: streams::Streams::default(),
            }),
        }
    }

    /// The axum router of the API.
    pub fn router(&self) -> Router {
        let limit = self.shared.options.max_body_bytes;
        // A route's own limit replaces the router-wide one; the admin extractor runs first.
        let admin_limit = DefaultBodyLimit::max(self.shared.options.max_admin_body_bytes);
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/metrics", get(metrics))
            .route("/v1/realms", get(list_realms))
            .route("/v1/tokens", post(issue_token))
            .route("/v1/realms/{*rest}", get(realm_get).post(realm_post))
            .route("/v1/admin/read", post(admin::read).layer(admin_limit))
            .route("/v1/admin/commit", post(admin::commit).layer(admin_limit))
            .route("/v1/admin/feed", get(admin::feed))
            .route("/v1/admin/streams", post(streams::open))
            .route("/v1/admin/streams/release", post(streams::release))
            .route("/v1/admin/streams/{id}", delete(streams::abort))
            .route(
                "/v1/admin/streams/{id}/ops",
                post(streams::ops).layer(admin_limit),
            )
            .route("/v1/admin/streams/{id}/read", post(streams::read))
            .route(
                "/v1/admin/streams/{id}/commit",
                post(streams::commit).layer(admin_limit),
            )
            .fallback(|| async {
                ApiError::not_found(
                    "no such endpoint; the API lives under /v1/realms/<realm path>/-/<action>",
                )
            })
            .layer(DefaultBodyLimit::max(limit))
            .with_state(self.clone())
    }

    /// Serve on `listener` until `shutdown` resolves; requests in flight finish first.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// Only `GET /healthz` and `GET /metrics`, for a process that syncs a remote object server and
/// serves no realms itself (the engine's remote mode), so its own counters can be scraped.
pub fn health_and_metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics_response(&metrics) }
            }),
        )
        .fallback(|| async {
            ApiError::not_found(
                "this process syncs a remote object server (realm.url) and serves only /healthz \
                 and /metrics; the realms' API is on that server",
            )
        })
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The caller, from `Authorization: Bearer <token>` (or `?access_token=` on WebSocket
/// upgrades, which browsers cannot give headers).
struct Caller(Identity);

impl FromRequestParts<Server> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, server: &Server) -> Result<Self, ApiError> {
        Metrics::add(&server.shared.metrics.http_requests, 1);
        let token = bearer(&parts.headers).or_else(|| {
            let is_ws = parts
                .headers
                .get(header::UPGRADE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
            if !is_ws {
                return None;
            }
            parts.uri.query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("access_token="))
                    .map(str::to_owned)
            })
        });
        let token = token.unwrap_or_default();
        Ok(Caller(server.shared.keys.verify(&token, now())?))
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

async fn metrics(State(server): State<Server>) -> Response {
    metrics_response(&server.shared.metrics)
}

/// The Prometheus text exposition of `metrics`.
fn metrics_response(metrics: &Metrics) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
        .into_response()
}

fn require_admin(who: &Identity) -> Result<(), ApiError> {
    match who {
        Identity::Admin => Ok(()),
        Identity::User(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this endpoint needs the admin token",
        )),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

async fn list_realms(
    State(server): State<Server>,
    Caller(who): Caller,
) -> Result<JsonBody<Json>, ApiError> {
    require_admin(&who)?;
    let store = server.shared.store.clone();
    let realms = blocking(move || Ok(store.snapshot()?.realms()?)).await?;
    let realms: Vec<Json> = realms
        .iter()
        .map(|r| json!({"path": r.path.as_str(), "version": r.version}))
        .collect();
    Ok(JsonBody(json!({ "realms": realms })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user: String,
    ttl_seconds: Option<i64>,
}

async fn issue_token(
    State(server): State<Server>,
    Caller(who): Caller,
    body: Result<JsonBody<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<JsonBody<Json>, ApiError> {
    require_admin(&who)?;
    let JsonBody(req) = body.map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"user\": \"…\", \"ttl_seconds\": N}}: {e}"
        ))
    })?;
    let ttl = req.ttl_seconds.unwrap_or(24 * 3600);
    if ttl <= 0 || ttl > server.shared.options.max_token_ttl_seconds {
        return Err(ApiError::bad_request(format!(
            "ttl_seconds must be between 1 and {}",
            server.shared.options.max_token_ttl_seconds
        )));
    }
    let issued_at = now();
    let token = server
        .shared
        .keys
        .issue(&req.user, ttl, issued_at)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(JsonBody(
        json!({"token": token, "user": req.user, "expires_at": issued_at + ttl}),
    ))
}

/// `<realm path>/-/<action>` split and checked for the caller.
///
/// The raw URI path is decoded segment by segment, so an encoded `/` (`%2F`) cannot smuggle a
/// separator into a segment, and encoded dots meet the same rules as plain ones.
fn split_target(
    uri: &Uri,
    who: &Identity,
    access: Access,
    server: &Server,
) -> Result<(RealmPath, Vec<String>), ApiError> {
    let raw = uri.path().strip_prefix("/v1/realms/").unwrap_or("");
    let segments = raw
        .split('/')
        .map(|s| {
            let decoded = percent_decode(s)?;
            if decoded.contains('/') {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_path",
                    format!("segment {s:?} encodes a `/`: realm path segments may not contain one"),
                ));
            }
            Ok(decoded)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rest = segments.join("/");
    let Some((path, action)) = rest.split_once("/-/") else {
        return Err(ApiError::not_found(
            "name an action after the realm path: /v1/realms/<realm path>/-/objects/<Class>",
        ));
    };
    let path = RealmPath::parse_for_user(&format!("/{path}"), who.user_id())?;
    authorize(who, path.as_str(), access, &server.shared.options.readable)?;
    Ok((path, action.split('/').map(str::to_owned).collect()))
}

fn class<'a>(server: &'a Server, name: &str) -> Result<&'a Class, ApiError> {
    server.shared.store.schema().class(name).ok_or_else(|| {
        let known: Vec<&str> = server
            .shared
            .store
            .schema()
            .classes
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        ApiError::not_found(format!(
            "the schema has no class `{name}` (classes: {})",
            known.join(", ")
        ))
    })
}

#[derive(Deserialize)]
struct Since {
    since: Option<u64>,
    limit: Option<usize>,
}

async fn realm_get(
    State(server): State<Server>,
    Caller(who): Caller,
    uri: Uri,
    Query(since): Query<Since>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let (path, action) = split_target(&uri, &who, Access::Read, &server)?;
    let action: Vec<&str> = action.iter().map(String::as_str).collect();
    let store = server.shared.store.clone();
    match action.as_slice() {
        ["schema"] => {
            let view = blocking(move || Ok(store.realm(&path)?)).await?;
            let schema = match view {
                Some(v) => v.schema()?,
                None => pgrealm_schema::Schema::default(),
            };
            Ok(JsonBody(json!({ "classes": schema.classes })).into_response())
        }
        ["objects", class_name] => {
            let class = class(&server, class_name)?.name.clone();
            let objects = blocking(move || match store.realm(&path)? {
                Some(view) => Ok(view.objects(&class)?),
                None => Ok(Vec::new()),
            })
            .await?;
            let objects: Vec<Json> = objects.iter().map(object_to_json).collect();
            Ok(JsonBody(json!({ "objects": objects })).into_response())
        }
        ["objects", class_name, pk] => {
            let class = class(&server, class_name)?;
            let key = key_from_json(store.schema(), class, &Json::String((*pk).to_owned()))?;
            let class = class.name.clone();
            let object = blocking(move || match store.realm(&path)? {
                Some(view) => Ok(view.object(&class, &key)?),
                None => Ok(None),
            })
            .await?;
            match object {
                Some(o) => Ok(JsonBody(object_to_json(&o)).into_response()),
                None => Err(ApiError::not_found(format!("no {class_name} with key {pk} in this realm"))),
            }
        }
        ["changes"] => {
            let after = since.since.unwrap_or(0);
            let limit = since
                .limit
                .unwrap_or(server.shared.options.max_changes_per_request)
                .min(server.shared.options.max_changes_per_request);
            let (changes, version) = blocking(move || {
                let snapshot = store.snapshot()?;
                let version = snapshot.realm(&path)?.map_or(0, |v| v.version());
                Ok((snapshot.changes(&path, after, limit)?, version))
            })
            .await?;
            let changes: Vec<Json> = changes.iter().map(changeset_to_json).collect();
            Ok(JsonBody(json!({ "changes": changes, "version": version })).into_response())
        }
        ["watch"] => {
            let Ok(ws) = ws else {
                return Err(ApiError::bad_request("watch needs a WebSocket upgrade"));
            };
            let after = since.since.unwrap_or(0);
            // Refuse a pruned start before upgrading, so the client gets a real status.
            let (check_store, check_path) = (store.clone(), path.clone());
            blocking(move || {
                check_store.changes(&check_path, after, 1)?;
                Ok(())
            })
            .await?;
            let max = server.shared.options.max_ws_message_bytes;
            Ok(ws
                .max_message_size(max)
                .max_frame_size(max)
                .on_upgrade(move |socket| watch(socket, store, path, after)))
        }
        _ => Err(ApiError::not_found(format!(
            "unknown action `{}`; use schema, objects/<Class>, objects/<Class>/<pk>, changes?since=V, watch?since=V or transactions",
            action.join("/")
        ))),
    }
}

async fn watch(mut socket: WebSocket, store: Store, path: RealmPath, after: u64) {
    let pattern = Regex::new(&format!("^{}$", regex::escape(path.as_str())))
        .expect("an escaped path is a valid regex");
    let mut feed = store.subscribe(Subscription::new(pattern).resume_from(path, after));
    loop {
        tokio::select! {
            next = feed.next() => match next {
                Ok(changeset) => {
                    let text = changeset_to_json(&changeset).to_string();
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let body = json!({"error": {"code": "feed", "message": e.to_string()}}).to_string();
                    let _ = socket.send(Message::Text(body.into())).await;
                    return;
                }
            },
            incoming = socket.recv() => match incoming {
                // Clients only need to send pings or close; anything else is ignored.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            // A periodic ping keeps proxies from closing an idle watch.
            _ = tokio::time::sleep(Duration::from_secs(30)) => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransactionRequest {
    ops: Vec<Op>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Op {
    Put { class: String, object: Json },
    Delete { class: String, pk: Json },
}

/// An op whose class and values have been checked against the schema.
enum CheckedOp {
    Put(Object),
    Delete(String, pgrealm_schema::PrimaryKey),
}

async fn realm_post(
    State(server): State<Server>,
    Caller(who): Caller,
    uri: Uri,
    body: Result<JsonBody<TransactionRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let (path, action) = split_target(&uri, &who, Access::Write, &server)?;
    if action != ["transactions"] {
        return Err(ApiError::not_found(
            "POST is for /v1/realms/<realm path>/-/transactions",
        ));
    }
    let JsonBody(req) = body.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "payload_too_large" } else { "bad_request" };
        ApiError::new(
            status,
            code,
            format!(
                "expected {{\"ops\":[{{\"put\":{{\"class\":…,\"object\":{{…}}}}}}, {{\"delete\":{{\"class\":…,\"pk\":…}}}}]}}: {}",
                e.body_text()
            ),
        )
    })?;
    let store = server.shared.store.clone();
    let schema = store.schema();
    // Every op is checked before anything is written: a bad op anywhere writes nothing.
    let mut checked = Vec::new();
    for (i, op) in req.ops.into_iter().enumerate() {
        let at = |e: ApiError| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_op",
                format!("ops[{i}]: {}", e.message()),
            )
        };
        match op {
            Op::Put { class: c, object } => {
                let class = class(&server, &c).map_err(at)?;
                let object = object_from_json(schema, class, &object).map_err(|e| at(e.into()))?;
                checked.push(CheckedOp::Put(object));
            }
            Op::Delete { class: c, pk } => {
                let class = class(&server, &c).map_err(at)?;
                let key = key_from_json(schema, class, &pk).map_err(|e| at(e.into()))?;
                checked.push(CheckedOp::Delete(class.name.clone(), key));
            }
        }
    }
    let metrics = server.shared.metrics.clone();
    let version = blocking(move || {
        let mut tx = store.begin_write("app");
        for op in checked {
            match op {
                CheckedOp::Put(object) => tx.put_object(&path, object)?,
                CheckedOp::Delete(class, key) => tx.delete_object(&path, &class, key)?,
            }
        }
        let info = tx.commit()?;
        let version = match info.version_of(&path) {
            Some(v) => v,
            None => store.realm(&path)?.map_or(0, |v| v.version()),
        };
        Ok::<u64, ApiError>(version)
    })
    .await?;
    Metrics::add(&metrics.api_transactions, 1);
    Ok(JsonBody(json!({ "version": version })).into_response())
}

/// Decode `%XX` escapes of one path segment; invalid escapes or non-UTF-8 results are refused.
fn percent_decode(segment: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("segment {segment:?} has an invalid percent-encoding"),
        )
    };
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}
