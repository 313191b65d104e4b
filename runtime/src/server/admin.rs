//! The admin-only endpoints a sync engine in remote mode works through ([`Store::connect_remote`]
//! is their client): reads of the store, whole write transactions, streamed write transactions,
//! and the multi-realm change feed.
//!
//! - `POST /v1/admin/read` with one read (`{"realm":{"path":"/a"}}`, `{"locate":{…}}`, …) →
//!   its answer; see [`Read`]. `{"locate_many":{"class","keys":[key, …]}}` →
//!   `{"realms":[[path, …], …]}` answers where each of several objects of one class lives, in
//!   the order of `keys`, as one read: a remote engine asks it for the rows it has in hand
//!   instead of one request per row. At most [`MAX_LOCATE_KEYS`] keys per request (400 past
//!   it: send the rest in another); a key that does not fit the class is a 400 naming its
//!   index (`keys[3]`). `{"metadata_many":{"keys":[key, …]}}` → `{"values":[base64 | null, …]}`
//!   answers several metadata keys the same way (each value in the order of `keys`, `null` for
//!   a key that holds nothing; at most [`MAX_METADATA_KEYS`] keys, 400 past it): a remote engine
//!   asks it for the list entries of the owners it has in hand instead of one request per owner.
//!   `{"object_many":{"objects":[{"path","class","key"}, …]}}` → `{"objects":[{…} | null, …]}`
//!   answers several stored objects the same way (each in the order asked, `null` for one its
//!   realm does not hold; at most [`MAX_OBJECT_KEYS`], 400 past it; one that does not fit is a
//!   400 naming its index, `objects[3]`): a remote engine asks it for the rows it has in hand
//!   that move to another realm or change their key, whose stored values they keep.
//! - `POST /v1/admin/commit` with `{"origin","ops":[…],"metadata":{key: base64}}` → the server
//!   rebuilds the store write transaction and commits it atomically and durably before
//!   answering `{"versions":[{"path","version"}]}`; see [`CommitOp`]. An optional
//!   `"expect":{key: base64 | null}` commits only if the metadata holds those values then
//!   (409 `metadata_changed` otherwise, nothing written).
//! - A streamed write, for a transaction too large for one request (see `streams.rs`):
//!   `POST /v1/admin/streams` `{"origin"}` → `{"id","idle_timeout_seconds"}`;
//!   `POST /v1/admin/streams/{id}/ops` `{"ops":[…],"metadata":{…}}` (ops as for `commit`) →
//!   `{"ops": n}` (`"expect"` as for `commit`, checked in the open transaction);
//!   `POST /v1/admin/streams/{id}/read` (`locate`, `locate_many`, `object`, `object_many`,
//!   `keys`, `metadata`, `metadata_many`, as of the stream's own batches);
//!   `POST /v1/admin/streams/{id}/commit` `{"metadata":{…}}` → `{"versions":[…]}` as `commit`
//!   answers; `DELETE /v1/admin/streams/{id}` aborts; `POST /v1/admin/streams/release`
//!   `{"owner"}` aborts the open stream of that owner, if any (`{"released": bool}`). One stream
//!   at a time (409 `stream_open`); one idle past `ServerOptions::stream_idle_timeout` is
//!   aborted (404 `no_stream` afterwards); a refused batch aborts the whole stream.
//! - `GET /v1/admin/feed` upgraded to a WebSocket: the first client message is
//!   `{"pattern": regex, "resume": {path: version}, "headers_only": origin}` (`headers_only`
//!   optional: changesets of that origin come with `"instructions": []`, unread, as
//!   [`Subscription::headers_only_from`]); the server then sends every changeset of every
//!   matching realm (realms created later included) after those positions, caught up from the
//!   log then live, as `changes` does. A realm whose log no longer reaches back sends
//!   `{"error":{"code":"pruned","realm","asked","oldest","message"}}` and is skipped; any other
//!   error is sent and the socket closed.
//!
//! The caller must present the admin token; it is checked before the body is read, so only the
//! admin may send bodies up to [`ServerOptions::max_admin_body_bytes`].
//!
//! [`Store::connect_remote`]: crate::store::Store::connect_remote
//! [`ServerOptions::max_admin_body_bytes`]: super::ServerOptions::max_admin_body_bytes

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json as JsonBody;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use pgrealm_schema::{Object, PrimaryKey, Schema};
use regex::Regex;
use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::{blocking, changeset_to_json, class, require_admin, ApiError, Caller, Server};
use crate::json::{key_from_json, object_from_json, object_to_json};
use crate::metrics::Metrics;
use crate::store::{RealmInfo, RealmPath, Store, StoreError, Subscription, WriteTx};

/// Most changesets one `changes` read returns (the admin is trusted; this only bounds memory).
const MAX_CHANGES_PER_READ: usize = 100_000;

/// Most keys one `locate_many` read takes, here and in a stream's reads. It bounds the work of
/// one request (a stream's reads hold its thread) and the size of its answer; the remote store
/// sends more keys in several requests of this size.
pub(crate) const MAX_LOCATE_KEYS: usize = 10_000;

/// Most keys one `metadata_many` read takes, here and in a stream's reads: bounded for the same
/// reasons as [`MAX_LOCATE_KEYS`], and as large, so the engine asks both in the same rhythm.
pub(crate) const MAX_METADATA_KEYS: usize = 10_000;

/// Most objects one `object_many` read takes, here and in a stream's reads: bounded for the
/// same reasons as [`MAX_LOCATE_KEYS`], and as large. An answer holds whole objects, so it is
/// larger than a `locate_many` one, yet far under what a commit of as many objects sends.
pub(crate) const MAX_OBJECT_KEYS: usize = 10_000;

/// How long the feed waits for the subscription message after the upgrade.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// The caller, who must be the admin (checked before any body is read).
pub(super) struct Admin;

impl FromRequestParts<Server> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, server: &Server) -> Result<Self, ApiError> {
        let Caller(who) = Caller::from_request_parts(parts, server).await?;
        require_admin(&who)?;
        Ok(Admin)
    }
}

/// One read of `POST /v1/admin/read`, externally tagged: `{"realms":{}}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Read {
    /// The server's compiled schema → `{"schema": …}`.
    Schema {},
    /// Every realm → `{"realms":[{"path","version","oldest"}]}`.
    Realms {},
    /// One realm → `{"realm": {"path","version","oldest"} | null}`.
    Realm { path: String },
    /// Commit metadata → `{"value": base64 | null}`.
    Metadata { key: String },
    /// The commit metadata of several keys, in the order of `keys` (at most
    /// [`MAX_METADATA_KEYS`]) → `{"values":[base64 | null]}`.
    MetadataMany { keys: Vec<String> },
    /// The realms holding an object → `{"realms":[path]}`.
    Locate { class: String, key: Json },
    /// Whether any realm holds an object of a class → `{"holds_any": bool}`.
    HoldsAny { class: String },
    /// The realms holding each of several objects of one class, in the order of `keys` (at
    /// most [`MAX_LOCATE_KEYS`]) → `{"realms":[[path]]}`.
    LocateMany { class: String, keys: Vec<Json> },
    /// One object → `{"object": {…} | null}`.
    Object {
        path: String,
        class: String,
        key: Json,
    },
    /// Several objects, each by realm, class and key, in the order of `objects` (at most
    /// [`MAX_OBJECT_KEYS`]) → `{"objects":[{…} | null]}`.
    ObjectMany { objects: Vec<ObjectAt> },
    /// Every object of a class in a realm → `{"objects":[…]}`.
    Objects { path: String, class: String },
    /// How many objects of a class a realm holds → `{"count": n}`.
    Count { path: String, class: String },
    /// A realm's own schema → `{"schema": …}`.
    RealmSchema { path: String },
    /// Changesets after `after` → `{"changes":[…]}`, or `{"pruned":{"asked","oldest"}}`.
    Changes {
        path: String,
        after: u64,
        limit: usize,
    },
}

/// One object of an `object_many` read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ObjectAt {
    path: String,
    class: String,
    key: Json,
}

fn realm_info_json(info: &RealmInfo) -> Json {
    json!({"path": info.path.as_str(), "version": info.version, "oldest": info.oldest})
}

pub(super) fn parse_path(path: &str) -> Result<RealmPath, ApiError> {
    Ok(RealmPath::parse(path)?)
}

fn bad_body(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("{what}: {e}"))
}

/// The class and keys of a `locate_many` read, checked: at most [`MAX_LOCATE_KEYS`] keys, each
/// of the class's key type (the first that is not is named by its index).
pub(super) fn locate_many_keys(
    server: &Server,
    name: &str,
    keys: &[Json],
) -> Result<(String, Vec<PrimaryKey>), ApiError> {
    let class = class(server, name)?;
    if keys.len() > MAX_LOCATE_KEYS {
        return Err(ApiError::bad_request(format!(
            "locate_many takes at most {MAX_LOCATE_KEYS} keys per request and this one has {}: \
             send them in several requests",
            keys.len()
        )));
    }
    let schema = server.shared.store.schema();
    let keys = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            key_from_json(schema, class, key).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_value",
                    format!("keys[{i}]: {e}"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((class.name.clone(), keys))
}

/// The answer to a `locate_many` read: each key's realms, in the order of the keys.
pub(super) fn locations_json(found: &[Vec<RealmPath>]) -> Json {
    let realms: Vec<Vec<&str>> = found
        .iter()
        .map(|paths| paths.iter().map(RealmPath::as_str).collect())
        .collect();
    json!({ "realms": realms })
}

/// The keys of a `metadata_many` read, checked: at most [`MAX_METADATA_KEYS`].
pub(super) fn metadata_many_keys(keys: &[String]) -> Result<(), ApiError> {
    if keys.len() > MAX_METADATA_KEYS {
        return Err(ApiError::bad_request(format!(
            "metadata_many takes at most {MAX_METADATA_KEYS} keys per request and this one has \
             {}: send them in several requests",
            keys.len()
        )));
    }
    Ok(())
}

/// The objects of an `object_many` read, checked: at most [`MAX_OBJECT_KEYS`], each with a
/// valid path, a class of the schema and a key of its type (the first that is not is named by
/// its index).
pub(super) fn object_many_refs(
    server: &Server,
    objects: &[ObjectAt],
) -> Result<Vec<(RealmPath, String, PrimaryKey)>, ApiError> {
    if objects.len() > MAX_OBJECT_KEYS {
        return Err(ApiError::bad_request(format!(
            "object_many takes at most {MAX_OBJECT_KEYS} objects per request and this one has \
             {}: send them in several requests",
            objects.len()
        )));
    }
    let schema = server.shared.store.schema();
    objects
        .iter()
        .enumerate()
        .map(|(i, at)| {
            let invalid = |message: String| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_value",
                    format!("objects[{i}]: {message}"),
                )
            };
            let path = RealmPath::parse(&at.path).map_err(|e| invalid(e.to_string()))?;
            let class = schema
                .class(&at.class)
                .ok_or_else(|| invalid(format!("the schema has no class `{}`", at.class)))?;
            let key = key_from_json(schema, class, &at.key).map_err(|e| invalid(e.to_string()))?;
            Ok((path, class.name.clone(), key))
        })
        .collect()
}

/// The answer to an `object_many` read: each object (or null), in the order asked.
pub(super) fn objects_json(found: &[Option<Object>]) -> Json {
    let objects: Vec<Json> = found
        .iter()
        .map(|o| o.as_ref().map_or(Json::Null, object_to_json))
        .collect();
    json!({ "objects": objects })
}

/// The answer to a `metadata_many` read: each key's value (base64, or null when the key holds
/// nothing), in the order of the keys.
pub(super) fn metadata_values_json(found: &[Option<Vec<u8>>]) -> Json {
    let values: Vec<Option<String>> = found
        .iter()
        .map(|value| value.as_ref().map(|v| STANDARD.encode(v)))
        .collect();
    json!({ "values": values })
}

/// `POST /v1/admin/read`.
pub(super) async fn read(
    State(server): State<Server>,
    _: Admin,
    body: Bytes,
) -> Result<JsonBody<Json>, ApiError> {
    Metrics::add(&server.shared.metrics.admin_reads, 1);
    let read: Read = serde_json::from_slice(&body).map_err(|e| {
        bad_body(
            "expected one read such as {\"realms\":{}} or {\"realm\":{\"path\":\"/a\"}}",
            e,
        )
    })?;
    let store = server.shared.store.clone();
    let answer = match read {
        Read::Schema {} => json!({ "schema": store.schema() }),
        Read::Realms {} => {
            let realms = blocking(move || Ok(store.snapshot()?.realms()?)).await?;
            json!({ "realms": realms.iter().map(realm_info_json).collect::<Vec<_>>() })
        }
        Read::Realm { path } => {
            let path = parse_path(&path)?;
            let view = blocking(move || Ok(store.realm(&path)?)).await?;
            let info = view.map(|v| {
                realm_info_json(&RealmInfo {
                    path: v.path().clone(),
                    version: v.version(),
                    oldest: v.oldest_version(),
                })
            });
            json!({ "realm": info })
        }
        Read::Metadata { key } => {
            let value = blocking(move || Ok(store.metadata(&key)?)).await?;
            json!({ "value": value.map(|v| STANDARD.encode(v)) })
        }
        Read::MetadataMany { keys } => {
            metadata_many_keys(&keys)?;
            // One snapshot answers every key, as for `locate_many`.
            let found = blocking(move || Ok(store.snapshot()?.metadata_many(&keys)?)).await?;
            metadata_values_json(&found)
        }
        Read::Locate { class: name, key } => {
            let class = class(&server, &name)?;
            let key = key_from_json(store.schema(), class, &key)?;
            let name = class.name.clone();
            let realms = blocking(move || Ok(store.locate(&name, &key)?)).await?;
            json!({ "realms": realms.iter().map(RealmPath::as_str).collect::<Vec<_>>() })
        }
        Read::HoldsAny { class: name } => {
            let name = class(&server, &name)?.name.clone();
            let held = blocking(move || Ok(store.snapshot()?.holds_any(&name)?)).await?;
            json!({ "holds_any": held })
        }
        Read::LocateMany { class: name, keys } => {
            let (name, keys) = locate_many_keys(&server, &name, &keys)?;
            // One snapshot answers every key: one state, one read transaction.
            let found = blocking(move || Ok(store.snapshot()?.locate_many(&name, &keys)?)).await?;
            locations_json(&found)
        }
        Read::Object {
            path,
            class: name,
            key,
        } => {
            let path = parse_path(&path)?;
            let class = class(&server, &name)?;
            let key = key_from_json(store.schema(), class, &key)?;
            let name = class.name.clone();
            let object = blocking(move || match store.realm(&path)? {
                Some(view) => Ok(view.object(&name, &key)?),
                None => Ok(None),
            })
            .await?;
            json!({ "object": object.as_ref().map(object_to_json) })
        }
        Read::ObjectMany { objects } => {
            let objects = object_many_refs(&server, &objects)?;
            // One snapshot answers every object, as for `locate_many`.
            let found = blocking(move || Ok(store.snapshot()?.object_many(&objects)?)).await?;
            objects_json(&found)
        }
        Read::Objects { path, class: name } => {
            let path = parse_path(&path)?;
            let name = class(&server, &name)?.name.clone();
            let objects = blocking(move || match store.realm(&path)? {
                Some(view) => Ok(view.objects(&name)?),
                None => Ok(Vec::new()),
            })
            .await?;
            json!({ "objects": objects.iter().map(object_to_json).collect::<Vec<_>>() })
        }
        Read::Count { path, class: name } => {
            let path = parse_path(&path)?;
            let name = class(&server, &name)?.name.clone();
            let count = blocking(move || match store.realm(&path)? {
                Some(view) => Ok(view.count(&name)?),
                None => Ok(0),
            })
            .await?;
            json!({ "count": count })
        }
        Read::RealmSchema { path } => {
            let path = parse_path(&path)?;
            let schema = blocking(move || match store.realm(&path)? {
                Some(view) => Ok(view.schema()?),
                None => Ok(Schema::default()),
            })
            .await?;
            json!({ "schema": schema })
        }
        Read::Changes { path, after, limit } => {
            let path = parse_path(&path)?;
            let limit = limit.min(MAX_CHANGES_PER_READ);
            match blocking(move || Ok(store.changes(&path, after, limit))).await? {
                Ok(changes) => {
                    json!({ "changes": changes.iter().map(changeset_to_json).collect::<Vec<_>>() })
                }
                Err(StoreError::Pruned { asked, oldest, .. }) => {
                    json!({ "pruned": { "asked": asked, "oldest": oldest } })
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    Ok(JsonBody(answer))
}

/// `POST /v1/admin/commit`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitRequest {
    /// The origin tag of the changesets (`postgres` for the engine's PostgreSQL → realm side).
    origin: String,
    ops: Vec<CommitOp>,
    /// Metadata key → base64 value, stored atomically with the commit.
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// Metadata key → base64 value (or null: no value) the commit expects to find; another
    /// value refuses it with 409 `metadata_changed` (`WriteTx::expect_metadata`).
    #[serde(default)]
    expect: BTreeMap<String, Option<String>>,
}

/// One operation of a store write transaction, as `WriteTx` collects it. Objects are in the
/// API's JSON form and may be partial (absent properties keep their value).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum CommitOp {
    /// `WriteTx::put_object`.
    Put {
        realm: String,
        class: String,
        object: Json,
    },
    /// `WriteTx::update_object` (only if the realm holds the object when the commit applies).
    Update {
        realm: String,
        class: String,
        object: Json,
    },
    /// `WriteTx::move_object`.
    Move {
        from: String,
        to: String,
        class: String,
        object: Json,
    },
    /// `WriteTx::delete_object`.
    Delete {
        realm: String,
        class: String,
        key: Json,
    },
}

/// Longest origin tag accepted.
pub(super) const MAX_ORIGIN_LEN: usize = 64;

/// `POST /v1/admin/commit`.
pub(super) async fn commit(
    State(server): State<Server>,
    _: Admin,
    body: Bytes,
) -> Result<JsonBody<Json>, ApiError> {
    let store = server.shared.store.clone();
    // Parsing a large transaction is CPU work: off the async threads, like the commit.
    let versions = blocking(move || {
        let req: CommitRequest = serde_json::from_slice(&body).map_err(|e| {
            bad_body(
                "expected {\"origin\": \"…\", \"ops\": [{\"put\": {\"realm\", \"class\", \"object\"}}, …], \"metadata\": {key: base64}, \"expect\": {key: base64 | null}}",
                e,
            )
        })?;
        if req.origin.is_empty() || req.origin.len() > MAX_ORIGIN_LEN {
            return Err(ApiError::bad_request(format!(
                "origin must be 1 to {MAX_ORIGIN_LEN} characters"
            )));
        }
        let tx = build_tx(&store, req)?;
        let info = tx.commit()?;
        Ok(info.versions)
    })
    .await?;
    let versions: Vec<Json> = versions
        .iter()
        .map(|(path, version)| json!({"path": path.as_str(), "version": version}))
        .collect();
    Ok(JsonBody(json!({ "versions": versions })))
}

/// Rebuild the write transaction a remote `WriteTx` collected; a bad op anywhere writes nothing.
fn build_tx(store: &Store, req: CommitRequest) -> Result<WriteTx, ApiError> {
    let mut tx = store.begin_write(req.origin);
    add_ops(store, &mut tx, req.ops)?;
    add_metadata(&mut tx, req.metadata, req.expect)?;
    Ok(tx)
}

/// Add `ops` to `tx`, each checked against the schema; the first bad one is named by its index.
pub(super) fn add_ops(store: &Store, tx: &mut WriteTx, ops: Vec<CommitOp>) -> Result<(), ApiError> {
    let schema = store.schema();
    for (i, op) in ops.into_iter().enumerate() {
        let at = |e: ApiError| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_op",
                format!("ops[{i}]: {}", e.message()),
            )
        };
        let object_of = |name: &str, json: &Json| -> Result<pgrealm_schema::Object, ApiError> {
            let class = schema.class(name).ok_or_else(|| {
                at(ApiError::not_found(format!(
                    "the schema has no class `{name}`"
                )))
            })?;
            object_from_json(schema, class, json).map_err(|e| at(e.into()))
        };
        let realm_of = |path: &str| parse_path(path).map_err(at);
        match op {
            CommitOp::Put {
                realm,
                class,
                object,
            } => tx
                .put_object(&realm_of(&realm)?, object_of(&class, &object)?)
                .map_err(|e| at(e.into()))?,
            CommitOp::Update {
                realm,
                class,
                object,
            } => tx
                .update_object(&realm_of(&realm)?, object_of(&class, &object)?)
                .map_err(|e| at(e.into()))?,
            CommitOp::Move {
                from,
                to,
                class,
                object,
            } => tx
                .move_object(
                    &realm_of(&from)?,
                    &realm_of(&to)?,
                    object_of(&class, &object)?,
                )
                .map_err(|e| at(e.into()))?,
            CommitOp::Delete { realm, class, key } => {
                let def = schema.class(&class).ok_or_else(|| {
                    at(ApiError::not_found(format!(
                        "the schema has no class `{class}`"
                    )))
                })?;
                let key = key_from_json(schema, def, &key).map_err(|e| at(e.into()))?;
                tx.delete_object(&realm_of(&realm)?, &class, key)
                    .map_err(|e| at(e.into()))?
            }
        }
    }
    Ok(())
}

/// Add metadata given as key → base64 value to `tx`, and the values it expects (key → base64
/// or null).
pub(super) fn add_metadata(
    tx: &mut WriteTx,
    metadata: BTreeMap<String, String>,
    expect: BTreeMap<String, Option<String>>,
) -> Result<(), ApiError> {
    let decode = |what: &str, key: &str, value: String| {
        STANDARD
            .decode(value.as_bytes())
            .map_err(|e| ApiError::bad_request(format!("{what} {key:?}: not base64: {e}")))
    };
    for (key, value) in metadata {
        let value = decode("metadata", &key, value)?;
        tx.set_metadata(key, value);
    }
    for (key, value) in expect {
        let value = value.map(|v| decode("expect", &key, v)).transpose()?;
        tx.expect_metadata(key, value);
    }
    Ok(())
}

/// The feed's subscription message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Subscribe {
    pattern: String,
    #[serde(default)]
    resume: BTreeMap<String, u64>,
    /// Changesets of this origin are sent without their instructions.
    #[serde(default)]
    headers_only: Option<String>,
}

/// `GET /v1/admin/feed` (WebSocket).
pub(super) async fn feed(
    State(server): State<Server>,
    _: Admin,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Ok(ws) = ws else {
        return Err(ApiError::bad_request("the feed needs a WebSocket upgrade"));
    };
    // The subscription names every realm's position: allow it the admin body limit.
    let max = server.shared.options.max_admin_body_bytes;
    let store = server.shared.store.clone();
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| run_feed(socket, store))
        .into_response())
}

fn error_message(code: &str, message: impl std::fmt::Display) -> Message {
    Message::Text(
        json!({"error": {"code": code, "message": message.to_string()}})
            .to_string()
            .into(),
    )
}

async fn run_feed(mut socket: WebSocket, store: Store) {
    let first = tokio::time::timeout(SUBSCRIBE_TIMEOUT, socket.recv()).await;
    let subscription = match first {
        Ok(Some(Ok(Message::Text(text)))) => subscription_from(&text),
        Ok(Some(Ok(_))) => Err("the first message must be the subscription, as JSON text".into()),
        Ok(None | Some(Err(_))) => return,
        Err(_) => Err(format!(
            "no subscription within {}s of the upgrade",
            SUBSCRIBE_TIMEOUT.as_secs()
        )),
    };
    let subscription = match subscription {
        Ok(s) => s,
        Err(message) => {
            let _ = socket.send(error_message("bad_request", message)).await;
            return;
        }
    };
    let mut feed = store.subscribe(subscription);
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
                    let StoreError::Pruned { realm, asked, oldest } = &e else {
                        let _ = socket.send(error_message("feed", e)).await;
                        return;
                    };
                    // The store's feed skips that realm from now on; the others keep flowing.
                    let body = json!({"error": {
                        "code": "pruned", "realm": realm.as_str(), "asked": asked,
                        "oldest": oldest, "message": e.to_string(),
                    }});
                    if socket.send(Message::Text(body.to_string().into())).await.is_err() {
                        return;
                    }
                }
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            // A periodic ping keeps proxies from closing an idle feed.
            _ = tokio::time::sleep(Duration::from_secs(30)) => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn subscription_from(text: &str) -> Result<Subscription, String> {
    let req: Subscribe = serde_json::from_str(text).map_err(|e| {
        format!("expected {{\"pattern\": regex, \"resume\": {{path: version}}}}: {e}")
    })?;
    let pattern = Regex::new(&req.pattern).map_err(|e| format!("pattern: {e}"))?;
    let mut subscription = Subscription::new(pattern);
    for (path, version) in req.resume {
        let path = RealmPath::parse(&path).map_err(|e| format!("resume: {e}"))?;
        subscription = subscription.resume_from(path, version);
    }
    if let Some(origin) = &req.headers_only {
        subscription = subscription.headers_only_from(origin);
    }
    Ok(subscription)
}
