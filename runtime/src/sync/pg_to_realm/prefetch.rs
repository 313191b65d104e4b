//! Reads ahead, in remote mode only: where the rows the engine has already received live,
//! asked in one `locate_many` per class ([`Snapshot::locate_many`],
//! [`StreamingTx::locate_many`]) instead of one request per row, and kept until
//! [`Group::base_locate`] asks; and the store metadata their list subtable rows need — each
//! owner's entries (`postgres/<slot>/list/…`, see `lists.rs`) and, first, the generations that
//! name those keys — asked in one `metadata_many` per kind ([`Snapshot::metadata_many`],
//! [`StreamingTx::metadata_many`]) and kept until [`Group::base_metadata`] asks; and the
//! stored objects of the rows that will need them — an update that changes the row's key, or
//! moves it out of the realm that holds it (a row the initial load copies over realms that
//! hold it is such an update), and does not carry every property (a class with lists never
//! does) keeps the stored values — decided from the locations just read and asked
//! in one `object_many` ([`Snapshot::object_many`], [`StreamingTx::object_many`]), kept until
//! [`Group::base_values`] asks.
//!
//! The caches hold answers of the group's *base* (its snapshot, or while streaming its open
//! store transaction as of the last applied batch), so they are valid exactly as long as that
//! base: they are cleared together whenever the base changes (`refresh`, a streamed batch
//! applied, streaming started), and each clearing moves their epoch on, so the session knows
//! that the events it read ahead must be read ahead again. The overlay still answers first for
//! objects the group itself touched, and the group's own list entries (`Group::lists`) and
//! generations (`Group::list_generation`) for the lists it touched or truncated; metadata is
//! kept by its full key, generation included, so a TRUNCATE (a new generation) never meets
//! entries read under the old one. A remote snapshot is not one state but answers as of each
//! request (see `store/read.rs`): an answer read ahead is as of a moment between the group's
//! start and the row's apply — never older than what an embedded snapshot, read as of the
//! group's start, would answer.
//!
//! It must never change what is applied: an answer missing from it falls back to the base,
//! which answers the same. On an embedded store it is never filled and costs one `is_empty`.
//!
//! [`Snapshot::locate_many`]: crate::store::Snapshot::locate_many
//! [`StreamingTx::locate_many`]: crate::store::StreamingTx::locate_many
//! [`Snapshot::metadata_many`]: crate::store::Snapshot::metadata_many
//! [`StreamingTx::metadata_many`]: crate::store::StreamingTx::metadata_many
//! [`Snapshot::object_many`]: crate::store::Snapshot::object_many
//! [`StreamingTx::object_many`]: crate::store::StreamingTx::object_many

use std::collections::{BTreeMap, HashSet};

use pgrealm_schema::{PrimaryKey, Value};

use super::{Group, ListKey, UpdateAhead, PATCH_LIMIT};
use crate::store::{RealmPath, StoreError};
use crate::sync::pg_to_realm::mapping::Mapper;

/// Keys located per `locate_many` in remote mode when every object of a class is deleted (a
/// TRUNCATE) or every list of a transaction is written.
pub(super) const LOCATE_CHUNK: usize = 8_192;

impl Group {
    /// Whether the group reads ahead (its store is a remote one).
    pub(crate) fn reads_ahead(&self) -> bool {
        self.remote
    }

    /// Moves on each time what was read ahead is dropped (the base changed).
    pub(crate) fn read_ahead_epoch(&self) -> u64 {
        self.read_ahead_epoch
    }

    /// About how many more changes go into the base as it is now: a streaming group applies its
    /// next batch (and drops what was read ahead) after that many operations, a group about to
    /// stream opens its store transaction. Reading further ahead would be read again.
    pub(crate) fn changes_before_base_changes(&self) -> usize {
        let left = if self.streaming.is_some() {
            self.stream_batch_size().saturating_sub(self.tx.len())
        } else if self.in_tx {
            let in_tx = self.tx.len().saturating_sub(self.tx_first_op);
            self.stream_after.saturating_sub(in_tx)
        } else {
            self.stream_after
        };
        left.max(1)
    }

    /// Drop the locations, metadata and objects read ahead: the base they were read from
    /// changed.
    pub(super) fn clear_read_ahead(&mut self) {
        if !self.located.is_empty() {
            self.located.clear();
        }
        if !self.metadata_ahead.is_empty() {
            self.metadata_ahead.clear();
        }
        if !self.objects_ahead.is_empty() {
            self.objects_ahead.clear();
        }
        self.read_ahead_epoch += 1;
    }

    /// The values of an object in `realm` read ahead from the base, if they were (`Some(None)`:
    /// the realm does not hold it).
    pub(super) fn object_read_ahead(
        &self,
        class: usize,
        key: &PrimaryKey,
        realm: &RealmPath,
    ) -> Option<&Option<BTreeMap<String, Value>>> {
        if self.objects_ahead.is_empty() {
            return None;
        }
        self.objects_ahead.get(&(class, key.clone(), realm.clone()))
    }

    /// The location of an object read ahead from the base, if it was.
    pub(super) fn located(&self, class: usize, key: &PrimaryKey) -> Option<&Vec<RealmPath>> {
        if self.located.is_empty() {
            return None;
        }
        self.located.get(&(class, key.clone()))
    }

    /// The metadata under `key` read ahead from the base, if it was (`Some(None)`: it holds
    /// nothing).
    pub(super) fn metadata_read_ahead(&self, key: &str) -> Option<&Option<Vec<u8>>> {
        if self.metadata_ahead.is_empty() {
            return None;
        }
        self.metadata_ahead.get(key)
    }

    /// Delete every object of `class` with these keys (a TRUNCATE, remote mode), reading
    /// their locations a chunk at a time instead of one request per key. A key listed more
    /// than once (held by several realms) is deleted once.
    pub(super) fn delete_all_read_ahead(
        &mut self,
        mapper: &Mapper,
        class: usize,
        keys: Vec<PrimaryKey>,
    ) -> Result<(), StoreError> {
        let mut seen = HashSet::new();
        for chunk in keys.chunks(LOCATE_CHUNK) {
            let objects = chunk.iter().map(|key| (class, key.clone())).collect();
            self.read_locations_ahead(mapper, objects)?;
            for key in chunk {
                if seen.insert(key.clone()) {
                    self.delete(mapper, class, key.clone())?;
                }
            }
        }
        Ok(())
    }

    /// Read where these objects (class index, key) live in the base, one `locate_many` per
    /// class, and keep the answers for [`Group::base_locate`]. Objects the group touched (the
    /// overlay answers for them) or already read ahead are not asked again. Does nothing on an
    /// embedded store.
    pub(crate) fn read_locations_ahead(
        &mut self,
        mapper: &Mapper,
        objects: Vec<(usize, PrimaryKey)>,
    ) -> Result<(), StoreError> {
        if !self.remote || objects.is_empty() {
            return Ok(());
        }
        if self.located.len() >= PATCH_LIMIT {
            // Bounded like the overlay; what is dropped is only read again.
            self.clear_read_ahead();
        }
        let mut asked = HashSet::new();
        let mut by_class: BTreeMap<usize, Vec<PrimaryKey>> = BTreeMap::new();
        for object in objects {
            if self.overlay.contains_key(&object)
                || self.located.contains_key(&object)
                || !asked.insert(object.clone())
            {
                continue;
            }
            by_class.entry(object.0).or_default().push(object.1);
        }
        for (class, keys) in by_class {
            let name = &mapper.schema.classes[class].name;
            let found = match &self.streaming {
                Some(streaming) => streaming.locate_many(name, &keys)?,
                None => self.snapshot.locate_many(name, &keys)?,
            };
            self.located
                .extend(keys.into_iter().map(|key| (class, key)).zip(found));
        }
        Ok(())
    }

    /// Read ahead what the events in hand will ask of the base: where `objects` live (see
    /// [`Group::read_locations_ahead`]); then, from those locations, the stored objects of the
    /// `updates` that move a row out of its realm or change its key (see
    /// [`Group::read_objects_ahead`]); and the entries of `lists` with those of the rows such
    /// updates create (see [`Group::read_lists_ahead`]). Does nothing on an embedded store.
    pub(crate) fn read_ahead(
        &mut self,
        mapper: &Mapper,
        objects: Vec<(usize, PrimaryKey)>,
        mut lists: Vec<ListKey>,
        updates: Vec<UpdateAhead>,
    ) -> Result<(), StoreError> {
        if !self.remote {
            return Ok(());
        }
        if self.located.len() + self.metadata_ahead.len() + self.objects_ahead.len() >= PATCH_LIMIT
        {
            // Bounded like the overlay; what is dropped is only read again.
            self.clear_read_ahead();
        }
        self.read_locations_ahead(mapper, objects)?;
        let stored = self.stored_objects_wanted(mapper, &updates, &mut lists);
        self.read_objects_ahead(mapper, stored)?;
        self.read_lists_ahead(mapper, lists)
    }

    /// The stored objects (class, key, realm) applying `updates` reads, as `Group::upsert`
    /// decides from the locations read ahead: an update that changes the row's key reads the
    /// object under the old key in its first realm; one that moves the row to a realm other
    /// than the one realm holding it reads it where it leaves. Only when the row's values may
    /// fall short of the whole object. Rows the group touched already are left out: the overlay
    /// answers for them, and when it needs the base, the base is asked then. Adds to `lists` the
    /// lists of the rows such updates create (under a new key, or held nowhere), whose entries
    /// they take — unless the lists are copied later (the initial load), when they take none.
    fn stored_objects_wanted(
        &self,
        mapper: &Mapper,
        updates: &[UpdateAhead],
        lists: &mut Vec<ListKey>,
    ) -> Vec<(usize, PrimaryKey, RealmPath)> {
        let held = |class: usize, key: &PrimaryKey| {
            if self.overlay.contains_key(&(class, key.clone())) {
                return None;
            }
            self.located(class, key)
        };
        let mut wanted = Vec::new();
        let mut asked = HashSet::new();
        let mut want = |class: usize, key: &PrimaryKey, realm: &RealmPath| {
            let at = (class, key.clone(), realm.clone());
            if !self.objects_ahead.contains_key(&at) && asked.insert(at.clone()) {
                wanted.push(at);
            }
        };
        for update in updates {
            let class = update.class;
            let created = if let Some(old_key) = &update.old_key {
                if update.partial {
                    if let Some(first) = held(class, old_key).and_then(|realms| realms.first()) {
                        want(class, old_key, first);
                    }
                }
                true
            } else {
                match (held(class, &update.key), &update.target) {
                    (Some(realms), _) if realms.is_empty() => true,
                    (Some(realms), Some(target))
                        if update.partial && realms.as_slice() != std::slice::from_ref(target) =>
                    {
                        let from = realms.iter().find(|r| *r != target).or(realms.first());
                        if let Some(from) = from {
                            want(class, &update.key, from);
                        }
                        false
                    }
                    _ => false,
                }
            };
            if created && !self.lists_copied_later {
                for property in mapper.schema.classes[class].list_properties() {
                    lists.push((class, property.name.clone(), update.key.clone()));
                }
            }
        }
        wanted
    }

    /// Read these stored objects (class, key, realm) from the base in one `object_many` and
    /// keep their values for [`Group::base_values`]. Does nothing on an embedded store.
    pub(crate) fn read_objects_ahead(
        &mut self,
        mapper: &Mapper,
        objects: Vec<(usize, PrimaryKey, RealmPath)>,
    ) -> Result<(), StoreError> {
        if !self.remote || objects.is_empty() {
            return Ok(());
        }
        let asked: Vec<(RealmPath, String, PrimaryKey)> = objects
            .iter()
            .map(|(class, key, realm)| {
                (
                    realm.clone(),
                    mapper.schema.classes[*class].name.clone(),
                    key.clone(),
                )
            })
            .collect();
        let found = match &self.streaming {
            Some(streaming) => streaming.object_many(&asked)?,
            None => self
                .snapshot
                .object_many(&asked)?
                .into_iter()
                .map(|o| o.map(|o| o.values))
                .collect(),
        };
        self.objects_ahead.extend(objects.into_iter().zip(found));
        Ok(())
    }

    /// Read the stored entries of these lists (class index, property, owner) from the base and
    /// keep them for [`Group::base_metadata`]: first, in one `metadata_many`, the generations
    /// not yet known (a list's key names its generation), then every list's entries in
    /// another. Lists whose entries the group holds already (`Group::lists`) and keys already
    /// read ahead are not asked again. Does nothing on an embedded store.
    pub(crate) fn read_lists_ahead(
        &mut self,
        mapper: &Mapper,
        lists: Vec<ListKey>,
    ) -> Result<(), StoreError> {
        if !self.remote || lists.is_empty() {
            return Ok(());
        }
        let mut asked = HashSet::new();
        let mut generations = Vec::new();
        for (class, property, _) in &lists {
            if self
                .list_generation
                .contains_key(&(*class, property.clone()))
            {
                continue;
            }
            let key = self.generation_key(mapper, *class, property);
            if !self.metadata_ahead.contains_key(&key) && asked.insert(key.clone()) {
                generations.push(key);
            }
        }
        self.read_metadata_ahead(generations)?;
        let mut keys = Vec::new();
        for list in &lists {
            if self.lists.contains_key(list) {
                continue;
            }
            // Its generation is known now: this reads nothing.
            let key = self.list_meta_key(mapper, list)?;
            if !self.metadata_ahead.contains_key(&key) && asked.insert(key.clone()) {
                keys.push(key);
            }
        }
        self.read_metadata_ahead(keys)
    }

    /// Read these metadata keys from the base in one `metadata_many` and keep the answers.
    fn read_metadata_ahead(&mut self, keys: Vec<String>) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let found = match &self.streaming {
            Some(streaming) => streaming.metadata_many(&keys)?,
            None => self.snapshot.metadata_many(&keys)?,
        };
        self.metadata_ahead.extend(keys.into_iter().zip(found));
        Ok(())
    }
}
