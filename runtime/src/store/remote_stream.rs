//! The remote backend of [`StreamingTx`](super::StreamingTx): a streamed write held open by a
//! remote object server (`server/streams.rs`), so the sync engine's remote mode applies a
//! PostgreSQL transaction too large for memory as one atomic commit, as the embedded store does.
//!
//! The server holds the open transaction; this side holds only its id. Each batch goes to the
//! server as it is applied (in several requests when its JSON is large, so each stays far under
//! the admin body limit) and the server applies it to the open transaction as
//! `StreamingTx::apply` does locally. The reads the engine makes while streaming (`locate`,
//! `locate_many`, `object`, `keys`, `metadata`, `metadata_many`) are answered by the server from
//! that same open transaction, so they see the stream's own batches. Keeping that state on this
//! side instead would mean keeping every row the stream wrote — the memory streaming exists to
//! save — while the server has it in its transaction anyway. Memory here: one batch's
//! operations and their JSON. The cost is one request per read, as for every read of a remote
//! store (`locate_many` asks for the locations of many rows in one, `metadata_many` for the
//! values of many metadata keys, `object_many` for many stored objects).
//!
//! All or nothing: the server commits nothing before the commit request. A batch it refuses
//! aborts the stream there; dropping this uncommitted sends an abort; an engine that dies sends
//! nothing and the server aborts the stream after its idle timeout. A commit whose answer is lost
//! has an unknown outcome, as for any remote commit (see `remote.rs`); it is never retried here.

use std::collections::BTreeMap;

use bytes::Bytes;
use hyper::Method;
use pgrealm_schema::{PrimaryKey, Value};
use serde_json::{json, Value as Json};

use super::error::StoreError;
use super::path::RealmPath;
use super::remote::{
    expected_json, in_chunks, locate_many_json, metadata_json, metadata_many_json,
    object_many_json, op_to_json, RemoteBackend,
};
use super::write::{Collected, CommitInfo};
use super::Store;
use crate::json::{key_from_json, key_to_json};
use crate::server::{MAX_LOCATE_KEYS, MAX_METADATA_KEYS, MAX_OBJECT_KEYS};

/// The JSON of operations one request carries at most (the last op may pass it): far under the
/// server's admin body limit (1 GiB by default), and what is held here at once besides the batch.
const MAX_REQUEST_BYTES: usize = 16 << 20;

/// A streamed write open on a remote object server; see the module header.
pub(super) struct RemoteStream {
    store: Store,
    id: String,
    origin: String,
    /// Whether the server may still hold the stream: dropping it then sends an abort.
    open: bool,
}

impl RemoteStream {
    /// Open a stream on the server (`POST /v1/admin/streams`).
    pub(super) fn open(
        store: Store,
        origin: String,
        owner: Option<String>,
    ) -> Result<RemoteStream, StoreError> {
        let backend = backend(&store);
        let body = json!({ "origin": origin, "owner": owner }).to_string();
        let answer = backend.stream_request(
            "opening a streamed write",
            Method::POST,
            String::new(),
            Some(Bytes::from(body)),
        )?;
        let id = answer["id"]
            .as_str()
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
            .ok_or_else(|| backend.unexpected("opening a streamed write", &answer.to_string()))?
            .to_owned();
        Ok(RemoteStream {
            store,
            id,
            origin,
            open: true,
        })
    }

    pub(super) fn origin(&self) -> &str {
        &self.origin
    }

    fn backend(&self) -> &RemoteBackend {
        backend(&self.store)
    }

    fn request(&self, what: &str, action: &str, body: Vec<u8>) -> Result<Json, StoreError> {
        self.backend().stream_request(
            what,
            Method::POST,
            format!("/{}/{action}", self.id),
            Some(Bytes::from(body)),
        )
    }

    /// Send one batch: its operations (in as many requests as their size needs), then its
    /// metadata with the last of them.
    pub(super) fn apply(&mut self, batch: Collected) -> Result<(), StoreError> {
        let Collected {
            ops,
            metadata,
            expected,
        } = batch;
        if ops.is_empty() && metadata.is_empty() && expected.is_empty() {
            return Ok(());
        }
        let mut body = b"{\"ops\":[".to_vec();
        let mut in_body = 0;
        for op in &ops {
            let json = op_to_json(self.backend().schema(), op).to_string();
            if in_body > 0 && body.len() + json.len() > MAX_REQUEST_BYTES {
                body.extend_from_slice(b"]}");
                self.request("sending a batch of a streamed write", "ops", body)?;
                body = b"{\"ops\":[".to_vec();
                in_body = 0;
            }
            if in_body > 0 {
                body.push(b',');
            }
            body.extend_from_slice(json.as_bytes());
            in_body += 1;
        }
        body.extend_from_slice(b"],\"metadata\":");
        body.extend_from_slice(metadata_json(&metadata).to_string().as_bytes());
        if !expected.is_empty() {
            body.extend_from_slice(b",\"expect\":");
            body.extend_from_slice(expected_json(&expected).to_string().as_bytes());
        }
        body.push(b'}');
        self.request("sending a batch of a streamed write", "ops", body)?;
        Ok(())
    }

    fn read(&self, what: &str, read: Json) -> Result<Json, StoreError> {
        self.request(what, "read", read.to_string().into_bytes())
    }

    pub(super) fn locate(
        &self,
        class: &str,
        key: &PrimaryKey,
    ) -> Result<Vec<RealmPath>, StoreError> {
        self.store.class(class)?;
        let answer = self.read(
            "locating an object in a streamed write",
            json!({"locate": {"class": class, "key": key_to_json(key)}}),
        )?;
        self.backend().locations_in(&answer)
    }

    pub(super) fn locate_many(
        &self,
        class: &str,
        keys: &[PrimaryKey],
    ) -> Result<Vec<Vec<RealmPath>>, StoreError> {
        self.store.class(class)?;
        in_chunks(keys, MAX_LOCATE_KEYS, |chunk| {
            let answer = self.read(
                "locating objects in a streamed write",
                locate_many_json(class, chunk),
            )?;
            self.backend().many_locations_in(&answer, chunk.len())
        })
    }

    pub(super) fn object(
        &self,
        realm: &RealmPath,
        class: &str,
        key: &PrimaryKey,
    ) -> Result<Option<BTreeMap<String, Value>>, StoreError> {
        self.store.class(class)?;
        let answer = self.read(
            "reading an object in a streamed write",
            json!({"object": {"path": realm.as_str(), "class": class, "key": key_to_json(key)}}),
        )?;
        match &answer["object"] {
            Json::Null => Ok(None),
            o => Ok(Some(self.backend().object_from(class, o)?.values)),
        }
    }

    pub(super) fn object_many(
        &self,
        objects: &[(RealmPath, String, PrimaryKey)],
    ) -> Result<Vec<Option<BTreeMap<String, Value>>>, StoreError> {
        for (_, class, _) in objects {
            self.store.class(class)?;
        }
        in_chunks(objects, MAX_OBJECT_KEYS, |chunk| {
            let answer = self.read(
                "reading objects in a streamed write",
                object_many_json(chunk),
            )?;
            let found = self.backend().many_objects_in(&answer, chunk)?;
            Ok(found.into_iter().map(|o| o.map(|o| o.values)).collect())
        })
    }

    pub(super) fn keys(&self, class: &str) -> Result<Vec<PrimaryKey>, StoreError> {
        let def = self.store.class(class)?;
        let answer = self.read(
            "listing keys in a streamed write",
            json!({"keys": {"class": class}}),
        )?;
        let backend = self.backend();
        let bad = |detail: String| backend.unexpected("keys", &detail);
        answer["keys"]
            .as_array()
            .ok_or_else(|| bad(answer.to_string()))?
            .iter()
            .map(|k| key_from_json(backend.schema(), def, k).map_err(|e| bad(e.to_string())))
            .collect()
    }

    pub(super) fn metadata(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let answer = self.read(
            "reading metadata in a streamed write",
            json!({"metadata": {"key": key}}),
        )?;
        self.backend().metadata_in(&answer)
    }

    pub(super) fn metadata_many<K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        in_chunks(keys, MAX_METADATA_KEYS, |chunk| {
            let answer = self.read(
                "reading metadata in a streamed write",
                metadata_many_json(chunk),
            )?;
            self.backend().many_metadata_in(&answer, chunk.len())
        })
    }

    /// Commit the stream; returns once the server holds it durably.
    pub(super) fn commit(mut self) -> Result<CommitInfo, StoreError> {
        // From here on an abort could only race the commit: its outcome is the commit's.
        self.open = false;
        let answer = self.request("committing a streamed write", "commit", b"{}".to_vec())?;
        self.backend().commit_info(&answer)
    }
}

impl Drop for RemoteStream {
    fn drop(&mut self) {
        if self.open {
            self.backend()
                .stream_request_detached(Method::DELETE, format!("/{}", self.id));
        }
    }
}

fn backend(store: &Store) -> &RemoteBackend {
    store
        .remote()
        .expect("a remote stream belongs to a remote store")
}
