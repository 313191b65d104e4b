//! Streamed writes through the admin API: one store transaction too large for one request (a
//! remote engine's large PostgreSQL transaction), opened, fed in batches, read from and
//! committed over several requests — the remote side of [`StreamingTx`].
//!
//! - `POST /v1/admin/streams` `{"origin","owner"}` → `{"id","idle_timeout_seconds"}`: opens a
//!   [`StreamingTx`] on the server's store, which takes the store's write lock. `owner`
//!   (optional) names who streams: a new stream with the owner of the open one replaces it (the
//!   open one is aborted), so an engine restarted after a crash need not wait out the idle
//!   timeout. The sync engine's owner is its replication slot, which PostgreSQL lets only one
//!   consumer use at a time.
//! - `POST /v1/admin/streams/{id}/ops` `{"ops":[…],"metadata":{key: base64}}` → `{"ops": n}`:
//!   one batch, ops in `/v1/admin/commit`'s form, applied to the open transaction.
//! - `POST /v1/admin/streams/{id}/read` with one read of the store as the stream leaves it
//!   (its own batches included): `{"locate":{"class","key"}}` → `{"realms":[path]}`,
//!   `{"locate_many":{"class","keys":[key, …]}}` → `{"realms":[[path], …]}` (each key's realms,
//!   in order; at most `MAX_LOCATE_KEYS` keys, as `/v1/admin/read` answers it),
//!   `{"object":{"path","class","key"}}` → `{"object": {…} | null}`,
//!   `{"object_many":{"objects":[{"path","class","key"}, …]}}` → `{"objects":[{…} | null, …]}`
//!   (in order; at most `MAX_OBJECT_KEYS`, as `/v1/admin/read` answers it), `{"keys":{"class"}}` →
//!   `{"keys":[key]}`, `{"metadata":{"key"}}` → `{"value": base64 | null}`,
//!   `{"metadata_many":{"keys":[key, …]}}` → `{"values":[base64 | null, …]}` (in order; at most
//!   `MAX_METADATA_KEYS` keys, as `/v1/admin/read` answers it).
//! - `POST /v1/admin/streams/{id}/commit` `{"metadata":{…}}` → `{"versions":[{"path","version"}]}`
//!   once the whole transaction is durable, as `/v1/admin/commit` answers.
//! - `DELETE /v1/admin/streams/{id}` → `{"aborted": true}`.
//!
//! What it guarantees:
//! - All or nothing. A batch that fails validation or cannot be applied aborts the whole
//!   stream and the answer says so; an abort, a failed commit and the idle timeout leave
//!   nothing of it either. Nothing is visible before the commit answers.
//! - A stream holds the store's write lock (ordinary commits wait for it), so at most one is
//!   open: opening a second (of another owner, or without one) answers 409 `stream_open`, naming
//!   the open one. A stream idle for
//!   longer than [`ServerOptions::stream_idle_timeout`] is aborted by the server, so a dead
//!   engine cannot hold the lock forever; a request for a stream that is gone answers 404
//!   `no_stream`.
//! - Its redb work never runs on the async workers: each stream's transaction lives on a thread
//!   of its own, which the requests hand their bodies to (parsing included) and which answers
//!   them in order.
//!
//! [`ServerOptions::stream_idle_timeout`]: super::ServerOptions::stream_idle_timeout

use std::collections::BTreeMap;
use std::sync::mpsc as std_mpsc;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json as JsonBody;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use pgrealm_schema::Object;
use serde::Deserialize;
use serde_json::{json, Value as Json};
use tokio::sync::oneshot;

use super::admin::{
    add_metadata, add_ops, locate_many_keys, locations_json, metadata_many_keys,
    metadata_values_json, object_many_refs, objects_json, parse_path, Admin, CommitOp, ObjectAt,
    MAX_ORIGIN_LEN,
};
use super::{class, ApiError, Server};
use crate::json::{key_from_json, key_to_json, object_to_json};
use crate::metrics::Metrics;
use crate::store::{StreamingTx, WriteTx};

/// What every answer that ends a stream without committing it adds.
const ABORTED: &str = "the stream was aborted and nothing of it was committed: open a new \
                       stream (POST /v1/admin/streams) and send the whole transaction again";

/// The longest owner a stream may name (a replication slot's name is at most 63 bytes).
const MAX_OWNER_LEN: usize = 256;

/// The open stream, if any: at most one, since it holds the store's write lock.
#[derive(Default)]
pub(super) struct Streams {
    open: Mutex<Option<Open>>,
}

struct Open {
    id: String,
    origin: String,
    owner: Option<String>,
    opened: Instant,
    commands: std_mpsc::Sender<Command>,
}

/// A request handed to the stream's thread, with where its answer goes.
struct Command {
    kind: Kind,
    body: Bytes,
    reply: oneshot::Sender<Result<Json, ApiError>>,
}

enum Kind {
    Ops,
    Read,
    Commit,
    Abort,
}

impl Streams {
    fn lock(&self) -> MutexGuard<'_, Option<Open>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forget stream `id`: it ended. Called before its last answer goes out, so the client may
    /// open the next stream at once.
    fn close(&self, id: &str) {
        let mut open = self.lock();
        if open.as_ref().is_some_and(|o| o.id == id) {
            *open = None;
        }
    }
}

fn stream_open(other: &Open, idle: Duration) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "stream_open",
        format!(
            "another stream ({}, origin `{}`, opened {}s ago) is open and holds the store's write \
             lock; only one stream may be open at a time: commit or abort it (DELETE \
             /v1/admin/streams/{}), or retry later — the server aborts a stream idle for more \
             than {}s",
            other.id,
            other.origin,
            other.opened.elapsed().as_secs(),
            other.id,
            idle.as_secs_f64()
        ),
    )
}

fn no_stream(id: &str, idle: Duration) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_stream",
        format!(
            "no open stream {id}: it was committed, aborted, or aborted by the server after {}s \
             idle (nothing of an aborted stream is committed); open a new stream (POST \
             /v1/admin/streams) and send the whole transaction again",
            idle.as_secs_f64()
        ),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenRequest {
    /// The origin tag of the changesets, as in `/v1/admin/commit`.
    origin: String,
    /// Who streams: a new stream of the same owner replaces an open one.
    #[serde(default)]
    owner: Option<String>,
}

/// `POST /v1/admin/streams`.
pub(super) async fn open(
    State(server): State<Server>,
    _: Admin,
    body: Bytes,
) -> Result<JsonBody<Json>, ApiError> {
    let req: OpenRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"origin\": \"…\"}}: {e}")))?;
    if req.origin.is_empty() || req.origin.len() > MAX_ORIGIN_LEN {
        return Err(ApiError::bad_request(format!(
            "origin must be 1 to {MAX_ORIGIN_LEN} characters"
        )));
    }
    if req
        .owner
        .as_ref()
        .is_some_and(|o| o.is_empty() || o.len() > MAX_OWNER_LEN)
    {
        return Err(ApiError::bad_request(format!(
            "owner must be 1 to {MAX_OWNER_LEN} bytes"
        )));
    }
    let idle = server.shared.options.stream_idle_timeout;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (commands, received) = std_mpsc::channel();
    loop {
        // The open stream of the same owner, to abort before taking its place.
        let replaced = {
            let mut open = server.shared.streams.lock();
            match open.as_ref() {
                None => {
                    *open = Some(Open {
                        id: id.clone(),
                        origin: req.origin.clone(),
                        owner: req.owner.clone(),
                        opened: Instant::now(),
                        commands,
                    });
                    break;
                }
                Some(other) if req.owner.is_some() && other.owner == req.owner => {
                    (other.id.clone(), other.commands.clone())
                }
                Some(other) => return Err(stream_open(other, idle)),
            }
        };
        let (old_id, old_commands) = replaced;
        replace(
            &server,
            &old_id,
            old_commands,
            req.owner.as_deref().unwrap_or_default(),
        )
        .await?;
    }
    let (ready, opened) = oneshot::channel();
    let (thread_server, thread_id) = (server.clone(), id.clone());
    let spawned = std::thread::Builder::new()
        .name("pgrealm-stream".into())
        .spawn(move || run(thread_server, thread_id, req.origin, received, ready));
    if let Err(e) = spawned {
        server.shared.streams.close(&id);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal",
            format!("cannot start the stream's thread ({e}); check the process's thread limit"),
        ));
    }
    match opened.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the stream's thread ended before the stream opened; see the server's log",
            ))
        }
    }
    Ok(JsonBody(
        json!({"id": id, "idle_timeout_seconds": idle.as_secs_f64()}),
    ))
}

/// Abort the open stream `old_id` of `owner` for a stream of the same owner (or a release).
/// Its thread answers after the requests queued before this one, and forgets the stream before
/// answering. Only an answered abort proves nothing of it was committed: a thread that ended
/// otherwise may have been committing it, and the owner must then read the checkpoint again
/// before sending anything (409 `stream_replaced`).
async fn replace(
    server: &Server,
    old_id: &str,
    old_commands: std_mpsc::Sender<Command>,
    owner: &str,
) -> Result<(), ApiError> {
    tracing::warn!(
        stream = %old_id,
        owner,
        "a stream of the same owner replaces an open one: aborted, nothing of it committed"
    );
    let (reply, done) = oneshot::channel();
    let abort = Command {
        kind: Kind::Abort,
        body: Bytes::new(),
        reply,
    };
    let aborted = old_commands.send(abort).is_ok() && matches!(done.await, Ok(Ok(_)));
    server.shared.streams.close(old_id);
    if aborted {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "stream_replaced",
        format!(
            "the open stream {old_id} of owner `{owner}` ended while it was replaced, and it may \
             have committed: read the checkpoint again, then open a new stream"
        ),
    ))
}

/// `POST /v1/admin/streams/release`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseRequest {
    owner: String,
}

/// `POST /v1/admin/streams/release` `{"owner"}`: abort the open stream of `owner`, if any,
/// without opening one — what an engine does as it starts, so a stream its crashed predecessor
/// left open stops holding the write lock at once. Answers `{"released": bool}`, or 409
/// `stream_replaced` as `open` does.
pub(super) async fn release(
    State(server): State<Server>,
    _: Admin,
    body: Bytes,
) -> Result<JsonBody<Json>, ApiError> {
    let req: ReleaseRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"owner\": \"…\"}}: {e}")))?;
    if req.owner.is_empty() || req.owner.len() > MAX_OWNER_LEN {
        return Err(ApiError::bad_request(format!(
            "owner must be 1 to {MAX_OWNER_LEN} bytes"
        )));
    }
    let found = match server.shared.streams.lock().as_ref() {
        Some(open) if open.owner.as_deref() == Some(req.owner.as_str()) => {
            Some((open.id.clone(), open.commands.clone()))
        }
        _ => None,
    };
    let released = match found {
        Some((id, commands)) => {
            replace(&server, &id, commands, &req.owner).await?;
            true
        }
        None => false,
    };
    Ok(JsonBody(json!({ "released": released })))
}

/// `POST /v1/admin/streams/{id}/ops`.
pub(super) async fn ops(
    State(server): State<Server>,
    _: Admin,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<JsonBody<Json>, ApiError> {
    send(&server, &id, Kind::Ops, body).await
}

/// `POST /v1/admin/streams/{id}/read`.
pub(super) async fn read(
    State(server): State<Server>,
    _: Admin,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<JsonBody<Json>, ApiError> {
    Metrics::add(&server.shared.metrics.admin_reads, 1);
    send(&server, &id, Kind::Read, body).await
}

/// `POST /v1/admin/streams/{id}/commit`.
pub(super) async fn commit(
    State(server): State<Server>,
    _: Admin,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<JsonBody<Json>, ApiError> {
    send(&server, &id, Kind::Commit, body).await
}

/// `DELETE /v1/admin/streams/{id}`.
pub(super) async fn abort(
    State(server): State<Server>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<JsonBody<Json>, ApiError> {
    send(&server, &id, Kind::Abort, Bytes::new()).await
}

/// Hand a request to stream `id`'s thread and wait for its answer.
async fn send(
    server: &Server,
    id: &str,
    kind: Kind,
    body: Bytes,
) -> Result<JsonBody<Json>, ApiError> {
    let idle = server.shared.options.stream_idle_timeout;
    let commands = match server.shared.streams.lock().as_ref() {
        Some(open) if open.id == id => open.commands.clone(),
        _ => return Err(no_stream(id, idle)),
    };
    let (reply, answer) = oneshot::channel();
    if commands.send(Command { kind, body, reply }).is_err() {
        return Err(no_stream(id, idle));
    }
    // A dropped reply: the thread ended (idle timeout) with this request still queued.
    match answer.await {
        Ok(result) => result.map(JsonBody),
        Err(_) => Err(no_stream(id, idle)),
    }
}

/// The thread of one stream: open it, answer its requests in order, end it.
fn run(
    server: Server,
    id: String,
    origin: String,
    commands: std_mpsc::Receiver<Command>,
    ready: oneshot::Sender<Result<(), ApiError>>,
) {
    let shared = &server.shared;
    let store = shared.store.clone();
    let idle = shared.options.stream_idle_timeout;
    let ended = |committed: bool| {
        let counter = if committed {
            &shared.metrics.admin_streams_committed
        } else {
            &shared.metrics.admin_streams_aborted
        };
        Metrics::add(counter, 1);
        shared.streams.close(&id);
    };
    let mut stream = match store.begin_streaming(origin.clone()) {
        Ok(stream) => stream,
        Err(e) => {
            shared.streams.close(&id);
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    if ready.send(Ok(())).is_err() {
        // The opening request went away: nobody knows this stream's id.
        drop(stream);
        ended(false);
        return;
    }
    let mut batch = store.begin_write(origin);
    loop {
        let Command { kind, body, reply } = match commands.recv_timeout(idle) {
            Ok(command) => command,
            Err(e) => {
                if e == std_mpsc::RecvTimeoutError::Timeout {
                    tracing::warn!(
                        stream = %id,
                        idle_seconds = idle.as_secs_f64(),
                        "a streamed write was idle past its timeout: aborted, nothing of it committed"
                    );
                }
                drop(stream);
                ended(false);
                return;
            }
        };
        match kind {
            Kind::Read => {
                let _ = reply.send(read_in(&server, &stream, &body));
            }
            Kind::Ops => match apply_batch(&server, stream, &mut batch, &body, false) {
                Ok((next, n)) => {
                    stream = next;
                    Metrics::add(&shared.metrics.admin_stream_batches, 1);
                    let _ = reply.send(Ok(json!({ "ops": n })));
                }
                Err(e) => {
                    ended(false);
                    let _ = reply.send(Err(e.and(ABORTED)));
                    return;
                }
            },
            Kind::Commit => {
                let committed = apply_batch(&server, stream, &mut batch, &body, true)
                    .and_then(|(stream, _)| Ok(stream.commit()?));
                ended(committed.is_ok());
                let answer = match committed {
                    Ok(info) => {
                        let versions: Vec<Json> = info
                            .versions
                            .iter()
                            .map(|(path, version)| json!({"path": path.as_str(), "version": version}))
                            .collect();
                        Ok(json!({ "versions": versions }))
                    }
                    Err(e) => Err(e.and(ABORTED)),
                };
                let _ = reply.send(answer);
                return;
            }
            Kind::Abort => {
                drop(stream);
                ended(false);
                let _ = reply.send(Ok(json!({ "aborted": true })));
                return;
            }
        }
    }
}

/// One batch's body: ops (not for a commit) and metadata.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    #[serde(default)]
    ops: Vec<CommitOp>,
    /// Metadata key → base64 value, stored atomically with the commit.
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// Metadata the stream expects to find, as in `/v1/admin/commit`: checked against the
    /// open transaction, which no other commit can change while it is open.
    #[serde(default)]
    expect: BTreeMap<String, Option<String>>,
}

/// Apply a batch to the open transaction; on error the transaction is gone (dropped: aborted).
fn apply_batch(
    server: &Server,
    stream: StreamingTx,
    batch: &mut WriteTx,
    body: &[u8],
    commit: bool,
) -> Result<(StreamingTx, usize), ApiError> {
    let expected = if commit {
        "expected {\"metadata\": {key: base64}}"
    } else {
        "expected {\"ops\": [{\"put\": {\"realm\", \"class\", \"object\"}}, …], \"metadata\": {key: base64}}"
    };
    let req: Batch = serde_json::from_slice(if body.is_empty() { b"{}" } else { body })
        .map_err(|e| ApiError::bad_request(format!("{expected}: {e}")))?;
    if commit && !req.ops.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{expected}: send the last ops to /ops before the commit"
        )));
    }
    let n = req.ops.len();
    let store = &server.shared.store;
    add_ops(store, batch, req.ops)?;
    add_metadata(batch, req.metadata, req.expect)?;
    Ok((stream.apply(batch)?, n))
}

/// One read of `POST /v1/admin/streams/{id}/read`, externally tagged.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum StreamRead {
    Locate {
        class: String,
        key: Json,
    },
    LocateMany {
        class: String,
        keys: Vec<Json>,
    },
    Object {
        path: String,
        class: String,
        key: Json,
    },
    ObjectMany {
        objects: Vec<ObjectAt>,
    },
    Keys {
        class: String,
    },
    Metadata {
        key: String,
    },
    MetadataMany {
        keys: Vec<String>,
    },
}

fn read_in(server: &Server, stream: &StreamingTx, body: &[u8]) -> Result<Json, ApiError> {
    let read: StreamRead = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "expected one read such as {{\"locate\":{{\"class\",\"key\"}}}}, \
             {{\"locate_many\":{{\"class\",\"keys\"}}}}, {{\"object\":{{\"path\",\"class\",\"key\"}}}}, \
             {{\"object_many\":{{\"objects\"}}}}, {{\"keys\":{{\"class\"}}}}, \
             {{\"metadata\":{{\"key\"}}}} or {{\"metadata_many\":{{\"keys\"}}}}: {e}"
        ))
    })?;
    let schema = server.shared.store.schema();
    Ok(match read {
        StreamRead::Locate { class: name, key } => {
            let class = class(server, &name)?;
            let key = key_from_json(schema, class, &key)?;
            let realms = stream.locate(&class.name, &key)?;
            json!({ "realms": realms.iter().map(|r| r.as_str()).collect::<Vec<_>>() })
        }
        StreamRead::LocateMany { class: name, keys } => {
            let (name, keys) = locate_many_keys(server, &name, &keys)?;
            locations_json(&stream.locate_many(&name, &keys)?)
        }
        StreamRead::Object {
            path,
            class: name,
            key,
        } => {
            let path = parse_path(&path)?;
            let class = class(server, &name)?;
            let key = key_from_json(schema, class, &key)?;
            let object = stream.object(&path, &class.name, &key)?.map(|values| {
                object_to_json(&Object {
                    class: class.name.clone(),
                    values,
                })
            });
            json!({ "object": object })
        }
        StreamRead::ObjectMany { objects } => {
            let objects = object_many_refs(server, &objects)?;
            let found = stream.object_many(&objects)?;
            let found: Vec<Option<Object>> = objects
                .iter()
                .zip(found)
                .map(|((_, class, _), values)| {
                    values.map(|values| Object {
                        class: class.clone(),
                        values,
                    })
                })
                .collect();
            objects_json(&found)
        }
        StreamRead::Keys { class: name } => {
            let class = class(server, &name)?;
            let keys = stream.keys(&class.name)?;
            json!({ "keys": keys.iter().map(key_to_json).collect::<Vec<_>>() })
        }
        StreamRead::Metadata { key } => {
            let value = stream.metadata(&key)?;
            json!({ "value": value.map(|v| STANDARD.encode(v)) })
        }
        StreamRead::MetadataMany { keys } => {
            metadata_many_keys(&keys)?;
            metadata_values_json(&stream.metadata_many(&keys)?)
        }
    })
}
