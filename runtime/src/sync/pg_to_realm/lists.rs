//! List subtables: PostgreSQL's `(oid, idx, item)` rows of each owner, kept in store metadata
//! (`postgres/<slot>/list/<class>/<property>/<generation>/<owner>`), so a transaction's row
//! changes — which may arrive in any order, with `idx` values that are temporarily negative or
//! have gaps while an application shifts entries — are all applied first and the owner's list is
//! then written once, in `idx` order. A TRUNCATE of the subtable starts a new generation, so
//! the entries of every owner are forgotten at once without listing them.
//!
//! In remote mode the entries of the owners the engine has in hand, their lists' generations and
//! the owners' locations are read ahead in batches (`prefetch.rs`); the reads here then find
//! them in the group's cache instead of asking the server once per owner.

use std::collections::BTreeMap;

use pgrealm_schema::{Object, Value};

use super::prefetch::LOCATE_CHUNK;
use super::{Group, ListKey};
use crate::replication::{ColumnValue, OldTuple};
use crate::store::StoreError;
use crate::sync::pg_to_realm::mapping::{Mapper, TableKind, TablePlan};
use crate::sync::rejections::RejectionLog;

impl Group {
    pub(super) fn list_meta_key(
        &mut self,
        mapper: &Mapper,
        list: &ListKey,
    ) -> Result<String, StoreError> {
        let generation = self.list_generation_of(mapper, list.0, &list.1)?;
        Ok(format!(
            "postgres/{}/list/{}/{}/{generation}/{}",
            self.slot, mapper.schema.classes[list.0].name, list.1, list.2
        ))
    }

    pub(super) fn generation_key(&self, mapper: &Mapper, class: usize, property: &str) -> String {
        format!(
            "postgres/{}/listgen/{}/{property}",
            self.slot, mapper.schema.classes[class].name
        )
    }

    pub(super) fn list_generation_of(
        &mut self,
        mapper: &Mapper,
        class: usize,
        property: &str,
    ) -> Result<u64, StoreError> {
        if let Some(g) = self.list_generation.get(&(class, property.to_owned())) {
            return Ok(*g);
        }
        let stored = self
            .base_metadata(&self.generation_key(mapper, class, property))?
            .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        self.list_generation
            .insert((class, property.to_owned()), stored);
        Ok(stored)
    }

    /// PostgreSQL's entries of one owner's list (`idx` → item), as of the change in hand.
    pub(super) fn list_entries(
        &mut self,
        mapper: &Mapper,
        list: &ListKey,
    ) -> Result<&mut BTreeMap<i64, Value>, StoreError> {
        if !self.lists.contains_key(list) {
            let key = self.list_meta_key(mapper, list)?;
            let entries = match self.base_metadata(&key)? {
                Some(bytes) => serde_json::from_slice::<Vec<(i64, Value)>>(&bytes)
                    .map(|v| v.into_iter().collect())
                    .unwrap_or_default(),
                None => BTreeMap::new(),
            };
            self.lists.insert(list.clone(), entries);
        }
        Ok(self.lists.get_mut(list).expect("inserted above"))
    }

    pub(super) fn list_row(
        &mut self,
        mapper: &Mapper,
        log: &mut RejectionLog,
        plan: &TablePlan,
        old: Option<&OldTuple>,
        new: Option<&Vec<ColumnValue>>,
    ) -> Result<(), StoreError> {
        let TableKind::List {
            class, property, ..
        } = &plan.kind
        else {
            return Ok(());
        };
        let mut removed = None;
        if let Some(old) = old {
            match mapper.list_entry(plan, old.values(), false) {
                Ok((owner, idx, _)) => {
                    let list = (*class, property.clone(), owner);
                    removed = self.list_entries(mapper, &list)?.remove(&idx);
                    self.mark(list);
                }
                Err(e) => {
                    self.reject(log, plan, mapper, None, e.key, e.reason, old.values());
                    return Ok(());
                }
            }
        }
        if let Some(new) = new {
            match mapper.list_entry(plan, new, true) {
                Ok((owner, idx, item)) => {
                    let list = (*class, property.clone(), owner);
                    let entries = self.list_entries(mapper, &list)?;
                    // An unchanged TOAST item keeps the value it had (under its old idx when
                    // the row's key changed).
                    let item = item.or(removed).or_else(|| entries.get(&idx).cloned());
                    match item {
                        Some(item) => {
                            entries.insert(idx, item);
                        }
                        None => {
                            let reason = "a list entry's unchanged TOAST value is not known; an update that sets it heals it".to_owned();
                            self.reject(
                                log,
                                plan,
                                mapper,
                                None,
                                Some(list.2.to_string()),
                                reason,
                                new,
                            );
                        }
                    }
                    self.mark(list);
                }
                Err(e) => self.reject(log, plan, mapper, None, e.key, e.reason, new),
            }
        }
        Ok(())
    }

    pub(super) fn mark(&mut self, list: ListKey) {
        if self.dirty_set.insert(list.clone()) {
            self.dirty.push(list);
        }
    }

    /// Write every list the changes so far touched ([`Group::write_list`]). In remote mode the
    /// owners' locations are read a chunk at a time first (one `locate_many` per class), not
    /// one request per owner: after a TRUNCATE of the subtable every owner's list is written.
    pub(super) fn write_dirty_lists(
        &mut self,
        mapper: &Mapper,
        log: &mut RejectionLog,
    ) -> Result<(), StoreError> {
        let dirty = std::mem::take(&mut self.dirty);
        for chunk in dirty.chunks(LOCATE_CHUNK) {
            if self.reads_ahead() {
                let owners = chunk
                    .iter()
                    .map(|(class, _, owner)| (*class, owner.clone()))
                    .collect();
                self.read_locations_ahead(mapper, owners)?;
            }
            for list in chunk {
                self.write_list(mapper, log, list)?;
            }
        }
        self.dirty_set.clear();
        Ok(())
    }

    /// Put a changed list (all of a transaction's changes of it applied, in `idx` order) into
    /// every realm holding its owner, and remember PostgreSQL's entries.
    pub(super) fn write_list(
        &mut self,
        mapper: &Mapper,
        log: &mut RejectionLog,
        list: &ListKey,
    ) -> Result<(), StoreError> {
        let _ = log;
        let entries: Vec<(i64, Value)> = self
            .list_entries(mapper, list)?
            .iter()
            .map(|(i, v)| (*i, v.clone()))
            .collect();
        let meta_key = self.list_meta_key(mapper, list)?;
        self.tx.set_metadata(
            meta_key,
            serde_json::to_vec(&entries).expect("values serialize"),
        );
        let (class, property, owner) = list;
        let items = Value::List(entries.into_iter().map(|(_, v)| v).collect());
        let realms = self.locate(mapper, *class, owner)?;
        let class_def = &mapper.schema.classes[*class];
        let key_name = class_def
            .primary_key()
            .expect("a planned class has a key")
            .name
            .clone();
        for realm in &realms {
            let object = Object::new(class_def.name.clone())
                .with(key_name.clone(), owner.to_value())
                .with(property.clone(), items.clone());
            // The owner may be deleted by the app between our read and this commit; then the
            // entries have nothing to belong to, and the delete, on its way to PostgreSQL,
            // removes them there too (ON DELETE CASCADE).
            self.tx.update_object(realm, object)?;
        }
        if !realms.is_empty() {
            let set = [(property, &items)];
            self.record(mapper, None, *class, owner.clone(), realms, set, false);
        }
        Ok(())
    }
}
