//! Comparing a live PostgreSQL catalog (read by the runtime) with a schema.
//!
//! The runtime reads `pg_catalog` into a [`Catalog`]; this module only compares data, so the
//! rules (which column types hold which property, what a list subtable must look like) live
//! next to the type map and are tested without a server. Problems are worded for the person who
//! has to fix the database: what is wrong, which property it concerns, what to run or change.
//!
//! Columns of a table that no property maps to are not problems: fields a user leaves out of a
//! struct are simply not synced.

use std::collections::BTreeMap;
use std::fmt;

use crate::ddl::{quote_ident, render_add_column};
use crate::model::{Class, Property, Schema, TableRef};
use crate::types::{normalize_postgres_type, ListItem, PropertyType, ScalarType};

/// The tables of a database, as the runtime reads them from `pg_catalog`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Catalog {
    /// Tables by name (unqualified: the tables pgrealm's search path sees).
    pub tables: BTreeMap<String, CatalogTable>,
}

/// One table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CatalogTable {
    /// Columns in `attnum` order.
    pub columns: Vec<CatalogColumn>,
    /// Primary key column names in key order; empty when the table has none.
    pub primary_key: Vec<String>,
}

impl CatalogTable {
    /// A column by name.
    pub fn column(&self, name: &str) -> Option<&CatalogColumn> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// One column.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CatalogColumn {
    /// The column name.
    pub name: String,
    /// The type as `format_type(atttypid, atttypmod)` spells it (`character varying(64)`).
    pub data_type: String,
    /// The type's own name (`pg_type.typname`: `varchar`, `int8`, `mood`).
    pub udt_name: String,
    /// `attnotnull`.
    pub not_null: bool,
}

/// One way the database differs from the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogProblem {
    /// A table the schema maps to does not exist.
    MissingTable {
        /// The table.
        table: String,
        /// What maps to it: `class Bus` or `list Route.schedules`.
        owner: String,
    },
    /// A column the schema maps to does not exist.
    MissingColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// What maps to it: `property Bus.route` or `list Route.schedules`.
        owner: String,
        /// SQL that adds it, when it can be added on its own.
        fix: Option<String>,
    },
    /// A column's type cannot hold the property.
    IncompatibleType {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The column's type as the database spells it.
        found: String,
        /// What the column holds, as a phrase: `Bus.name is a String (realm string)`.
        wanted: String,
        /// The PostgreSQL types that would do.
        accepted: Vec<String>,
        /// Whether `found` looks like a user-defined type (a hint to use `custom_type`).
        user_defined: bool,
    },
    /// The table has no primary key.
    MissingPrimaryKey {
        /// The table.
        table: String,
        /// The key columns the schema expects.
        expected: Vec<String>,
        /// What maps to the table.
        owner: String,
    },
    /// The table's primary key is on other columns than the schema's.
    DifferentPrimaryKey {
        /// The table.
        table: String,
        /// The key columns the schema expects.
        expected: Vec<String>,
        /// The key columns the table has.
        found: Vec<String>,
        /// What maps to the table.
        owner: String,
    },
    /// The column's nullability differs from the property's: sync works, but some values will
    /// be rejected. A warning, not an error.
    NullableMismatch {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The property: `Bus.name`.
        property: String,
        /// Whether the column allows NULL (and the property is required); otherwise the column
        /// is NOT NULL and the property optional.
        column_nullable: bool,
    },
}

impl CatalogProblem {
    /// Whether sync can run despite this problem (some values will be rejected with a reason).
    pub fn is_warning(&self) -> bool {
        matches!(self, CatalogProblem::NullableMismatch { .. })
    }
}

fn column_list(columns: &[String]) -> String {
    let quoted: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    format!("({})", quoted.join(", "))
}

impl fmt::Display for CatalogProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CatalogProblem::MissingTable { table, owner } => write!(
                f,
                "table {} is missing ({owner}); create it with your binary's `ddl` command \
                 (e.g. `transit ddl | psql`) or set create_postgres_db = true",
                quote_ident(table)
            ),
            CatalogProblem::MissingColumn {
                table,
                column,
                owner,
                fix,
            } => {
                write!(
                    f,
                    "column {}.{} is missing ({owner}); ",
                    quote_ident(table),
                    quote_ident(column)
                )?;
                match fix {
                    Some(sql) => write!(
                        f,
                        "add it with `{sql}`, or leave the field out of the struct to not sync it"
                    ),
                    None => write!(
                        f,
                        "recreate the table as your binary's `ddl` command prints it"
                    ),
                }
            }
            CatalogProblem::IncompatibleType {
                table,
                column,
                found,
                wanted,
                accepted,
                user_defined,
            } => {
                write!(
                    f,
                    "column {}.{} is {found}, but {wanted}, which needs ",
                    quote_ident(table),
                    quote_ident(column)
                )?;
                match accepted.as_slice() {
                    [one] => write!(f, "{one}")?,
                    many => write!(f, "one of: {}", many.join(", "))?,
                }
                if *user_defined {
                    write!(
                        f,
                        "; if {found} is a user-defined type (an enum or domain) whose values \
                         fit the field, mark it #[postgres(custom_type = \"{found}\")]"
                    )?;
                }
                Ok(())
            }
            CatalogProblem::MissingPrimaryKey {
                table,
                expected,
                owner,
            } => write!(
                f,
                "table {t} has no primary key, but {owner} needs one on {cols}; add it with \
                 `ALTER TABLE {t} ADD PRIMARY KEY {cols}`",
                t = quote_ident(table),
                cols = column_list(expected)
            ),
            CatalogProblem::DifferentPrimaryKey {
                table,
                expected,
                found,
                owner,
            } => write!(
                f,
                "table {} has primary key {}, but {owner} expects {}; change the table's \
                 primary key or mark the matching field #[primary_key]",
                quote_ident(table),
                column_list(found),
                column_list(expected)
            ),
            CatalogProblem::NullableMismatch {
                table,
                column,
                property,
                column_nullable,
            } => {
                let (t, c) = (quote_ident(table), quote_ident(column));
                if *column_nullable {
                    write!(
                        f,
                        "column {t}.{c} allows NULL, but {property} is required: rows where it \
                         is NULL will be rejected; make the field Option<…> or run `ALTER \
                         TABLE {t} ALTER COLUMN {c} SET NOT NULL`"
                    )
                } else {
                    write!(
                        f,
                        "column {t}.{c} is NOT NULL, but {property} is optional: PostgreSQL \
                         will reject objects without it; make the field required or run \
                         `ALTER TABLE {t} ALTER COLUMN {c} DROP NOT NULL`"
                    )
                }
            }
        }
    }
}

/// The PostgreSQL types (as `format_type` spells their base) a scalar can be read from: the
/// list behind [`ScalarType::accepts_postgres_type`], for messages. A test keeps the two equal.
pub fn accepted_postgres_types(scalar: ScalarType) -> &'static [&'static str] {
    match scalar {
        ScalarType::Bool => &["boolean"],
        ScalarType::Int(_) => &["smallint", "integer", "bigint"],
        ScalarType::Float => &["real"],
        ScalarType::Double => &["double precision", "real"],
        ScalarType::Decimal => &["numeric"],
        ScalarType::String => &[
            "text",
            "character varying",
            "character",
            "json",
            "jsonb",
            "uuid",
            "tsvector",
            "name",
            "citext",
        ],
        ScalarType::Data => &["bytea"],
        ScalarType::Date => &[
            "timestamp with time zone",
            "timestamp without time zone",
            "date",
        ],
        ScalarType::Uuid => &["uuid"],
    }
}

/// Every difference between the database and the schema that matters to sync, in table order
/// ([`Schema::tables`]) and, within a table, column order. Empty when they agree.
///
/// ```
/// use pgrealm_schema::catalog::{check_catalog, Catalog};
/// use pgrealm_schema::{Class, IntWidth, Property, PropertyType, ScalarType, Schema};
///
/// let schema = Schema::new(vec![Class::new("Bus").property(
///     Property::new("id", PropertyType::Scalar(ScalarType::Int(IntWidth::I64))).primary_key())]);
/// let problems = check_catalog(&schema, &Catalog::default());
/// assert!(problems[0].to_string().starts_with("table \"bus\" is missing (class Bus)"));
/// ```
pub fn check_catalog(schema: &Schema, catalog: &Catalog) -> Vec<CatalogProblem> {
    let mut problems = Vec::new();
    for table in schema.tables() {
        let name = table.name();
        let owner = match &table {
            TableRef::Class(class) => format!("class {}", class.name),
            TableRef::List { class, property } => format!("list {}.{}", class.name, property.name),
        };
        let Some(found) = catalog.tables.get(&name) else {
            problems.push(CatalogProblem::MissingTable { table: name, owner });
            continue;
        };
        let expected_key = match &table {
            TableRef::Class(class) => {
                check_class_columns(schema, class, found, &mut problems);
                class
                    .primary_key()
                    .map(|p| vec![p.column.clone()])
                    .unwrap_or_default()
            }
            TableRef::List { class, property } => {
                check_list_columns(schema, class, property, found, &mut problems);
                vec!["oid".to_string(), "idx".to_string()]
            }
        };
        if found.primary_key.is_empty() {
            problems.push(CatalogProblem::MissingPrimaryKey {
                table: name,
                expected: expected_key,
                owner,
            });
        } else if found.primary_key != expected_key && !expected_key.is_empty() {
            problems.push(CatalogProblem::DifferentPrimaryKey {
                table: name,
                expected: expected_key,
                found: found.primary_key.clone(),
                owner,
            });
        }
    }
    problems
}

/// What a column must hold: a scalar (from the type map), or a custom type by name.
enum Wanted {
    Scalar(ScalarType),
    Custom(String),
}

fn wanted_for(property: &Property, scalar: ScalarType) -> Wanted {
    match &property.custom_type {
        Some(custom) => Wanted::Custom(custom.clone()),
        None => Wanted::Scalar(scalar),
    }
}

fn describe(scalar: ScalarType) -> String {
    format!("a {} (realm {})", scalar.rust_type(), scalar.realm_name())
}

fn check_class_columns(
    schema: &Schema,
    class: &Class,
    table: &CatalogTable,
    problems: &mut Vec<CatalogProblem>,
) {
    for property in class.column_properties() {
        let name = format!("{}.{}", class.name, property.name);
        let Some(column) = table.column(&property.column) else {
            let sql = render_add_column(schema, class, property);
            problems.push(CatalogProblem::MissingColumn {
                table: class.table.clone(),
                column: property.column.clone(),
                owner: format!("property {name}"),
                fix: Some(sql.lines().collect::<Vec<_>>().join(" ")),
            });
            continue;
        };
        let (wanted, phrase) = match &property.ty {
            PropertyType::Scalar(s) => (
                wanted_for(property, *s),
                format!("{name} is {}", describe(*s)),
            ),
            PropertyType::Link(target) => {
                let Some(key) = schema.class(target).and_then(Class::primary_key) else {
                    continue; // an invalid schema; validation reports it
                };
                let Some(s) = key.ty.scalar() else { continue };
                (
                    wanted_for(key, s),
                    format!(
                        "{name} links to {target}, whose primary key is {}",
                        describe(s)
                    ),
                )
            }
            PropertyType::List(_) => continue,
        };
        check_type(&class.table, column, &wanted, phrase, problems);
        // A primary key column is NOT NULL by construction; nothing to say about it.
        if !property.primary_key && column.not_null == property.optional {
            problems.push(CatalogProblem::NullableMismatch {
                table: class.table.clone(),
                column: column.name.clone(),
                property: name,
                column_nullable: !column.not_null,
            });
        }
    }
}

fn check_list_columns(
    schema: &Schema,
    class: &Class,
    property: &Property,
    table: &CatalogTable,
    problems: &mut Vec<CatalogProblem>,
) {
    let table_name = class.list_table(property);
    let name = format!("{}.{}", class.name, property.name);
    let Some(owner_key) = class.primary_key() else {
        return; // an invalid schema; validation reports it
    };
    let Some(owner_scalar) = owner_key.ty.scalar() else {
        return;
    };
    let mut expected = vec![
        (
            "oid",
            wanted_for(owner_key, owner_scalar),
            format!(
                "it holds the primary key of the {} owning the list {name}, {}",
                class.name,
                describe(owner_scalar)
            ),
        ),
        (
            "idx",
            Wanted::Scalar(ScalarType::Int(crate::types::IntWidth::I32)),
            format!("it holds positions in the list {name}, an integer"),
        ),
    ];
    match &property.ty {
        PropertyType::List(ListItem::Object(target)) => {
            let Some(key) = schema.class(target).and_then(Class::primary_key) else {
                return;
            };
            let Some(s) = key.ty.scalar() else { return };
            expected.push((
                "target",
                wanted_for(key, s),
                format!(
                    "the entries of {name} link to {target}, whose primary key is {}",
                    describe(s)
                ),
            ));
        }
        PropertyType::List(ListItem::Scalar(s)) => expected.push((
            "value",
            Wanted::Scalar(*s),
            format!("the entries of {name} are {}", describe(*s)),
        )),
        _ => return,
    }
    for (column_name, wanted, phrase) in expected {
        let Some(column) = table.column(column_name) else {
            problems.push(CatalogProblem::MissingColumn {
                table: table_name.clone(),
                column: column_name.to_string(),
                owner: format!("list {name}"),
                fix: None,
            });
            continue;
        };
        check_type(&table_name, column, &wanted, phrase, problems);
        if !column.not_null {
            problems.push(CatalogProblem::NullableMismatch {
                table: table_name.clone(),
                column: column.name.clone(),
                property: format!("the list {name}"),
                column_nullable: true,
            });
        }
    }
}

fn check_type(
    table: &str,
    column: &CatalogColumn,
    wanted: &Wanted,
    phrase: String,
    problems: &mut Vec<CatalogProblem>,
) {
    let (ok, accepted, phrase) = match wanted {
        Wanted::Scalar(s) => (
            s.accepts_postgres_type(&column.data_type) || s.accepts_postgres_type(&column.udt_name),
            accepted_postgres_types(*s)
                .iter()
                .map(|t| t.to_string())
                .collect(),
            phrase,
        ),
        Wanted::Custom(custom) => {
            // `schema.name` matches a column of type `name`; the catalog's udt_name is unqualified.
            let bare = custom.rsplit('.').next().unwrap_or(custom);
            (
                column.udt_name == bare || column.data_type == *custom || column.data_type == bare,
                vec![custom.clone()],
                format!("{phrase} declared #[postgres(custom_type = \"{custom}\")]"),
            )
        }
    };
    if ok {
        return;
    }
    let base = normalize_postgres_type(&column.data_type);
    let base = base.split('(').next().unwrap_or_default().trim();
    let user_defined = matches!(wanted, Wanted::Scalar(_))
        && column.data_type == column.udt_name
        && !BUILT_IN_TYPES.contains(&base);
    problems.push(CatalogProblem::IncompatibleType {
        table: table.to_string(),
        column: column.name.clone(),
        found: column.data_type.clone(),
        wanted: phrase,
        accepted,
        user_defined,
    });
}

/// Built-in types whose `format_type` spelling equals their `typname`, so they are not taken for
/// user-defined types in messages.
const BUILT_IN_TYPES: &[&str] = &[
    "text",
    "uuid",
    "bytea",
    "json",
    "jsonb",
    "date",
    "numeric",
    "money",
    "inet",
    "cidr",
    "macaddr",
    "xml",
    "tsvector",
    "tsquery",
    "point",
    "line",
    "box",
    "path",
    "polygon",
    "circle",
    "interval",
    "oid",
    "name",
    "citext",
    "int4range",
    "int8range",
    "numrange",
    "tsrange",
    "tstzrange",
    "daterange",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ddl::tests::transit;

    fn column(name: &str, data_type: &str, udt_name: &str, not_null: bool) -> CatalogColumn {
        CatalogColumn {
            name: name.into(),
            data_type: data_type.into(),
            udt_name: udt_name.into(),
            not_null,
        }
    }

    fn table(columns: Vec<CatalogColumn>, primary_key: &[&str]) -> CatalogTable {
        CatalogTable {
            columns,
            primary_key: primary_key.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The catalog the transit DDL creates, as PostgreSQL reports it.
    fn transit_catalog() -> Catalog {
        let mut tables = BTreeMap::new();
        tables.insert(
            "route".to_string(),
            table(
                vec![
                    column("id", "text", "text", true),
                    column("name", "text", "text", true),
                    // A column no property maps to (the original guide's `fare`) is fine.
                    column("fare", "numeric(10,2)", "numeric", false),
                ],
                &["id"],
            ),
        );
        tables.insert(
            "bus".to_string(),
            table(
                vec![
                    column("id", "bigint", "int8", true),
                    column("name", "text", "text", true),
                    column("routeid", "text", "text", false),
                ],
                &["id"],
            ),
        );
        tables.insert(
            "schedule".to_string(),
            table(
                vec![
                    column("id", "text", "text", true),
                    column("departure", "timestamp with time zone", "timestamptz", true),
                    column("note", "character varying(64)", "varchar", false),
                ],
                &["id"],
            ),
        );
        tables.insert(
            "route_schedules".to_string(),
            table(
                vec![
                    column("oid", "text", "text", true),
                    column("idx", "integer", "int4", true),
                    column("target", "text", "text", true),
                ],
                &["oid", "idx"],
            ),
        );
        tables.insert(
            "driver".to_string(),
            table(
                vec![
                    column("id", "bigint", "int8", true),
                    column("name", "text", "text", true),
                    column("bus", "bigint", "int8", false),
                ],
                &["id"],
            ),
        );
        Catalog { tables }
    }

    fn messages(catalog: &Catalog) -> Vec<String> {
        check_catalog(&transit(), catalog)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_catalog_the_ddl_creates_matches() {
        assert_eq!(check_catalog(&transit(), &transit_catalog()), []);
    }

    #[test]
    fn a_missing_table_says_how_to_create_it() {
        let mut catalog = transit_catalog();
        catalog.tables.remove("bus");
        catalog.tables.remove("route_schedules");
        assert_eq!(
            messages(&catalog),
            [
                "table \"route_schedules\" is missing (list Route.schedules); create it with \
                 your binary's `ddl` command (e.g. `transit ddl | psql`) or set \
                 create_postgres_db = true",
                "table \"bus\" is missing (class Bus); create it with your binary's `ddl` \
                 command (e.g. `transit ddl | psql`) or set create_postgres_db = true",
            ]
        );
    }

    #[test]
    fn a_dropped_column_and_a_changed_type_are_reported_in_plain_words() {
        let mut catalog = transit_catalog();
        let bus = catalog.tables.get_mut("bus").unwrap();
        bus.columns.retain(|c| c.name != "routeid");
        bus.columns[1] = column("name", "integer", "int4", true);
        assert_eq!(
            messages(&catalog),
            [
                "column \"bus\".\"name\" is integer, but Bus.name is a String (realm string), \
                 which needs one of: text, character varying, character, json, jsonb, uuid, \
                 tsvector, name, citext",
                "column \"bus\".\"routeid\" is missing (property Bus.route); add it with \
                 `ALTER TABLE \"bus\" ADD COLUMN \"routeid\" text; ALTER TABLE \"bus\" ADD \
                 FOREIGN KEY (\"routeid\") REFERENCES \"route\" (\"id\") ON DELETE SET NULL \
                 DEFERRABLE INITIALLY DEFERRED;`, or leave the field out of the struct to not \
                 sync it",
            ]
        );
    }

    #[test]
    fn links_and_lists_check_the_target_key_type() {
        let mut catalog = transit_catalog();
        catalog.tables.get_mut("driver").unwrap().columns[2] = column("bus", "text", "text", false);
        let list = catalog.tables.get_mut("route_schedules").unwrap();
        list.columns[2] = column("target", "integer", "int4", true);
        list.columns[1] = column("idx", "bigint", "int8", false);
        let m = messages(&catalog);
        assert_eq!(m.len(), 3, "{m:#?}");
        assert!(m[0].starts_with(
            "column \"route_schedules\".\"idx\" allows NULL, but the list Route.schedules is \
             required"
        ));
        assert!(m[1].starts_with(
            "column \"route_schedules\".\"target\" is integer, but the entries of \
             Route.schedules link to Schedule, whose primary key is a String (realm string)"
        ));
        assert!(m[2].starts_with(
            "column \"driver\".\"bus\" is text, but Driver.bus links to Bus, whose primary key \
             is a i64 (realm int), which needs one of: smallint, integer, bigint"
        ));
    }

    #[test]
    fn primary_keys_and_nullability() {
        let mut catalog = transit_catalog();
        catalog.tables.get_mut("route").unwrap().primary_key.clear();
        let bus = catalog.tables.get_mut("bus").unwrap();
        bus.primary_key = vec!["name".into()];
        bus.columns[1].not_null = false;
        bus.columns[2].not_null = true;
        let problems = check_catalog(&transit(), &catalog);
        let m: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(m.len(), 4, "{m:#?}");
        assert_eq!(
            m[0],
            "table \"route\" has no primary key, but class Route needs one on (\"id\"); add it \
             with `ALTER TABLE \"route\" ADD PRIMARY KEY (\"id\")`"
        );
        assert!(problems[1].is_warning());
        assert!(m[1].starts_with("column \"bus\".\"name\" allows NULL, but Bus.name is required"));
        assert!(
            m[2].starts_with("column \"bus\".\"routeid\" is NOT NULL, but Bus.route is optional")
        );
        assert!(!problems[3].is_warning());
        assert_eq!(
            m[3],
            "table \"bus\" has primary key (\"name\"), but class Bus expects (\"id\"); change \
             the table's primary key or mark the matching field #[primary_key]"
        );
    }

    #[test]
    fn custom_types_match_by_type_name_and_enums_get_a_hint() {
        let schema = Schema::new(vec![Class::new("Person")
            .property(Property::new("id", PropertyType::Scalar(ScalarType::String)).primary_key())
            .property(
                Property::new("mood", PropertyType::Scalar(ScalarType::String)).custom_type("mood"),
            )
            .property(Property::new(
                "feeling",
                PropertyType::Scalar(ScalarType::String),
            ))]);
        let mut tables = BTreeMap::new();
        tables.insert(
            "person".to_string(),
            table(
                vec![
                    column("id", "character varying(20)", "varchar", true),
                    column("mood", "mood", "mood", true),
                    column("feeling", "mood", "mood", true),
                ],
                &["id"],
            ),
        );
        let mut catalog = Catalog { tables };
        let m: Vec<String> = check_catalog(&schema, &catalog)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(m.len(), 1, "{m:#?}");
        assert!(m[0].ends_with(
            "; if mood is a user-defined type (an enum or domain) whose values fit the field, \
             mark it #[postgres(custom_type = \"mood\")]"
        ));
        let person = catalog.tables.get_mut("person").unwrap();
        person.columns[1] = column("mood", "text", "text", true);
        person.columns[2] = column("feeling", "text", "text", true);
        let m: Vec<String> = check_catalog(&schema, &catalog)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            m,
            [
                "column \"person\".\"mood\" is text, but Person.mood is a String (realm string) \
              declared #[postgres(custom_type = \"mood\")], which needs mood"
            ]
        );
    }

    #[test]
    fn the_message_lists_match_the_type_map() {
        // Every built-in type name we know of: accepted exactly when listed.
        let universe = [
            "boolean",
            "smallint",
            "integer",
            "bigint",
            "real",
            "double precision",
            "numeric",
            "text",
            "character varying",
            "character",
            "json",
            "jsonb",
            "uuid",
            "tsvector",
            "name",
            "citext",
            "bytea",
            "timestamp with time zone",
            "timestamp without time zone",
            "date",
            "time without time zone",
            "interval",
            "money",
            "inet",
            "xml",
            "oid",
        ];
        for scalar in ScalarType::ALL {
            let listed = accepted_postgres_types(scalar);
            for pg in universe {
                assert_eq!(
                    scalar.accepts_postgres_type(pg),
                    listed.contains(&pg),
                    "{scalar:?} and {pg}"
                );
            }
        }
    }
}
