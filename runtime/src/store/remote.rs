//! The remote backend of [`Store`]: the realms of an object server on the network, reached
//! through its admin-only sync endpoints (`server/admin.rs`) with the Rust client — the sync
//! engine's remote mode.
//!
//! What stays the same: a [`WriteTx`](super::WriteTx) still collects its operations and
//! metadata locally (values checked against the compiled schema at the call that supplies them);
//! its commit sends the whole buffer in one request, and the server rebuilds the transaction and
//! commits it atomically and durably before answering. So a commit across any number of realms,
//! with the sync engine's LSN checkpoint in its metadata, is still all or nothing, and "durable
//! before confirm" holds: the engine confirms a PostgreSQL position only after the answer. A
//! [`StreamingTx`](super::StreamingTx) keeps those guarantees with a transaction the server
//! holds open, fed in batches (see `remote_stream.rs`).
//!
//! What differs:
//! - Reads are not one snapshot: each answers as of its own request (see
//!   [`Snapshot`](super::Snapshot)).
//! - A commit whose answer is lost (timeout, broken connection) has an unknown outcome. It is
//!   reported as an error and never retried here: retrying could apply it twice. The engine
//!   stops, and on restart it reads the checkpoint from the server's metadata, which says
//!   whether that commit landed — so nothing is applied twice or lost.
//! - The change feed runs on the server and streams over one WebSocket; a broken connection is
//!   reopened from the last position received, with backoff, and reported on the way.
//!
//! The store API is synchronous and the client async: the requests run on a small runtime on a
//! thread of this backend's own, and the calling thread blocks on the answer (never `block_on`
//! inside the caller's runtime). The caller's runtime must therefore not be the one serving the
//! object server itself.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use hyper::Method;
use pgrealm_schema::{Object, PrimaryKey, Schema};
use serde_json::{json, Value as Json};
use tokio::sync::{mpsc, oneshot};

use super::changeset::Changeset;
use super::codec::decode_object;
use super::error::StoreError;
use super::path::RealmPath;
use super::read::RealmInfo;
use super::write::{CommitInfo, Expected, Op};
use super::Subscription;
use crate::client::{Client, ClientError};
use crate::json::{key_to_json, object_from_json, object_to_json};
use crate::server::{changeset_from_json, MAX_LOCATE_KEYS, MAX_METADATA_KEYS, MAX_OBJECT_KEYS};

/// The longest a read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest a commit may take (a large PostgreSQL transaction is one commit).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest the first contact may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Changesets (and errors) the feed may hold ahead of its reader.
const FEED_BUFFER: usize = 1024;
/// How long the feed socket may stay silent before it counts as dead: the server pings an idle
/// feed every 30 s, so this only fires when the connection is gone without a close (a crashed
/// host, a dropped route).
const FEED_SILENCE: Duration = Duration::from_secs(90);

/// A connection to a remote object server, owned by one [`Store`](super::Store).
pub(super) struct RemoteBackend {
    url: String,
    client: Client,
    handle: tokio::runtime::Handle,
    /// Dropping it ends the runtime thread.
    _stop: oneshot::Sender<()>,
}

impl RemoteBackend {
    /// Start the runtime thread and check the server: reachable, the admin token accepted, the
    /// admin API present, the same compiled schema.
    pub(super) fn connect(
        url: &str,
        admin_token: &str,
        schema: &Schema,
    ) -> Result<RemoteBackend, StoreError> {
        let url = url.trim_end_matches('/').to_owned();
        let fail = |message: String| StoreError::Remote {
            url: url.clone(),
            message,
        };
        match url.parse::<hyper::Uri>() {
            Ok(uri) if uri.authority().is_some_and(|a| a.as_str().contains('@')) => {
                // Never echo the URL: it holds a secret.
                return Err(StoreError::Remote {
                    url: "(realm.url)".into(),
                    message: "realm.url must not hold credentials (user:password@): give the \
                              server's admin token with realm.admin_token_file or \
                              PGREALM_ADMIN_TOKEN"
                        .into(),
                });
            }
            Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => {}
            _ => {
                return Err(fail(
                    "realm.url must be http://host:port (the object server's plain HTTP address; \
                     put TLS in front of both ends with a tunnel or proxy)"
                        .into(),
                ))
            }
        }
        let (handle, stop) = start_runtime().map_err(|e| {
            fail(format!(
                "cannot start the network runtime thread: {e}; check the process's thread limit"
            ))
        })?;
        let backend = RemoteBackend {
            client: Client::new(&url, admin_token, schema.clone()),
            url: url.clone(),
            handle,
            _stop: stop,
        };
        let client = backend.client.clone();
        let answer = backend.call_raw(CONNECT_TIMEOUT, async move {
            client.admin_read(json!({"schema": {}})).await
        });
        let answer = match answer {
            Ok(a) => a,
            Err(Some(ClientError::Api {
                status: 404,
                message,
                ..
            })) => {
                return Err(fail(format!(
                    "it has no admin sync API (/v1/admin/read answered 404: {message}); it runs an \
                     older pgrealm: upgrade the server to this version"
                )))
            }
            Err(Some(e)) => return Err(backend.error(e)),
            Err(None) => {
                return Err(fail(format!(
                    "no answer within {}s: is it running and is realm.url right?",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        };
        let theirs: Schema = serde_json::from_value(answer["schema"].clone())
            .map_err(|e| backend.unexpected("its schema", &e.to_string()))?;
        if &theirs != schema {
            let names = |s: &Schema| {
                s.classes
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(fail(format!(
                "it serves a different schema (classes {}) than this binary compiles (classes {}), \
                 or the same classes with other properties: run binaries built from the same \
                 schema! on both sides",
                names(&theirs),
                names(schema)
            )));
        }
        Ok(backend)
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    fn fail(&self, message: impl Into<String>) -> StoreError {
        StoreError::Remote {
            url: self.url.clone(),
            message: message.into(),
        }
    }

    pub(super) fn unexpected(&self, what: &str, detail: &str) -> StoreError {
        self.fail(format!(
            "unexpected answer for {what} ({detail}); is realm.url an object server of this \
             pgrealm version?"
        ))
    }

    fn error(&self, e: ClientError) -> StoreError {
        remote_error(&self.url, e)
    }

    /// Run `fut` on the backend's runtime and wait for it; `Err(None)` when it timed out or the
    /// runtime is gone.
    fn call_raw<T: Send + 'static>(
        &self,
        timeout: Duration,
        fut: impl Future<Output = Result<T, ClientError>> + Send + 'static,
    ) -> Result<T, Option<ClientError>> {
        let (tx, rx) = std_mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(tokio::time::timeout(timeout, fut).await);
        });
        match rx.recv() {
            Ok(Ok(result)) => result.map_err(Some),
            Ok(Err(_)) | Err(_) => Err(None),
        }
    }

    fn call<T: Send + 'static>(
        &self,
        what: &str,
        timeout: Duration,
        fut: impl Future<Output = Result<T, ClientError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call_raw(timeout, fut).map_err(|e| match e {
            Some(e) => self.error(e),
            None => self.fail(format!(
                "{what}: no answer within {}s; check that the server is up and reachable",
                timeout.as_secs()
            )),
        })
    }

    fn read(&self, what: &str, request: Json) -> Result<Json, StoreError> {
        let client = self.client.clone();
        self.call(what, READ_TIMEOUT, async move {
            client.admin_read(request).await
        })
    }

    pub(super) fn schema(&self) -> &Schema {
        self.client.schema()
    }

    fn realm_info(&self, json: &Json) -> Result<RealmInfo, StoreError> {
        let bad = || self.unexpected("a realm", &json.to_string());
        Ok(RealmInfo {
            path: RealmPath::parse(json["path"].as_str().ok_or_else(bad)?)?,
            version: json["version"].as_u64().ok_or_else(bad)?,
            oldest: json["oldest"].as_u64().ok_or_else(bad)?,
        })
    }

    pub(super) fn object_from(&self, class: &str, json: &Json) -> Result<Object, StoreError> {
        let def = self
            .schema()
            .class(class)
            .ok_or_else(|| self.unexpected("an object", &format!("no class `{class}`")))?;
        object_from_json(self.schema(), def, json)
            .map_err(|e| self.unexpected(&format!("a {class} object"), &e.to_string()))
    }

    pub(super) fn realms(&self) -> Result<Vec<RealmInfo>, StoreError> {
        let answer = self.read("listing the realms", json!({"realms": {}}))?;
        answer["realms"]
            .as_array()
            .ok_or_else(|| self.unexpected("the realms", &answer.to_string()))?
            .iter()
            .map(|r| self.realm_info(r))
            .collect()
    }

    pub(super) fn realm(&self, path: &RealmPath) -> Result<Option<RealmInfo>, StoreError> {
        let answer = self.read("reading a realm", json!({"realm": {"path": path.as_str()}}))?;
        match &answer["realm"] {
            Json::Null => Ok(None),
            info => self.realm_info(info).map(Some),
        }
    }

    pub(super) fn metadata(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let answer = self.read("reading metadata", json!({"metadata": {"key": key}}))?;
        self.metadata_in(&answer)
    }

    /// The value of a metadata read's answer.
    pub(super) fn metadata_in(&self, answer: &Json) -> Result<Option<Vec<u8>>, StoreError> {
        self.metadata_value(&answer["value"])
    }

    /// One metadata value as the admin API answers it: base64, or null for none.
    fn metadata_value(&self, value: &Json) -> Result<Option<Vec<u8>>, StoreError> {
        match value {
            Json::Null => Ok(None),
            Json::String(b64) => STANDARD
                .decode(b64)
                .map(Some)
                .map_err(|e| self.unexpected("metadata", &e.to_string())),
            other => Err(self.unexpected("metadata", &other.to_string())),
        }
    }

    /// The metadata of each of `keys`, in their order: one `metadata_many` read per
    /// [`MAX_METADATA_KEYS`] keys.
    pub(super) fn metadata_many<K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        in_chunks(keys, MAX_METADATA_KEYS, |chunk| {
            let answer = self.read("reading metadata", metadata_many_json(chunk))?;
            self.many_metadata_in(&answer, chunk.len())
        })
    }

    /// The values of each of the `n` keys of a `metadata_many` read's answer.
    pub(super) fn many_metadata_in(
        &self,
        answer: &Json,
        n: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let each = answer["values"]
            .as_array()
            .ok_or_else(|| self.unexpected("metadata values", &answer.to_string()))?;
        if each.len() != n {
            return Err(self.unexpected(
                "metadata values",
                &format!("{} answers to {n} keys", each.len()),
            ));
        }
        each.iter().map(|v| self.metadata_value(v)).collect()
    }

    pub(super) fn locate(
        &self,
        class: &str,
        key: &PrimaryKey,
    ) -> Result<Vec<RealmPath>, StoreError> {
        let answer = self.read(
            "locating an object",
            json!({"locate": {"class": class, "key": key_to_json(key)}}),
        )?;
        self.locations_in(&answer)
    }

    /// Whether any realm holds an object of `class`.
    pub(super) fn holds_any(&self, class: &str) -> Result<bool, StoreError> {
        let answer = self.read(
            "asking whether a class has objects",
            json!({"holds_any": {"class": class}}),
        )?;
        answer["holds_any"]
            .as_bool()
            .ok_or_else(|| self.unexpected("whether a class has objects", &answer.to_string()))
    }

    /// The realm paths of a locate's answer.
    pub(super) fn locations_in(&self, answer: &Json) -> Result<Vec<RealmPath>, StoreError> {
        self.paths_in(&answer["realms"])
            .ok_or_else(|| self.unexpected("a location", &answer.to_string()))?
    }

    /// A JSON array of realm paths; `None` when it is not an array.
    fn paths_in(&self, json: &Json) -> Option<Result<Vec<RealmPath>, StoreError>> {
        let paths = json.as_array()?.iter().map(|p| {
            let p = p
                .as_str()
                .ok_or_else(|| self.unexpected("a location", &p.to_string()))?;
            Ok(RealmPath::parse(p)?)
        });
        Some(paths.collect())
    }

    /// Where each of `keys` lives, in their order: one `locate_many` read per
    /// [`MAX_LOCATE_KEYS`] keys.
    pub(super) fn locate_many(
        &self,
        class: &str,
        keys: &[PrimaryKey],
    ) -> Result<Vec<Vec<RealmPath>>, StoreError> {
        in_chunks(keys, MAX_LOCATE_KEYS, |chunk| {
            let answer = self.read("locating objects", locate_many_json(class, chunk))?;
            self.many_locations_in(&answer, chunk.len())
        })
    }

    /// The realm paths of each of the `n` keys of a `locate_many` read's answer.
    pub(super) fn many_locations_in(
        &self,
        answer: &Json,
        n: usize,
    ) -> Result<Vec<Vec<RealmPath>>, StoreError> {
        let bad = || self.unexpected("locations", &answer.to_string());
        let each = answer["realms"].as_array().ok_or_else(bad)?;
        if each.len() != n {
            return Err(
                self.unexpected("locations", &format!("{} answers to {n} keys", each.len()))
            );
        }
        each.iter()
            .map(|paths| self.paths_in(paths).ok_or_else(bad)?)
            .collect()
    }

    pub(super) fn object(
        &self,
        realm: &RealmPath,
        class: &str,
        key: &PrimaryKey,
    ) -> Result<Option<Object>, StoreError> {
        let answer = self.read(
            "reading an object",
            json!({"object": {"path": realm.as_str(), "class": class, "key": key_to_json(key)}}),
        )?;
        match &answer["object"] {
            Json::Null => Ok(None),
            o => self.object_from(class, o).map(Some),
        }
    }

    /// Each of several objects (realm, class, key), in their order: one `object_many` read per
    /// [`MAX_OBJECT_KEYS`] objects.
    pub(super) fn object_many(
        &self,
        objects: &[(RealmPath, String, PrimaryKey)],
    ) -> Result<Vec<Option<Object>>, StoreError> {
        in_chunks(objects, MAX_OBJECT_KEYS, |chunk| {
            let answer = self.read("reading objects", object_many_json(chunk))?;
            self.many_objects_in(&answer, chunk)
        })
    }

    /// The objects of an `object_many` read's answer, one for each of `asked`.
    pub(super) fn many_objects_in(
        &self,
        answer: &Json,
        asked: &[(RealmPath, String, PrimaryKey)],
    ) -> Result<Vec<Option<Object>>, StoreError> {
        let each = answer["objects"]
            .as_array()
            .ok_or_else(|| self.unexpected("objects", &answer.to_string()))?;
        if each.len() != asked.len() {
            return Err(self.unexpected(
                "objects",
                &format!("{} answers to {} objects", each.len(), asked.len()),
            ));
        }
        each.iter()
            .zip(asked)
            .map(|(o, (_, class, _))| match o {
                Json::Null => Ok(None),
                o => self.object_from(class, o).map(Some),
            })
            .collect()
    }

    pub(super) fn objects(
        &self,
        realm: &RealmPath,
        class: &str,
    ) -> Result<Vec<Object>, StoreError> {
        let answer = self.read(
            "reading objects",
            json!({"objects": {"path": realm.as_str(), "class": class}}),
        )?;
        answer["objects"]
            .as_array()
            .ok_or_else(|| self.unexpected("objects", &answer.to_string()))?
            .iter()
            .map(|o| self.object_from(class, o))
            .collect()
    }

    pub(super) fn count(&self, realm: &RealmPath, class: &str) -> Result<usize, StoreError> {
        let answer = self.read(
            "counting objects",
            json!({"count": {"path": realm.as_str(), "class": class}}),
        )?;
        answer["count"]
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| self.unexpected("a count", &answer.to_string()))
    }

    pub(super) fn realm_schema(&self, realm: &RealmPath) -> Result<Schema, StoreError> {
        let answer = self.read(
            "reading a realm's schema",
            json!({"realm_schema": {"path": realm.as_str()}}),
        )?;
        serde_json::from_value(answer["schema"].clone())
            .map_err(|e| self.unexpected("a realm's schema", &e.to_string()))
    }

    pub(super) fn changes(
        &self,
        realm: &RealmPath,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Changeset>, StoreError> {
        let answer = self.read(
            "reading changesets",
            json!({"changes": {"path": realm.as_str(), "after": after, "limit": limit}}),
        )?;
        if let Some(pruned) = answer.get("pruned") {
            return Err(StoreError::Pruned {
                realm: realm.clone(),
                asked: pruned["asked"].as_u64().unwrap_or(after + 1),
                oldest: pruned["oldest"].as_u64().unwrap_or(0),
            });
        }
        answer["changes"]
            .as_array()
            .ok_or_else(|| self.unexpected("changesets", &answer.to_string()))?
            .iter()
            .map(|c| {
                changeset_from_json(self.schema(), c)
                    .map_err(|e| self.unexpected("a changeset", &e))
            })
            .collect()
    }

    /// Send a whole write transaction; the server commits it atomically and durably.
    pub(super) fn commit(
        &self,
        origin: &str,
        ops: &[Op],
        metadata: &BTreeMap<String, Vec<u8>>,
        expected: &Expected,
    ) -> Result<CommitInfo, StoreError> {
        let ops: Vec<Json> = ops.iter().map(|op| op_to_json(self.schema(), op)).collect();
        let mut body = json!({"origin": origin, "ops": ops, "metadata": metadata_json(metadata)});
        if !expected.is_empty() {
            body["expect"] = expected_json(expected);
        }
        let client = self.client.clone();
        let answer = self.call("committing", COMMIT_TIMEOUT, async move {
            client.admin_commit(body).await
        })?;
        self.commit_info(&answer)
    }

    /// The versions of a commit's answer.
    pub(super) fn commit_info(&self, answer: &Json) -> Result<CommitInfo, StoreError> {
        let versions = answer["versions"]
            .as_array()
            .ok_or_else(|| self.unexpected("a commit", &answer.to_string()))?
            .iter()
            .map(|v| {
                let bad = || self.unexpected("a commit", &v.to_string());
                Ok((
                    RealmPath::parse(v["path"].as_str().ok_or_else(bad)?)?,
                    v["version"].as_u64().ok_or_else(bad)?,
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(CommitInfo { versions })
    }

    /// One request of a streamed write (see `remote_stream.rs`): `path` under
    /// `/v1/admin/streams`, `body` JSON text.
    pub(super) fn stream_request(
        &self,
        what: &str,
        method: Method,
        path: String,
        body: Option<Bytes>,
    ) -> Result<Json, StoreError> {
        let client = self.client.clone();
        let timeout = if method == Method::POST && path.ends_with("/commit") {
            COMMIT_TIMEOUT
        } else {
            READ_TIMEOUT
        };
        self.call(what, timeout, async move {
            client.admin_stream(method, &path, body).await
        })
    }

    /// Abort the open streamed write of `owner`, if any (see `Store::release_stream`).
    ///
    /// A server older than this endpoint has no stream to release that it would not abort at
    /// its idle timeout: its 404 reads as "nothing released".
    pub(super) fn release_stream(&self, owner: &str) -> Result<bool, StoreError> {
        let body = Bytes::from(json!({ "owner": owner }).to_string());
        let client = self.client.clone();
        let answer = self.call_raw(READ_TIMEOUT, async move {
            client
                .admin_stream(Method::POST, "/release", Some(body))
                .await
        });
        // A server older than the endpoint: 405 (its `/v1/admin/streams/{id}` takes DELETE
        // only, and the bare answer is no JSON), or 404 from one without streams at all.
        let older = match &answer {
            Err(Some(ClientError::Api { status, .. })) => matches!(status, 404 | 405),
            Err(Some(ClientError::Protocol(detail))) => detail.starts_with("405 "),
            _ => false,
        };
        if older {
            tracing::warn!(
                url = self.url,
                "the object server has no /v1/admin/streams/release (an older pgrealm): a stream \
                 a crashed engine left open is aborted at its idle timeout"
            );
            return Ok(false);
        }
        let answer = match answer {
            Ok(answer) => answer,
            Err(Some(e)) => return Err(self.error(e)),
            Err(None) => {
                return Err(self.fail(format!(
                    "releasing a stream: no answer within {}s; check that the server is up and \
                     reachable",
                    READ_TIMEOUT.as_secs()
                )))
            }
        };
        answer["released"]
            .as_bool()
            .ok_or_else(|| self.unexpected("a stream release", &answer.to_string()))
    }

    /// Send a request of a streamed write without waiting for its answer (an abort on drop:
    /// if it is lost, the server's idle timeout aborts the stream all the same).
    pub(super) fn stream_request_detached(&self, method: Method, path: String) {
        let client = self.client.clone();
        self.handle.spawn(async move {
            let sent = tokio::time::timeout(READ_TIMEOUT, client.admin_stream(method, &path, None));
            if let Ok(Err(e)) = sent.await {
                tracing::debug!(error = %e, "aborting a streamed write");
            }
        });
    }

    /// Follow the server's change feed for `subscription`.
    pub(super) fn subscribe(&self, subscription: &Subscription) -> RemoteFeed {
        let (pattern, resume, headers_only) = subscription.parts();
        let positions: BTreeMap<String, u64> = resume
            .iter()
            .map(|(p, v)| (p.as_str().to_owned(), *v))
            .collect();
        let (tx, rx) = mpsc::channel(FEED_BUFFER);
        let task = self.handle.spawn(feed_task(
            self.client.clone(),
            pattern.as_str().to_owned(),
            positions,
            headers_only.map(str::to_owned),
            tx,
        ));
        RemoteFeed { rx, task }
    }
}

/// Start a current-thread runtime on a thread of its own; it runs until the sender is dropped.
fn start_runtime() -> std::io::Result<(tokio::runtime::Handle, oneshot::Sender<()>)> {
    let (handle_tx, handle_rx) = std_mpsc::sync_channel(1);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("pgrealm-remote".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => {
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    // Runs the requests and feeds spawned on it until the store is dropped.
                    runtime.block_on(async move {
                        let _ = stop_rx.await;
                    });
                }
                Err(e) => {
                    let _ = handle_tx.send(Err(e));
                }
            }
        })?;
    let handle = handle_rx
        .recv()
        .map_err(|_| std::io::Error::other("the runtime thread ended before it started"))??;
    Ok((handle, stop_tx))
}

/// A client error as a store error that says what to do.
fn remote_error(url: &str, e: ClientError) -> StoreError {
    let message = match e {
        ClientError::Api {
            status: 401,
            message,
            ..
        } => format!(
            "it refused the admin token ({message}): give the server's admin token (keys/admin.token \
             in its data_dir, or its PGREALM_ADMIN_TOKEN) through realm.admin_token_file or \
             PGREALM_ADMIN_TOKEN"
        ),
        ClientError::Api {
            status: 403,
            message,
            ..
        } => format!(
            "it refused ({message}): the sync engine needs the server's admin token, not a user \
             token"
        ),
        ClientError::Api {
            status: 409,
            code,
            message,
        } if code == "metadata_changed" => return StoreError::MetadataChanged { detail: message },
        ClientError::Api {
            status: 409 | 404,
            code,
            message,
        } if code == "stream_open" || code == "no_stream" || code == "stream_replaced" => {
            return StoreError::RemoteStream {
                url: url.to_owned(),
                message: format!(
                    "it refused the streamed write ({message}); the sync engine retries from \
                     the checkpoint the server holds"
                ),
            }
        }
        ClientError::Api {
            status,
            code,
            message,
        } => format!("it refused ({status} {code}): {message}"),
        ClientError::Connect { reason, .. } => {
            return StoreError::RemoteUnreachable {
                url: url.to_owned(),
                message: format!(
            "cannot reach it ({reason}): is the object server running (`serve`) and is realm.url \
             right?"
        ),
            }
        }
        ClientError::Protocol(detail) => format!(
            "unexpected answer ({detail}); is realm.url an object server of this pgrealm version?"
        ),
        ClientError::Value(e) => format!("a value it sent does not fit the schema: {e}"),
    };
    StoreError::Remote {
        url: url.to_owned(),
        message,
    }
}

/// A `locate_many` read of `keys` (at most [`MAX_LOCATE_KEYS`]).
pub(super) fn locate_many_json(class: &str, keys: &[PrimaryKey]) -> Json {
    let keys: Vec<Json> = keys.iter().map(key_to_json).collect();
    json!({"locate_many": {"class": class, "keys": keys}})
}

/// The answers to a batched read of `items`, in their order: `read` asks one chunk of at most
/// `size` (a request's limit) and answers each of its items.
pub(super) fn in_chunks<T, R>(
    items: &[T],
    size: usize,
    mut read: impl FnMut(&[T]) -> Result<Vec<R>, StoreError>,
) -> Result<Vec<R>, StoreError> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(size) {
        out.extend(read(chunk)?);
    }
    Ok(out)
}

/// A `metadata_many` read of `keys` (at most [`MAX_METADATA_KEYS`]).
pub(super) fn metadata_many_json<K: AsRef<str>>(keys: &[K]) -> Json {
    let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
    json!({"metadata_many": {"keys": keys}})
}

/// An `object_many` read of `objects` (at most [`MAX_OBJECT_KEYS`]).
pub(super) fn object_many_json(objects: &[(RealmPath, String, PrimaryKey)]) -> Json {
    let objects: Vec<Json> = objects
        .iter()
        .map(|(path, class, key)| {
            json!({"path": path.as_str(), "class": class, "key": key_to_json(key)})
        })
        .collect();
    json!({"object_many": {"objects": objects}})
}

/// Metadata as the admin API takes it: key → base64.
pub(super) fn metadata_json(metadata: &BTreeMap<String, Vec<u8>>) -> Json {
    metadata
        .iter()
        .map(|(k, v)| (k.clone(), Json::String(STANDARD.encode(v))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Expected metadata as the admin API takes it: key → base64, or null for "holds nothing".
pub(super) fn expected_json(expected: &Expected) -> Json {
    expected
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Some(v) => Json::String(STANDARD.encode(v)),
                None => Json::Null,
            };
            (k.clone(), value)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// `op` as the admin commit endpoint takes it (a create of a record as a put of its object).
pub(super) fn op_to_json(schema: &Schema, op: &Op) -> Json {
    match op {
        Op::Put { realm, object, .. } => json!({"put": {
            "realm": realm.as_str(), "class": object.class, "object": object_to_json(object),
        }}),
        Op::Create {
            realm,
            class,
            record,
            ..
        } => {
            let class = &schema.classes[*class].name;
            let object = decode_object(class, record).expect("a record this process encoded");
            json!({"put": {
                "realm": realm.as_str(), "class": class, "object": object_to_json(&object),
            }})
        }
        Op::Update { realm, object, .. } => json!({"update": {
            "realm": realm.as_str(), "class": object.class, "object": object_to_json(object),
        }}),
        Op::Move {
            from, to, object, ..
        } => json!({"move": {
            "from": from.as_str(), "to": to.as_str(), "class": object.class,
            "object": object_to_json(object),
        }}),
        Op::Delete { realm, class, key } => json!({"delete": {
            "realm": realm.as_str(), "class": class, "key": key_to_json(key),
        }}),
    }
}

/// The receiving end of a remote change feed; dropping it ends the feed's connection.
pub(super) struct RemoteFeed {
    rx: mpsc::Receiver<Result<Changeset, StoreError>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RemoteFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteFeed").finish_non_exhaustive()
    }
}

impl Drop for RemoteFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RemoteFeed {
    /// The next changeset (or error). Cancel-safe: a channel receive loses nothing.
    pub(super) async fn next(&mut self) -> Result<Changeset, StoreError> {
        match self.rx.recv().await {
            Some(item) => item,
            // The task only ends when the backend's runtime stops, i.e. with the store.
            None => Err(StoreError::FeedTask(
                "the remote change feed stopped with its store".into(),
            )),
        }
    }
}

/// Keep one feed WebSocket open, reopening it from the last position received when it breaks.
async fn feed_task(
    client: Client,
    pattern: String,
    mut positions: BTreeMap<String, u64>,
    headers_only: Option<String>,
    tx: mpsc::Sender<Result<Changeset, StoreError>>,
) {
    let url = client.base_url().to_owned();
    let min_backoff = Duration::from_millis(100);
    let mut backoff = min_backoff;
    // A pruned realm is reported once; the server reports it again after a reconnect.
    let mut pruned: HashSet<String> = HashSet::new();
    loop {
        let subscribe =
            json!({"pattern": pattern, "resume": positions, "headers_only": headers_only});
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, client.admin_feed(subscribe)).await;
        let problem = match connected {
            Err(_) => StoreError::Remote {
                url: url.clone(),
                message: format!(
                    "the change feed did not open within {}s",
                    CONNECT_TIMEOUT.as_secs()
                ),
            },
            Ok(Err(e)) => remote_error(&url, e),
            Ok(Ok(mut socket)) => loop {
                let Ok(next) = tokio::time::timeout(FEED_SILENCE, socket.next()).await else {
                    break StoreError::Remote {
                        url: url.clone(),
                        message: format!(
                            "the change feed was silent for {}s (not even a ping); reconnecting",
                            FEED_SILENCE.as_secs()
                        ),
                    };
                };
                let json = match next {
                    None => {
                        break StoreError::Remote {
                            url: url.clone(),
                            message: "the change feed closed; reconnecting".into(),
                        }
                    }
                    Some(Err(e)) => break remote_error(&url, e),
                    Some(Ok(json)) => json,
                };
                if let Some(err) = json.get("error") {
                    if err["code"] == "pruned" {
                        let realm = err["realm"].as_str().unwrap_or_default().to_owned();
                        let Ok(path) = RealmPath::parse(&realm) else {
                            continue;
                        };
                        if pruned.insert(realm) {
                            let e = StoreError::Pruned {
                                realm: path,
                                asked: err["asked"].as_u64().unwrap_or(0),
                                oldest: err["oldest"].as_u64().unwrap_or(0),
                            };
                            if tx.send(Err(e)).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                    break StoreError::Remote {
                        url: url.clone(),
                        message: format!(
                            "the change feed failed: {}",
                            err["message"].as_str().unwrap_or_default()
                        ),
                    };
                }
                match changeset_from_json(client.schema(), &json) {
                    Ok(changeset) => {
                        positions.insert(changeset.realm.as_str().to_owned(), changeset.version);
                        backoff = min_backoff;
                        if tx.send(Ok(changeset)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        break remote_error(
                            &url,
                            ClientError::Protocol(format!("a changeset: {e}")),
                        )
                    }
                }
            },
        };
        tracing::warn!(error = %problem, retry_in = ?backoff, "remote change feed interrupted");
        if tx.send(Err(problem)).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
