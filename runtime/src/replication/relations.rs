//! The relation cache: what the stream has said about tables (Relation) and types (Type), so
//! that a change, which names its table only by oid, can be read by column name.
//!
//! PostgreSQL sends a table's Relation before its first change in each session and again
//! whenever the table changes, so a cache that lives as long as one stream is always current.

use std::collections::HashMap;
use std::sync::Arc;

use super::pgoutput::{Relation, TypeInfo};

/// Tables and types announced on one replication stream.
#[derive(Debug, Default, Clone)]
pub struct RelationCache {
    relations: HashMap<u32, Arc<Relation>>,
    types: HashMap<u32, TypeInfo>,
}

impl RelationCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Remember (or replace) a table's shape; returns the shared handle changes will carry.
    pub fn insert_relation(&mut self, relation: Relation) -> Arc<Relation> {
        let relation = Arc::new(relation);
        self.relations.insert(relation.id, relation.clone());
        relation
    }

    /// Remember a type's name.
    pub fn insert_type(&mut self, info: TypeInfo) {
        self.types.insert(info.id, info);
    }

    /// The table with oid `id`, if announced.
    pub fn relation(&self, id: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&id)
    }

    /// The table named `namespace.name`, if announced.
    pub fn relation_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Relation>> {
        self.relations
            .values()
            .find(|r| r.namespace == namespace && r.name == name)
    }

    /// The type with oid `id`, if announced (only non-built-in types are).
    pub fn type_info(&self, id: u32) -> Option<&TypeInfo> {
        self.types.get(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::pgoutput::{RelationColumn, ReplicaIdentity};

    fn relation(id: u32, name: &str, columns: &[&str]) -> Relation {
        Relation {
            id,
            namespace: "public".into(),
            name: name.into(),
            replica_identity: ReplicaIdentity::Default,
            columns: columns
                .iter()
                .map(|c| RelationColumn {
                    is_key: *c == "id",
                    name: (*c).into(),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    #[test]
    fn a_later_relation_message_replaces_the_earlier_shape() {
        let mut cache = RelationCache::new();
        let first = cache.insert_relation(relation(1, "bus", &["id"]));
        cache.insert_relation(relation(1, "bus", &["id", "name"]));
        assert_eq!(
            first.columns.len(),
            1,
            "handles already given out keep their shape"
        );
        assert_eq!(cache.relation(1).unwrap().columns.len(), 2);
        assert_eq!(cache.relation(1).unwrap().column_index("name"), Some(1));
        assert_eq!(cache.relation_by_name("public", "bus").unwrap().id, 1);
        assert!(cache.relation(2).is_none());
        cache.insert_type(TypeInfo {
            id: 9,
            namespace: "public".into(),
            name: "mood".into(),
        });
        assert_eq!(cache.type_info(9).unwrap().name, "mood");
    }
}
