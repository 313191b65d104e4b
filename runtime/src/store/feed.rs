//! The change feed: every changeset of the realms whose path matches a pattern, from a version
//! per realm, first caught up from the log and then live, in commit order per realm.
//!
//! The log is the source of truth; commit notifications only say which realm to read next.
//! A subscriber that falls behind the notification buffer re-reads the realm list, so it does
//! more work but never misses a changeset. Reads run on tokio's blocking pool.
//!
//! On a remote store the server runs this feed and streams it over one WebSocket (see
//! `remote.rs`); this side only keeps the positions.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::Bound::{Excluded, Unbounded};

use regex::Regex;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

use super::changeset::Changeset;
use super::error::StoreError;
use super::path::RealmPath;
use super::remote::RemoteFeed;
use super::{Committed, Store};

/// How many changesets one blocking read fetches for one realm.
const BATCH: usize = 512;

/// Which realms to follow and where to start.
#[derive(Debug, Clone)]
pub struct Subscription {
    pattern: Regex,
    resume: HashMap<RealmPath, u64>,
    headers_only: Option<String>,
}

impl Subscription {
    /// The pattern, the positions to resume from and the origin sent without instructions (for
    /// a remote server's feed).
    pub(super) fn parts(&self) -> (&Regex, &HashMap<RealmPath, u64>, Option<&str>) {
        (&self.pattern, &self.resume, self.headers_only.as_deref())
    }

    /// Follow every realm whose path matches `pattern` anywhere (like JavaScript's
    /// `RegExp.test`, as the original's `realmRegex`; anchor with `^…$` for a whole match),
    /// including realms created later. Realms start from their first changeset unless
    /// [`resume_from`](Self::resume_from) says otherwise.
    pub fn new(pattern: Regex) -> Self {
        Subscription {
            pattern,
            resume: HashMap::new(),
            headers_only: None,
        }
    }

    /// Follow every realm.
    pub fn all() -> Self {
        Subscription::new(Regex::new("").expect("the empty pattern is valid"))
    }

    /// `realm`'s changesets up to and including `last_seen` were already handled: deliver the
    /// ones after it.
    pub fn resume_from(mut self, realm: RealmPath, last_seen: u64) -> Self {
        self.resume.insert(realm, last_seen);
        self
    }

    /// Deliver the changesets committed with `origin` without their instructions (realm,
    /// version, origin and time only), for a follower that skips them: their instructions are
    /// never read, so one commit of a million objects costs it nothing (on a remote store the
    /// server leaves them out).
    pub fn headers_only_from(mut self, origin: &str) -> Self {
        self.headers_only = Some(origin.to_owned());
        self
    }
}

/// A live stream of changesets; see [`Store::subscribe`].
///
/// ```
/// # use pgrealm_runtime::{RealmPath, Store, StoreOptions, Subscription};
/// # use pgrealm_schema::{Class, IntWidth, Object, Property, PropertyType, ScalarType, Schema, Value};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let schema = Schema::new(vec![Class::new("Bus")
/// #     .property(Property::new("id", PropertyType::Scalar(ScalarType::Int(IntWidth::I64))).primary_key())]);
/// # let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), schema, StoreOptions::default())?;
/// let mut feed = store.subscribe(Subscription::new(regex::Regex::new("^/transit")?));
///
/// let realm = RealmPath::parse("/transit")?;
/// let mut tx = store.begin_write("app");
/// tx.put_object(&realm, Object::new("Bus").with("id", Value::Int(1)))?;
/// tx.commit()?;
///
/// let changeset = feed.next().await?;
/// assert_eq!((changeset.realm.as_str(), changeset.version), ("/transit", 1));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ChangeFeed {
    store: Store,
    pattern: Regex,
    delivered: HashMap<RealmPath, u64>,
    rx: broadcast::Receiver<Committed>,
    pending: VecDeque<Changeset>,
    headers_only: Option<String>,
    dirty: BTreeSet<RealmPath>,
    last_fetched: Option<RealmPath>,
    rescan: bool,
    failed: HashSet<RealmPath>,
    /// The server's feed, on a remote store.
    remote: Option<RemoteFeed>,
}

impl ChangeFeed {
    pub(super) fn new(store: Store, subscription: Subscription) -> Self {
        // Listen before the first scan, so a commit between the two is seen by one or the other.
        let rx = store.inner.feed.subscribe();
        let remote = store.remote().map(|r| r.subscribe(&subscription));
        ChangeFeed {
            store,
            pattern: subscription.pattern,
            delivered: subscription.resume,
            rx,
            pending: VecDeque::new(),
            headers_only: subscription.headers_only,
            dirty: BTreeSet::new(),
            last_fetched: None,
            rescan: true,
            failed: HashSet::new(),
            remote,
        }
    }

    /// The last version delivered per realm (including the positions resumed from): what a
    /// subscriber persists to resume later.
    pub fn positions(&self) -> &HashMap<RealmPath, u64> {
        &self.delivered
    }

    /// The next changeset. Cancel-safe: dropping the future loses nothing.
    ///
    /// [`StoreError::Pruned`] means a realm's log no longer reaches back to where this feed
    /// stands; the feed skips that realm from then on (resynchronize it and subscribe again from
    /// its current version), other realms keep flowing.
    pub async fn next(&mut self) -> Result<Changeset, StoreError> {
        if let Some(remote) = &mut self.remote {
            let changeset = remote.next().await?;
            self.delivered
                .insert(changeset.realm.clone(), changeset.version);
            return Ok(changeset);
        }
        loop {
            if let Some(changeset) = self.pending.pop_front() {
                self.delivered
                    .insert(changeset.realm.clone(), changeset.version);
                return Ok(changeset);
            }
            // State changes only after each await completes, so a caller may drop this future
            // (`select!`, `timeout`) at any point without losing a changeset.
            if self.rescan {
                self.scan().await?;
                self.rescan = false;
                continue;
            }
            // Realms take turns (in path order after the last one read), so one realm's backlog
            // does not hold up the others.
            let turn = match &self.last_fetched {
                Some(last) => self.dirty.range((Excluded(last), Unbounded)).next(),
                None => None,
            };
            if let Some(realm) = turn.or_else(|| self.dirty.first()).cloned() {
                self.fetch(realm.clone()).await?;
                self.last_fetched = Some(realm);
                continue;
            }
            // Nothing to read: wait for a commit, then take every notification already queued so
            // one read serves many commits.
            let first = self.rx.recv().await;
            self.note(first);
            loop {
                match self.rx.try_recv() {
                    Ok(c) => self.note(Ok(c)),
                    Err(TryRecvError::Lagged(_)) => self.rescan = true,
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
        }
    }

    fn note(&mut self, received: Result<Committed, RecvError>) {
        match received {
            Ok(c) => {
                let behind = self.delivered.get(&c.path).copied().unwrap_or(0) < c.version;
                if behind
                    && !self.failed.contains(&c.path)
                    && self.pattern.is_match(c.path.as_str())
                {
                    self.dirty.insert(c.path);
                }
            }
            Err(RecvError::Lagged(_)) => self.rescan = true,
            // The sender lives as long as the store this feed holds, so it cannot close.
            Err(RecvError::Closed) => {}
        }
    }

    /// Mark every matching realm that is ahead of this feed.
    async fn scan(&mut self) -> Result<(), StoreError> {
        let store = self.store.clone();
        let realms = blocking(move || store.snapshot()?.realms()).await?;
        for info in realms {
            let seen = self.delivered.get(&info.path).copied().unwrap_or(0);
            if info.version > seen
                && !self.failed.contains(&info.path)
                && self.pattern.is_match(info.path.as_str())
            {
                self.dirty.insert(info.path);
            }
        }
        Ok(())
    }

    async fn fetch(&mut self, realm: RealmPath) -> Result<(), StoreError> {
        let after = self.delivered.get(&realm).copied().unwrap_or(0);
        let store = self.store.clone();
        let path = realm.clone();
        let headers_only = self.headers_only.clone();
        let read = blocking(move || {
            store
                .snapshot()?
                .changes_skipping(&path, after, BATCH, headers_only.as_deref())
        })
        .await;
        let changes = match read {
            Err(e @ StoreError::Pruned { .. }) => {
                self.dirty.remove(&realm);
                self.failed.insert(realm);
                return Err(e);
            }
            other => other?,
        };
        if changes.len() < BATCH {
            // Caught up; after a full batch more may follow, on the realm's next turn.
            self.dirty.remove(&realm);
        }
        self.pending.extend(changes);
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::FeedTask(e.to_string()))?
}
