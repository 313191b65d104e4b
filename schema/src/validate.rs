//! Validation of a schema: every rule whose breach `schema!` reports as a compile error.
//!
//! This module owns the list of rules and their wording; the macro only maps a [`Location`] to a
//! span. Messages are read by a user at the offending field, so each one says what to do. Errors
//! come out in declaration order (class by class, a class's own problems before its
//! properties'), and a duplicate is reported at its second occurrence with `first` pointing at
//! the first. Validation never stops at the first problem.

use std::collections::HashMap;

use crate::model::{Class, Property, Schema};
use crate::types::{ListItem, PropertyType, ScalarType};

/// PostgreSQL truncates identifiers longer than this many bytes (NAMEDATALEN - 1) with only a
/// NOTICE, so two long names could silently become one: we refuse them instead.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Where in the schema an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A class as a whole (its name or its `#[realm_object]` attribute).
    Class {
        /// Index into `Schema::classes`.
        class: usize,
    },
    /// One property.
    Property {
        /// Index into `Schema::classes`.
        class: usize,
        /// Index into `Class::properties`.
        property: usize,
    },
}

/// One thing wrong with a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// Where it is.
    pub location: Location,
    /// What is wrong and what to do.
    pub message: String,
    /// For duplicates: where the first one was defined.
    pub first: Option<Location>,
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SchemaError {}

/// Every problem in the schema, in declaration order. Empty when the schema is valid.
///
/// ```
/// use pgrealm_schema::{Class, Property, PropertyType, ScalarType, Schema};
/// use pgrealm_schema::validate::validate;
///
/// let schema = Schema::new(vec![Class::new("Bus")
///     .property(Property::new("name", PropertyType::Scalar(ScalarType::String)))]);
/// let errors = validate(&schema);
/// assert!(errors[0].message.contains("has no primary key"));
/// ```
pub fn validate(schema: &Schema) -> Vec<SchemaError> {
    let mut v = Validator {
        schema,
        errors: Vec::new(),
        classes: HashMap::new(),
        tables: HashMap::new(),
    };
    for (index, class) in schema.classes.iter().enumerate() {
        v.class(index, class);
    }
    v.errors
}

struct Validator<'a> {
    schema: &'a Schema,
    errors: Vec<SchemaError>,
    /// Class names seen so far, with where.
    classes: HashMap<&'a str, Location>,
    /// Table names (class tables and list subtables) seen so far, with where and what.
    tables: HashMap<String, (Location, String)>,
}

impl<'a> Validator<'a> {
    fn error(&mut self, location: Location, message: String) {
        self.errors.push(SchemaError {
            location,
            message,
            first: None,
        });
    }

    fn duplicate(&mut self, location: Location, first: Location, message: String) {
        self.errors.push(SchemaError {
            location,
            message,
            first: Some(first),
        });
    }

    fn class(&mut self, index: usize, class: &'a Class) {
        let here = Location::Class { class: index };

        if let Some(problem) = name_problem(&class.name) {
            self.error(here, format!("class name {problem}"));
        }
        match self.classes.get(class.name.as_str()) {
            Some(&first) => self.duplicate(
                here,
                first,
                format!(
                    "class `{}` is defined twice: rename one of them \
                     (with #[realm_object(class = \"...\")] or by renaming the struct)",
                    class.name
                ),
            ),
            None => {
                self.classes.insert(&class.name, here);
            }
        }

        if let Some(problem) = identifier_problem(&class.table) {
            self.error(
                here,
                format!(
                    "table name \"{}\" of class `{}` {problem}; choose another with \
                     #[realm_object(table = \"...\")]",
                    class.table, class.name
                ),
            );
        }
        self.table(
            here,
            class.table.clone(),
            format!("the table of class `{}`", class.name),
            format!(
                "choose another with #[realm_object(table = \"...\")] on `{}`",
                class.name
            ),
        );

        let keys: Vec<usize> = (0..class.properties.len())
            .filter(|&i| class.properties[i].primary_key)
            .collect();
        if keys.is_empty() {
            self.error(
                here,
                format!(
                    "class `{}` has no primary key: mark one field #[primary_key] (every synced \
                     class needs one, as in the original adapter)",
                    class.name
                ),
            );
        }

        let mut properties: HashMap<&str, usize> = HashMap::new();
        let mut columns: HashMap<&str, usize> = HashMap::new();
        for (p, property) in class.properties.iter().enumerate() {
            let at = Location::Property {
                class: index,
                property: p,
            };
            let first_at = |q: usize| Location::Property {
                class: index,
                property: q,
            };

            if let Some(problem) = name_problem(&property.name) {
                self.error(at, format!("property name {problem}"));
            }
            match properties.get(property.name.as_str()) {
                Some(&q) => self.duplicate(
                    at,
                    first_at(q),
                    format!(
                        "property `{}.{}` is defined twice: rename one of them",
                        class.name, property.name
                    ),
                ),
                None => {
                    properties.insert(&property.name, p);
                }
            }

            if let Some(problem) = identifier_problem(&property.column) {
                self.error(
                    at,
                    format!(
                        "column name \"{}\" of `{}.{}` {problem}; choose another with \
                         #[column = \"...\"]",
                        property.column, class.name, property.name
                    ),
                );
            }
            // A list's column is the suffix of its subtable's name, not a column of the class's
            // table; it still shares the namespace so that a column name always means one
            // property of the class.
            match columns.get(property.column.as_str()) {
                Some(&q) => {
                    let other = &class.properties[q];
                    self.duplicate(
                        at,
                        first_at(q),
                        format!(
                            "`{}.{}` uses column name \"{}\", already used by `{}`: choose \
                             another with #[column = \"...\"]",
                            class.name, property.name, property.column, other.name
                        ),
                    );
                }
                None => {
                    columns.insert(&property.column, p);
                }
            }
            if property.ty.is_list() {
                self.table(
                    at,
                    class.list_table(property),
                    format!("the list subtable of `{}.{}`", class.name, property.name),
                    format!(
                        "choose another column name with #[column = \"...\"] on `{}.{}`",
                        class.name, property.name
                    ),
                );
                let subtable = class.list_table(property);
                if let Some(problem) = identifier_problem(&subtable) {
                    self.error(
                        at,
                        format!(
                            "the list subtable name \"{subtable}\" (\"<table>_<column>\") of \
                             `{}.{}` {problem}; shorten the table or the column name",
                            class.name, property.name
                        ),
                    );
                }
            }

            if property.primary_key {
                if let Some(&first) = keys.first().filter(|&&k| k != p) {
                    self.duplicate(
                        at,
                        first_at(first),
                        format!(
                            "class `{}` has two primary keys (`{}` and `{}`): keep \
                             #[primary_key] on exactly one field",
                            class.name, class.properties[first].name, property.name
                        ),
                    );
                }
                self.primary_key(at, class, property);
            }

            self.target(at, class, property);
            self.postgres_attributes(at, class, property);
        }
    }

    /// Record a table name, reporting a collision with an earlier one.
    fn table(&mut self, here: Location, name: String, what: String, fix: String) {
        match self.tables.get(&name) {
            Some((first, first_what)) => {
                let message = format!(
                    "table name \"{name}\" is used twice: by {first_what} and by {what}; {fix}"
                );
                let first = *first;
                self.duplicate(here, first, message);
            }
            None => {
                self.tables.insert(name, (here, what));
            }
        }
    }

    fn primary_key(&mut self, at: Location, class: &Class, property: &Property) {
        let allowed = "allowed primary key types are i64, i32, i16, String and Uuid";
        if property.optional {
            self.error(
                at,
                format!(
                    "primary key `{}.{}` is optional: a primary key always has a value, \
                     remove the Option<…>",
                    class.name, property.name
                ),
            );
        }
        let what = match &property.ty {
            PropertyType::Scalar(s) if s.can_be_primary_key() => return,
            PropertyType::Scalar(s) => format!("a {s}"),
            PropertyType::Link(target) => format!("a link to `{target}`"),
            PropertyType::List(_) => "a list".to_string(),
        };
        self.error(
            at,
            format!(
                "primary key `{}.{}` is {what}; {allowed}",
                class.name, property.name
            ),
        );
    }

    /// Links and lists must point at a class of this schema.
    fn target(&mut self, at: Location, class: &Class, property: &Property) {
        let target = match &property.ty {
            PropertyType::Link(target) | PropertyType::List(ListItem::Object(target)) => target,
            _ => return,
        };
        if self.schema.class(target).is_some() {
            return;
        }
        let known: Vec<String> = self
            .schema
            .classes
            .iter()
            .map(|c| format!("`{}`", c.name))
            .collect();
        let kind = if property.ty.is_list() {
            "lists"
        } else {
            "links"
        };
        self.error(
            at,
            format!(
                "`{}.{}` {kind} to class `{target}`, which is not in this schema; \
                 the classes in this schema are: {}. Add `{target}` to the same schema! \
                 block or point at one of these",
                class.name,
                property.name,
                known.join(", ")
            ),
        );
    }

    fn postgres_attributes(&mut self, at: Location, class: &Class, property: &Property) {
        let name = format!("{}.{}", class.name, property.name);
        if property.postgres_type.is_some() && property.custom_type.is_some() {
            self.error(
                at,
                format!(
                    "`{name}` has both #[postgres(type = …)] and #[postgres(custom_type = …)]: \
                     keep one (custom_type names a user-defined type such as an enum; type \
                     overrides a built-in type)"
                ),
            );
        }
        if let Some(custom) = &property.custom_type {
            if property.ty.scalar().is_none() {
                self.error(
                    at,
                    format!(
                        "#[postgres(custom_type = \"{custom}\")] on `{name}`, which is not a \
                         single value: custom types apply to bool, integer, float, decimal, \
                         string, data, date and uuid fields only"
                    ),
                );
            }
            let parts: Vec<&str> = custom.split('.').collect();
            let bad = parts.len() > 2 || parts.iter().any(|p| identifier_problem(p).is_some());
            if bad {
                self.error(
                    at,
                    format!(
                        "custom_type \"{custom}\" of `{name}` is not a PostgreSQL type name: \
                         write `name` or `schema.name`, each part 1 to {MAX_IDENTIFIER_BYTES} \
                         bytes"
                    ),
                );
            }
        }
        if let Some(pg) = &property.postgres_type {
            let scalar = match &property.ty {
                PropertyType::Scalar(s) | PropertyType::List(ListItem::Scalar(s)) => *s,
                PropertyType::Link(_) | PropertyType::List(ListItem::Object(_)) => {
                    self.error(
                        at,
                        format!(
                            "#[postgres(type = \"{pg}\")] on `{name}`, a link: a link column \
                             takes its type from the target's primary key; put the attribute \
                             there"
                        ),
                    );
                    return;
                }
            };
            // The type goes verbatim into DDL, so only characters a type name needs are let in.
            let well_formed = !pg.trim().is_empty()
                && pg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || " _(),".contains(c));
            if !well_formed {
                self.error(
                    at,
                    format!(
                        "#[postgres(type = \"{pg}\")] on `{name}` is not a PostgreSQL type \
                         name (letters, digits, spaces, `_`, `(`, `)` and `,` only); for a \
                         user-defined type use #[postgres(custom_type = \"…\")]"
                    ),
                );
            } else if !scalar.accepts_postgres_type(pg) {
                self.error(
                    at,
                    format!(
                        "#[postgres(type = \"{pg}\")] cannot hold `{name}`, a {scalar} (realm \
                         {}); use a type that holds it without loss, such as {}, or for a \
                         user-defined type #[postgres(custom_type = \"…\")]",
                        scalar.realm_name(),
                        example_types(scalar)
                    ),
                );
            }
        }
    }
}

/// A few PostgreSQL types that hold a scalar, for messages.
fn example_types(scalar: ScalarType) -> &'static str {
    match scalar {
        ScalarType::Bool => "boolean",
        ScalarType::Int(_) => "smallint, integer or bigint",
        ScalarType::Float => "real",
        ScalarType::Double => "double precision or real",
        ScalarType::Decimal => "numeric or numeric(p,s)",
        ScalarType::String => "text, varchar(n), char(n), json or jsonb",
        ScalarType::Data => "bytea",
        ScalarType::Date => "timestamptz, timestamp or date",
        ScalarType::Uuid => "uuid",
    }
}

/// Why a realm class or property name is unusable, if it is.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty: give it a name".into());
    }
    if name.chars().any(char::is_control) {
        return Some(format!("{name:?} contains control characters: remove them"));
    }
    None
}

/// Why a PostgreSQL table or column name is unusable, if it is. Names are always quoted, so any
/// character but NUL is allowed; length is the limit that matters.
pub fn identifier_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".into());
    }
    if name.contains('\0') {
        return Some("contains a NUL character, which PostgreSQL does not allow".into());
    }
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Some(format!(
            "is {} bytes long; PostgreSQL keeps only the first {MAX_IDENTIFIER_BYTES} and would \
             silently truncate it",
            name.len()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::IntWidth;

    fn int() -> PropertyType {
        PropertyType::Scalar(ScalarType::Int(IntWidth::I64))
    }
    fn string() -> PropertyType {
        PropertyType::Scalar(ScalarType::String)
    }
    fn keyed(name: &str) -> Class {
        Class::new(name).property(Property::new("id", int()).primary_key())
    }
    fn messages(schema: &Schema) -> Vec<String> {
        validate(schema).into_iter().map(|e| e.message).collect()
    }

    #[test]
    fn the_transit_schema_is_valid() {
        let schema = crate::ddl::tests::transit();
        assert_eq!(validate(&schema), []);
    }

    #[test]
    fn a_class_without_primary_key_is_reported_at_the_class() {
        let schema = Schema::new(vec![
            Class::new("Bus").property(Property::new("name", string()))
        ]);
        let errors = validate(&schema);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].location, Location::Class { class: 0 });
        assert_eq!(
            errors[0].message,
            "class `Bus` has no primary key: mark one field #[primary_key] (every synced class \
             needs one, as in the original adapter)"
        );
    }

    #[test]
    fn a_second_primary_key_points_at_the_first() {
        let schema = Schema::new(vec![keyed("Bus")
            .property(Property::new("name", string()))
            .property(Property::new("code", string()).primary_key())]);
        let errors = validate(&schema);
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].location,
            Location::Property {
                class: 0,
                property: 2
            }
        );
        assert_eq!(
            errors[0].first,
            Some(Location::Property {
                class: 0,
                property: 0
            })
        );
        assert!(errors[0]
            .message
            .contains("two primary keys (`id` and `code`)"));
    }

    #[test]
    fn primary_keys_must_be_required_int_string_or_uuid() {
        let schema = Schema::new(vec![
            Class::new("A").property(Property::new("id", int()).primary_key().optional()),
            Class::new("B").property(
                Property::new("id", PropertyType::Scalar(ScalarType::Bool)).primary_key(),
            ),
            Class::new("C").property(
                Property::new(
                    "id",
                    PropertyType::List(ListItem::Scalar(ScalarType::String)),
                )
                .primary_key(),
            ),
            Class::new("D")
                .property(Property::new("id", PropertyType::Link("A".into())).primary_key()),
            Class::new("E").property(
                Property::new("id", PropertyType::Scalar(ScalarType::Uuid)).primary_key(),
            ),
        ]);
        let m = messages(&schema);
        assert_eq!(m.len(), 4, "{m:#?}");
        assert!(m[0].contains("primary key `A.id` is optional"), "{}", m[0]);
        assert_eq!(
            m[1],
            "primary key `B.id` is a bool; allowed primary key types are i64, i32, i16, String \
             and Uuid"
        );
        assert!(m[2].contains("`C.id` is a list"), "{}", m[2]);
        assert!(m[3].contains("`D.id` is a link to `A`"), "{}", m[3]);
    }

    #[test]
    fn links_and_lists_to_unknown_classes_name_the_known_ones() {
        let schema = Schema::new(vec![
            keyed("Bus").property(Property::new("route", PropertyType::Link("Route".into()))),
            keyed("Driver").property(Property::new(
                "buses",
                PropertyType::List(ListItem::Object("Buss".into())),
            )),
        ]);
        let m = messages(&schema);
        assert_eq!(m.len(), 2);
        assert!(m[0].starts_with(
            "`Bus.route` links to class `Route`, which is not in this schema; the classes in \
             this schema are: `Bus`, `Driver`."
        ));
        assert!(m[1].starts_with("`Driver.buses` lists to class `Buss`"));
    }

    #[test]
    fn duplicates_are_reported_at_the_second_with_the_first() {
        let schema = Schema::new(vec![
            keyed("Bus"),
            keyed("Bus").table("bus2"),
            keyed("Coach").table("bus"),
            keyed("Stop")
                .property(Property::new("name", string()))
                .property(Property::new("name", string()).column("label"))
                .property(Property::new("label", string())),
        ]);
        let errors = validate(&schema);
        let got: Vec<_> = errors
            .iter()
            .map(|e| (e.location, e.first, e.message.as_str()))
            .collect();
        assert_eq!(got.len(), 4, "{got:#?}");
        assert_eq!(got[0].0, Location::Class { class: 1 });
        assert_eq!(got[0].1, Some(Location::Class { class: 0 }));
        assert!(got[0].2.starts_with("class `Bus` is defined twice"));
        assert_eq!(got[1].0, Location::Class { class: 2 });
        assert_eq!(got[1].1, Some(Location::Class { class: 0 }));
        assert_eq!(
            got[1].2,
            "table name \"bus\" is used twice: by the table of class `Bus` and by the table of \
             class `Coach`; choose another with #[realm_object(table = \"...\")] on `Coach`"
        );
        let at = |property| Location::Property { class: 3, property };
        assert_eq!((got[2].0, got[2].1), (at(2), Some(at(1))));
        assert!(got[2]
            .2
            .starts_with("property `Stop.name` is defined twice"));
        assert_eq!((got[3].0, got[3].1), (at(3), Some(at(2))));
        assert!(got[3]
            .2
            .contains("uses column name \"label\", already used by `name`"));
    }

    #[test]
    fn a_list_subtable_colliding_with_a_table_is_a_duplicate_table() {
        // route.stops makes "route_stops", which is also RouteStop's table.
        let schema = Schema::new(vec![
            keyed("Route").property(Property::new(
                "stops",
                PropertyType::List(ListItem::Object("RouteStop".into())),
            )),
            keyed("RouteStop").table("route_stops"),
        ]);
        let errors = validate(&schema);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].location, Location::Class { class: 1 });
        assert_eq!(
            errors[0].first,
            Some(Location::Property {
                class: 0,
                property: 1
            })
        );
        assert!(errors[0].message.contains(
            "by the list subtable of `Route.stops` and by the table of class `RouteStop`"
        ));
    }

    #[test]
    fn a_list_sharing_a_column_name_with_a_column_is_a_duplicate_column() {
        let schema = Schema::new(vec![keyed("Route")
            .property(Property::new("stops", string()))
            .property(
                Property::new(
                    "stopList",
                    PropertyType::List(ListItem::Scalar(ScalarType::String)),
                )
                .column("stops"),
            )]);
        let errors = validate(&schema);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(errors[0].message.contains("already used by `stops`"));
    }

    #[test]
    fn empty_and_overlong_identifiers_are_refused() {
        let long = "x".repeat(64);
        let schema = Schema::new(vec![
            keyed("Bus").table(""),
            keyed("Stop").property(Property::new("name", string()).column(long.clone())),
            keyed("Ok").table("x".repeat(63)),
        ]);
        let m = messages(&schema);
        assert_eq!(m.len(), 2, "{m:#?}");
        assert!(m[0].starts_with("table name \"\" of class `Bus` is empty"));
        assert!(m[1].contains("is 64 bytes long; PostgreSQL keeps only the first 63"));
    }

    #[test]
    fn an_overlong_list_subtable_name_is_refused() {
        let schema = Schema::new(vec![keyed("Route").table("r".repeat(40)).property(
            Property::new(
                "stops",
                PropertyType::List(ListItem::Scalar(ScalarType::String)),
            )
            .column("s".repeat(30)),
        )]);
        let m = messages(&schema);
        assert_eq!(m.len(), 1, "{m:#?}");
        assert!(m[0].contains("list subtable name"), "{}", m[0]);
    }

    #[test]
    fn postgres_type_and_custom_type_rules() {
        let schema = Schema::new(vec![keyed("Bus")
            .property(
                Property::new("mood", string())
                    .custom_type("mood")
                    .postgres_type("text"),
            )
            .property(Property::new("route", PropertyType::Link("Bus".into())).custom_type("x"))
            .property(Property::new("name", string()).postgres_type("integer"))
            .property(Property::new("code", string()).postgres_type("text; drop table bus"))
            .property(Property::new("plate", string()).postgres_type("varchar(16)"))
            .property(Property::new("kind", string()).custom_type("public.bus_kind"))]);
        let m = messages(&schema);
        assert_eq!(m.len(), 4, "{m:#?}");
        assert!(
            m[0].contains("has both #[postgres(type = …)] and"),
            "{}",
            m[0]
        );
        assert!(m[1].contains("which is not a single value"), "{}", m[1]);
        assert!(
            m[2].starts_with("#[postgres(type = \"integer\")] cannot hold `Bus.name`, a String"),
            "{}",
            m[2]
        );
        assert!(m[3].contains("is not a PostgreSQL type name"), "{}", m[3]);
    }

    #[test]
    fn errors_come_in_declaration_order() {
        let schema = Schema::new(vec![
            Class::new("A").property(Property::new("l", PropertyType::Link("Z".into()))),
            Class::new("B").property(Property::new("l", PropertyType::Link("Y".into()))),
        ]);
        let locations: Vec<_> = validate(&schema).iter().map(|e| e.location).collect();
        assert_eq!(
            locations,
            [
                Location::Class { class: 0 },
                Location::Property {
                    class: 0,
                    property: 0
                },
                Location::Class { class: 1 },
                Location::Property {
                    class: 1,
                    property: 0
                },
            ]
        );
    }
}
