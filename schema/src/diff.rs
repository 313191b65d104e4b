//! Schema diffs: what changed between two versions of a schema, and which changes pgrealm can
//! apply to PostgreSQL by itself.
//!
//! Only additive changes are ever applied (new classes, new properties), as the original
//! adapter's `applyRealmSchemaChangesToPostgres` did: they cannot lose data. Everything else (a
//! property whose type, optionality or column changed, a removed property or class) is reported
//! with a reason and left to the operator; removals in particular are never acted on, since
//! dropping a column or table would destroy data that may still matter outside the schema.
//! An index added or removed with `#[indexed]` changes no data and is not a schema change here.

use std::fmt;

use crate::ddl::{render_add_column, render_tables};
use crate::model::{Class, Property, Schema, TableRef};
use crate::types::{ListItem, PropertyType};

/// The differences between an old and a new schema.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SchemaDiff {
    /// Classes only the new schema has, in its declaration order.
    pub added_classes: Vec<String>,
    /// Properties only the new schema has, of classes both have, in declaration order.
    pub added_properties: Vec<AddedProperty>,
    /// Changes that cannot be made by adding tables and columns.
    pub not_additive: Vec<NotAdditive>,
}

/// A property added to a class both schemas have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedProperty {
    /// The class name.
    pub class: String,
    /// The property name.
    pub property: String,
}

/// A change pgrealm does not apply by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAdditive {
    /// A class of the old schema is gone. Its tables are left as they are.
    RemovedClass {
        /// The class name.
        class: String,
        /// Its table.
        table: String,
    },
    /// A property of the old schema is gone. Its column (or subtable) is left as it is.
    RemovedProperty {
        /// The class name.
        class: String,
        /// The property name.
        property: String,
    },
    /// A class changed in a way its table cannot follow by adding columns.
    ChangedClass {
        /// The class name.
        class: String,
        /// What changed, in words.
        change: String,
    },
    /// A property changed in a way its column cannot follow.
    ChangedProperty {
        /// The class name.
        class: String,
        /// The property name.
        property: String,
        /// What changed, in words.
        change: String,
    },
    /// A property was added that existing objects cannot be given a value for.
    UnaddableProperty {
        /// The class name.
        class: String,
        /// The property name.
        property: String,
        /// Why, and what to do.
        reason: String,
    },
}

impl NotAdditive {
    /// Whether this is a removal: reported, harmless to sync (the column simply stops syncing).
    pub fn is_removal(&self) -> bool {
        matches!(
            self,
            NotAdditive::RemovedClass { .. } | NotAdditive::RemovedProperty { .. }
        )
    }
}

impl fmt::Display for NotAdditive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const BY_HAND: &str = "pgrealm only adds tables and columns; migrate the database by \
                               hand, then restart";
        match self {
            NotAdditive::RemovedClass { class, table } => write!(
                f,
                "class `{class}` was removed; its table \"{table}\" is kept as it is and no \
                 longer syncs (drop it by hand if it is no longer needed)"
            ),
            NotAdditive::RemovedProperty { class, property } => write!(
                f,
                "property `{class}.{property}` was removed; its column is kept as it is and no \
                 longer syncs (drop it by hand if it is no longer needed)"
            ),
            NotAdditive::ChangedClass { class, change } => {
                write!(f, "class `{class}`: {change}; {BY_HAND}")
            }
            NotAdditive::ChangedProperty {
                class,
                property,
                change,
            } => write!(f, "property `{class}.{property}`: {change}; {BY_HAND}"),
            NotAdditive::UnaddableProperty {
                class,
                property,
                reason,
            } => write!(f, "property `{class}.{property}` cannot be added: {reason}"),
        }
    }
}

impl SchemaDiff {
    /// Whether the schemas are the same (for syncing purposes).
    pub fn is_empty(&self) -> bool {
        self.added_classes.is_empty()
            && self.added_properties.is_empty()
            && self.not_additive.is_empty()
    }

    /// Whether every change can be applied by adding tables and columns.
    pub fn is_additive(&self) -> bool {
        self.not_additive.is_empty()
    }

    /// The SQL that makes a database of the old schema hold the new one's additions: the new
    /// classes' tables (in dependency order) and the new properties' columns and subtables.
    /// Changes in [`SchemaDiff::not_additive`] are not part of it.
    pub fn additive_sql(&self, new: &Schema) -> String {
        let mut tables: Vec<TableRef<'_>> = Vec::new();
        for class in self.added_classes.iter().filter_map(|c| new.class(c)) {
            tables.push(TableRef::Class(class));
            tables.extend(
                class
                    .list_properties()
                    .map(|property| TableRef::List { class, property }),
            );
        }
        let mut out = render_tables(new, &tables);
        for added in &self.added_properties {
            let Some(class) = new.class(&added.class) else {
                continue;
            };
            if let Some(property) = class.property_named(&added.property) {
                out.push_str(&render_add_column(new, class, property));
            }
        }
        out
    }
}

/// What changed from `old` to `new`.
///
/// ```
/// use pgrealm_schema::{Class, IntWidth, Property, PropertyType, ScalarType, Schema};
/// use pgrealm_schema::diff::diff;
///
/// let id = Property::new("id", PropertyType::Scalar(ScalarType::Int(IntWidth::I64))).primary_key();
/// let old = Schema::new(vec![Class::new("Bus").property(id.clone())]);
/// let new = Schema::new(vec![Class::new("Bus").property(id)
///     .property(Property::new("name", PropertyType::Scalar(ScalarType::String)).optional())]);
/// let d = diff(&old, &new);
/// assert!(d.is_additive());
/// assert_eq!(d.added_properties[0].property, "name");
/// ```
pub fn diff(old: &Schema, new: &Schema) -> SchemaDiff {
    let mut out = SchemaDiff::default();
    for class in &new.classes {
        match old.class(&class.name) {
            None => out.added_classes.push(class.name.clone()),
            Some(before) => diff_class(before, class, &mut out),
        }
    }
    for class in &old.classes {
        if new.class(&class.name).is_none() {
            out.not_additive.push(NotAdditive::RemovedClass {
                class: class.name.clone(),
                table: class.table.clone(),
            });
        }
    }
    out
}

fn diff_class(old: &Class, new: &Class, out: &mut SchemaDiff) {
    let class = || new.name.clone();
    if old.table != new.table {
        out.not_additive.push(NotAdditive::ChangedClass {
            class: class(),
            change: format!(
                "its table changed from \"{}\" to \"{}\"",
                old.table, new.table
            ),
        });
    }
    let old_key = old.primary_key().map(|p| p.name.as_str());
    let new_key = new.primary_key().map(|p| p.name.as_str());
    if old_key != new_key {
        out.not_additive.push(NotAdditive::ChangedClass {
            class: class(),
            change: format!(
                "its primary key changed from {} to {}",
                old_key.map_or("none".into(), |k| format!("`{k}`")),
                new_key.map_or("none".into(), |k| format!("`{k}`"))
            ),
        });
    }
    for property in &new.properties {
        let Some(before) = old.property_named(&property.name) else {
            if property.primary_key {
                continue; // reported as a primary key change above
            }
            if let PropertyType::Link(target) = &property.ty {
                if !property.optional {
                    out.not_additive.push(NotAdditive::UnaddableProperty {
                        class: class(),
                        property: property.name.clone(),
                        reason: format!(
                            "existing objects have nothing to link to; make it \
                             Option<Link<{target}>>"
                        ),
                    });
                    continue;
                }
            }
            out.added_properties.push(AddedProperty {
                class: class(),
                property: property.name.clone(),
            });
            continue;
        };
        for change in property_changes(before, property) {
            out.not_additive.push(NotAdditive::ChangedProperty {
                class: class(),
                property: property.name.clone(),
                change,
            });
        }
    }
    for property in &old.properties {
        if new.property_named(&property.name).is_none() {
            out.not_additive.push(NotAdditive::RemovedProperty {
                class: class(),
                property: property.name.clone(),
            });
        }
    }
}

/// How a property is written in Rust, for messages.
fn rust_type(property: &Property) -> String {
    let inner = match &property.ty {
        PropertyType::Scalar(s) => s.rust_type().to_string(),
        PropertyType::Link(target) => format!("Link<{target}>"),
        PropertyType::List(ListItem::Object(target)) => format!("List<{target}>"),
        PropertyType::List(ListItem::Scalar(s)) => format!("Vec<{}>", s.rust_type()),
    };
    if property.optional {
        format!("Option<{inner}>")
    } else {
        inner
    }
}

fn property_changes(old: &Property, new: &Property) -> Vec<String> {
    let mut changes = Vec::new();
    if old.ty != new.ty || old.optional != new.optional {
        let what = if old.ty == new.ty {
            if new.optional {
                "became optional"
            } else {
                "became required"
            }
        } else {
            "changed type"
        };
        changes.push(format!(
            "{what} (from {} to {})",
            rust_type(old),
            rust_type(new)
        ));
    }
    if old.column != new.column {
        changes.push(format!(
            "its column changed from \"{}\" to \"{}\"",
            old.column, new.column
        ));
    }
    let pg = |p: &Property| match (&p.custom_type, &p.postgres_type) {
        (Some(custom), _) => format!("custom type {custom}"),
        (None, Some(pg)) => pg.clone(),
        (None, None) => "the default type".to_string(),
    };
    if old.custom_type != new.custom_type || old.postgres_type != new.postgres_type {
        changes.push(format!(
            "its PostgreSQL type changed from {} to {}",
            pg(old),
            pg(new)
        ));
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ddl::tests::transit;
    use crate::types::{IntWidth, ScalarType};

    fn string() -> PropertyType {
        PropertyType::Scalar(ScalarType::String)
    }

    fn edit<'a>(schema: &'a mut Schema, class: &str) -> &'a mut Class {
        schema.classes.iter_mut().find(|c| c.name == class).unwrap()
    }

    #[test]
    fn the_same_schema_has_no_diff() {
        assert!(diff(&transit(), &transit()).is_empty());
    }

    #[test]
    fn added_classes_and_properties_are_additive_with_sql() {
        let old = transit();
        let mut new = transit();
        new.classes.push(
            Class::new("Depot")
                .property(Property::new("id", string()).primary_key())
                .property(Property::new(
                    "buses",
                    PropertyType::List(ListItem::Object("Bus".into())),
                )),
        );
        let bus = edit(&mut new, "Bus");
        bus.properties.push(Property::new(
            "seats",
            PropertyType::Scalar(ScalarType::Int(IntWidth::I32)),
        ));
        bus.properties
            .push(Property::new("depot", PropertyType::Link("Depot".into())).optional());
        let d = diff(&old, &new);
        assert!(d.is_additive(), "{d:#?}");
        assert_eq!(d.added_classes, ["Depot"]);
        let added: Vec<_> = d
            .added_properties
            .iter()
            .map(|a| format!("{}.{}", a.class, a.property))
            .collect();
        assert_eq!(added, ["Bus.seats", "Bus.depot"]);
        let sql = d.additive_sql(&new);
        let depot = sql.find("CREATE TABLE \"depot\"").unwrap();
        let buses = sql.find("CREATE TABLE \"depot_buses\"").unwrap();
        let seats = sql
            .find("ALTER TABLE \"bus\" ADD COLUMN \"seats\" integer NOT NULL DEFAULT 0;")
            .unwrap();
        let link = sql
            .find("ALTER TABLE \"bus\" ADD FOREIGN KEY (\"depot\") REFERENCES \"depot\"")
            .unwrap();
        assert!(depot < buses && buses < seats && seats < link, "{sql}");
        assert!(!sql.contains("CREATE TABLE \"bus\""), "{sql}");
    }

    #[test]
    fn changes_and_removals_are_reported_not_applied() {
        let old = transit();
        let mut new = transit();
        new.classes.retain(|c| c.name != "Driver");
        let bus = edit(&mut new, "Bus");
        bus.properties[1].optional = true; // name
        bus.properties[2].column = "route_id".into();
        bus.table = "buses".into();
        let schedule = edit(&mut new, "Schedule");
        schedule.properties.remove(2); // note
        schedule.properties[1].ty = string(); // departure
        let d = diff(&old, &new);
        let m: Vec<String> = d.not_additive.iter().map(ToString::to_string).collect();
        assert_eq!(
            m,
            [
                "class `Bus`: its table changed from \"bus\" to \"buses\"; pgrealm only adds \
                 tables and columns; migrate the database by hand, then restart",
                "property `Bus.name`: became optional (from String to Option<String>); \
                 pgrealm only adds tables and columns; migrate the database by hand, then \
                 restart",
                "property `Bus.route`: its column changed from \"routeid\" to \"route_id\"; \
                 pgrealm only adds tables and columns; migrate the database by hand, then \
                 restart",
                "property `Schedule.departure`: changed type (from DateTime<Utc> to String); \
                 pgrealm only adds tables and columns; migrate the database by hand, then \
                 restart",
                "property `Schedule.note` was removed; its column is kept as it is and no \
                 longer syncs (drop it by hand if it is no longer needed)",
                "class `Driver` was removed; its table \"driver\" is kept as it is and no longer \
                 syncs (drop it by hand if it is no longer needed)",
            ]
        );
        assert!(d.not_additive[5].is_removal());
        assert!(!d.not_additive[0].is_removal());
        assert!(d.added_classes.is_empty() && d.added_properties.is_empty());
    }

    #[test]
    fn key_changes_and_required_links_cannot_be_added() {
        let old = transit();
        let mut new = transit();
        let route = edit(&mut new, "Route");
        route.properties[0].primary_key = false;
        route
            .properties
            .push(Property::new("code", string()).primary_key());
        route
            .properties
            .push(Property::new("garage", PropertyType::Link("Bus".into())));
        edit(&mut new, "Bus").properties[0].postgres_type = Some("integer".into());
        let d = diff(&old, &new);
        let m: Vec<String> = d.not_additive.iter().map(ToString::to_string).collect();
        assert_eq!(m.len(), 3, "{m:#?}");
        assert!(m[0].starts_with("class `Route`: its primary key changed from `id` to `code`"));
        assert_eq!(
            m[1],
            "property `Route.garage` cannot be added: existing objects have nothing to link to; \
             make it Option<Link<Bus>>"
        );
        assert!(m[2].starts_with(
            "property `Bus.id`: its PostgreSQL type changed from the default type to integer"
        ));
        assert!(d.added_properties.is_empty());
    }
}
