//! The Rust client of the object server's HTTP + WebSocket API.
//!
//! Typed through the generated structs (`realm.write(|tx| tx.put(&bus))`, `objects::<Bus>()`)
//! and dynamic where no struct is at hand; changesets come back typed by the schema, so the sync
//! engine can follow a remote server exactly as it follows the embedded store.
//!
//! The admin-only sync endpoints (`/v1/admin/read`, `/v1/admin/commit`, `/v1/admin/feed`,
//! `/v1/admin/streams`) are reached through crate-internal calls here; the store's remote
//! backend (`store/remote.rs`, `store/remote_stream.rs`) gives them meaning.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use pgrealm_schema::{KeyType, Object, RealmObject, Schema};
use serde_json::{json, Value as Json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::json::{key_to_json, object_from_json, object_to_json};
use crate::server::changeset_from_json;
use crate::store::Changeset;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("server refused ({status}, {code}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error code (`unauthenticated`, `forbidden`, `not_found`, …).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached or the connection broke.
    #[error("cannot reach the object server at {url}: {reason}")]
    Connect {
        /// The server's base URL.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from the object server: {0}")]
    Protocol(String),
    /// A value did not fit the schema.
    #[error(transparent)]
    Value(#[from] pgrealm_schema::ValueError),
}

struct Inner {
    base: String,
    token: String,
    schema: Schema,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

/// A connection to one object server, as one caller (a user token or the admin token).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base)
            .finish_non_exhaustive()
    }
}

fn encode_path(path: &str) -> String {
    // Realm paths are `[A-Za-z0-9_.-]` segments (and `~`); anything else is escaped so the
    // server sees exactly the path given and refuses it if it is invalid.
    let mut out = String::new();
    for b in path.trim_start_matches('/').bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client of the server at `base_url` (`http://127.0.0.1:9080`) presenting `token`, for
    /// the classes of `schema`.
    pub fn new(base_url: &str, token: &str, schema: Schema) -> Client {
        let http = HttpClient::builder(TokioExecutor::new()).build_http();
        Client {
            inner: Arc::new(Inner {
                base: base_url.trim_end_matches('/').to_owned(),
                token: token.to_owned(),
                schema,
                http,
            }),
        }
    }

    /// The schema this client types values with.
    pub fn schema(&self) -> &Schema {
        &self.inner.schema
    }

    /// The server's base URL, as given (without a trailing `/`).
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// `POST /v1/admin/read`: one read of the store behind the server (admin only).
    pub(crate) async fn admin_read(&self, read: Json) -> Result<Json, ClientError> {
        self.request(Method::POST, "/v1/admin/read", Some(read))
            .await
    }

    /// `POST /v1/admin/commit`: one whole store write transaction (admin only).
    pub(crate) async fn admin_commit(&self, body: Json) -> Result<Json, ClientError> {
        self.request(Method::POST, "/v1/admin/commit", Some(body))
            .await
    }

    /// A request of a streamed write under `/v1/admin/streams` (admin only); `body` is JSON
    /// text, sent as it is.
    pub(crate) async fn admin_stream(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Json, ClientError> {
        self.request_bytes(method, &format!("/v1/admin/streams{path}"), body)
            .await
    }

    /// `GET /v1/admin/feed` upgraded to a WebSocket, subscribed with `subscribe` (admin only):
    /// the changesets of every matching realm, as JSON messages.
    pub(crate) async fn admin_feed(&self, subscribe: Json) -> Result<JsonSocket, ClientError> {
        let mut socket = self.connect_ws("/v1/admin/feed").await?;
        socket
            .socket
            .send(Message::Text(subscribe.to_string().into()))
            .await
            .map_err(|e| ClientError::Connect {
                url: self.inner.base.clone(),
                reason: e.to_string(),
            })?;
        Ok(socket)
    }

    /// Open a WebSocket to `path_and_query`, presenting the token.
    async fn connect_ws(&self, path_and_query: &str) -> Result<JsonSocket, ClientError> {
        let base = self.inner.base.replacen("http", "ws", 1);
        let url = format!("{base}{path_and_query}");
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let auth = format!("Bearer {}", self.inner.token)
            .parse()
            .map_err(|_| ClientError::Protocol("the token is not a valid header value".into()))?;
        req.headers_mut().insert(AUTHORIZATION, auth);
        let (socket, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(resp) => {
                    // The body is the API's JSON error when the server refused before upgrading.
                    let raw = resp
                        .body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default();
                    let body: Json = serde_json::from_str(&raw).unwrap_or_default();
                    ClientError::Api {
                        status: resp.status().as_u16(),
                        code: body["error"]["code"]
                            .as_str()
                            .unwrap_or("refused")
                            .to_owned(),
                        message: body["error"]["message"]
                            .as_str()
                            .map_or(raw.clone(), str::to_owned),
                    }
                }
                other => ClientError::Connect {
                    url: self.inner.base.clone(),
                    reason: other.to_string(),
                },
            })?;
        Ok(JsonSocket { socket })
    }

    /// A realm by path (`/~/myRealm` is the caller's own).
    pub fn realm(&self, path: &str) -> RemoteRealm {
        RemoteRealm {
            client: self.clone(),
            path: path.to_owned(),
        }
    }

    async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Json>,
    ) -> Result<Json, ClientError> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        self.request_bytes(method, path_and_query, body).await
    }

    async fn request_bytes(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Bytes>,
    ) -> Result<Json, ClientError> {
        let url = format!("{}{}", self.inner.base, path_and_query);
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header(AUTHORIZATION, format!("Bearer {}", self.inner.token));
        let body = match body {
            Some(b) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Full::new(b)
            }
            None => Full::new(Bytes::new()),
        };
        let req = req
            .body(body)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let connect = |e: &dyn std::fmt::Display| ClientError::Connect {
            url: self.inner.base.clone(),
            reason: e.to_string(),
        };
        let resp = self
            .inner
            .http
            .request(req)
            .await
            .map_err(|e| connect(&e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| connect(&e))?
            .to_bytes();
        let json: Json = serde_json::from_slice(&bytes).map_err(|_| {
            ClientError::Protocol(format!("{status}: {}", String::from_utf8_lossy(&bytes)))
        })?;
        if status != StatusCode::OK {
            let err = &json["error"];
            return Err(ClientError::Api {
                status: status.as_u16(),
                code: err["code"].as_str().unwrap_or("unknown").to_owned(),
                message: err["message"].as_str().unwrap_or("").to_owned(),
            });
        }
        Ok(json)
    }

    /// Every realm with its version (admin only).
    pub async fn realms(&self) -> Result<Vec<(String, u64)>, ClientError> {
        let json = self.request(Method::GET, "/v1/realms", None).await?;
        let list = json["realms"]
            .as_array()
            .ok_or_else(|| ClientError::Protocol("no `realms`".into()))?;
        Ok(list
            .iter()
            .filter_map(|r| Some((r["path"].as_str()?.to_owned(), r["version"].as_u64()?)))
            .collect())
    }

    /// Issue a user token valid for `ttl_seconds` (admin only).
    pub async fn issue_token(&self, user: &str, ttl_seconds: i64) -> Result<String, ClientError> {
        let json = self
            .request(
                Method::POST,
                "/v1/tokens",
                Some(json!({"user": user, "ttl_seconds": ttl_seconds})),
            )
            .await?;
        json["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Protocol("no `token`".into()))
    }
}

/// One realm on a server.
#[derive(Debug, Clone)]
pub struct RemoteRealm {
    client: Client,
    path: String,
}

/// The operations of one remote write transaction, sent atomically by [`RemoteRealm::write`].
#[derive(Debug, Default)]
pub struct RemoteTx {
    ops: Vec<Json>,
}

impl RemoteTx {
    /// Create or replace an object with every field of `object`.
    pub fn put<T: RealmObject>(&mut self, object: &T) -> &mut Self {
        self.put_object(&object.to_object())
    }

    /// Create or update an object from its dynamic form (absent properties stay as they are).
    pub fn put_object(&mut self, object: &Object) -> &mut Self {
        self.ops
            .push(json!({"put": {"class": object.class, "object": object_to_json(object)}}));
        self
    }

    /// Delete the object of class `T` with this key.
    pub fn delete<T: RealmObject>(&mut self, key: impl Into<T::Key>) -> &mut Self {
        let key = key.into().to_key();
        self.ops
            .push(json!({"delete": {"class": T::CLASS, "pk": key_to_json(&key)}}));
        self
    }
}

impl RemoteRealm {
    fn url(&self, action: &str) -> String {
        format!("/v1/realms/{}/-/{action}", encode_path(&self.path))
    }

    /// Run `build` to collect operations and commit them as one atomic transaction; returns the
    /// realm's version after it.
    pub async fn write(&self, build: impl FnOnce(&mut RemoteTx)) -> Result<u64, ClientError> {
        let mut tx = RemoteTx::default();
        build(&mut tx);
        let json = self
            .client
            .request(
                Method::POST,
                &self.url("transactions"),
                Some(json!({"ops": tx.ops})),
            )
            .await?;
        json["version"]
            .as_u64()
            .ok_or_else(|| ClientError::Protocol("no `version`".into()))
    }

    /// Every object of class `class`, dynamically.
    pub async fn objects_dynamic(&self, class: &str) -> Result<Vec<Object>, ClientError> {
        let schema = self.client.schema();
        let c = schema
            .class(class)
            .ok_or_else(|| ClientError::Protocol(format!("the schema has no class `{class}`")))?;
        let json = self
            .client
            .request(Method::GET, &self.url(&format!("objects/{class}")), None)
            .await?;
        let list = json["objects"]
            .as_array()
            .ok_or_else(|| ClientError::Protocol("no `objects`".into()))?;
        list.iter()
            .map(|o| object_from_json(schema, c, o).map_err(ClientError::from))
            .collect()
    }

    /// Every object of class `T`.
    pub async fn objects<T: RealmObject>(&self) -> Result<Vec<T>, ClientError> {
        self.objects_dynamic(T::CLASS)
            .await?
            .iter()
            .map(|o| T::from_object(o).map_err(ClientError::from))
            .collect()
    }

    /// The object of class `T` with this key, if the realm has it.
    pub async fn get<T: RealmObject>(
        &self,
        key: impl Into<T::Key>,
    ) -> Result<Option<T>, ClientError> {
        let schema = self.client.schema();
        let class = schema.class(T::CLASS).ok_or_else(|| {
            ClientError::Protocol(format!("the schema has no class `{}`", T::CLASS))
        })?;
        let key = match key.into().to_key() {
            pgrealm_schema::PrimaryKey::Int(i) => i.to_string(),
            pgrealm_schema::PrimaryKey::String(s) => encode_path(&s).replace('/', "%2F"),
            pgrealm_schema::PrimaryKey::Uuid(u) => u.to_string(),
        };
        match self
            .client
            .request(
                Method::GET,
                &self.url(&format!("objects/{}/{key}", T::CLASS)),
                None,
            )
            .await
        {
            Ok(json) => Ok(Some(T::from_object(&object_from_json(
                schema, class, &json,
            )?)?)),
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The changesets after version `since` (at most the server's page size) and the realm's
    /// current version.
    pub async fn changes(&self, since: u64) -> Result<(Vec<Changeset>, u64), ClientError> {
        let json = self
            .client
            .request(
                Method::GET,
                &self.url(&format!("changes?since={since}")),
                None,
            )
            .await?;
        let version = json["version"].as_u64().unwrap_or(0);
        let list = json["changes"]
            .as_array()
            .ok_or_else(|| ClientError::Protocol("no `changes`".into()))?;
        let changes = list
            .iter()
            .map(|c| changeset_from_json(self.client.schema(), c).map_err(ClientError::Protocol))
            .collect::<Result<_, _>>()?;
        Ok((changes, version))
    }

    /// Follow the realm's changesets after version `since`: catch up, then live.
    pub async fn watch(&self, since: u64) -> Result<Watch, ClientError> {
        let socket = self
            .client
            .connect_ws(&self.url(&format!("watch?since={since}")))
            .await?;
        Ok(Watch {
            socket,
            schema: self.client.schema().clone(),
        })
    }
}

/// A WebSocket whose messages are JSON texts.
pub(crate) struct JsonSocket {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl JsonSocket {
    /// The next JSON message (answering pings on the way); `None` when the server closed.
    pub(crate) async fn next(&mut self) -> Option<Result<Json, ClientError>> {
        loop {
            match self.socket.next().await? {
                Ok(Message::Text(text)) => {
                    return Some(
                        serde_json::from_str(&text)
                            .map_err(|e| ClientError::Protocol(e.to_string())),
                    )
                }
                Ok(Message::Ping(p)) => {
                    let _ = self.socket.send(Message::Pong(p)).await;
                }
                Ok(Message::Close(_)) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(ClientError::Protocol(e.to_string()))),
            }
        }
    }
}

/// A live stream of one realm's changesets; see [`RemoteRealm::watch`].
pub struct Watch {
    socket: JsonSocket,
    schema: Schema,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Watch {
    /// The next changeset; `None` when the server closed the stream.
    pub async fn next(&mut self) -> Option<Result<Changeset, ClientError>> {
        let json = match self.socket.next().await? {
            Ok(json) => json,
            Err(e) => return Some(Err(e)),
        };
        if let Some(err) = json.get("error") {
            return Some(Err(ClientError::Api {
                status: 0,
                code: err["code"].as_str().unwrap_or("feed").to_owned(),
                message: err["message"].as_str().unwrap_or("").to_owned(),
            }));
        }
        Some(changeset_from_json(&self.schema, &json).map_err(ClientError::Protocol))
    }
}
