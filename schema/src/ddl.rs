//! DDL rendering: the one place PostgreSQL CREATE statements are written.
//!
//! `schema!` renders [`render_ddl`] into a constant at compile time, and the runtime calls the
//! same functions to create tables and to apply additive schema changes, so the two can never
//! disagree. Every identifier is quoted with [`quote_ident`]; output depends only on the schema
//! (declaration order decides every tie), never on hash order.
//!
//! Choices made here, and why:
//! - Every foreign key is `DEFERRABLE INITIALLY DEFERRED`: a sync transaction writes rows in the
//!   order realm changes arrive, which need not respect references; checks happen at COMMIT.
//! - An optional link's FK is `ON DELETE SET NULL`: deleting an object in Realm nullifies the
//!   links to it, and the database does the same. A required link (`Link<T>` without `Option`)
//!   keeps the default `NO ACTION`: the column cannot become NULL, so deleting a still-linked
//!   target fails at COMMIT with PostgreSQL's own message.
//! - A list subtable's `oid` FK is `ON DELETE CASCADE` (an object's lists die with it). Its
//!   `target` FK is `NO ACTION`: a cascade there would leave holes in the dense `idx` sequence
//!   behind the sync engine's back, so deleting a listed object must remove it from lists first.
//! - Tables come in dependency order (a table after the tables it references, declaration order
//!   breaking ties). References inside a cycle (A → B → A) are added after every table exists,
//!   with `ALTER TABLE … ADD FOREIGN KEY`; a self-reference stays inline, which PostgreSQL
//!   accepts in CREATE TABLE. Constraint and index names are left to PostgreSQL
//!   (`bus_routeid_fkey`, `bus_name_idx`), which derives them deterministically.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::model::{Class, Property, Schema, TableRef};
use crate::types::{normalize_postgres_type, ListItem, PropertyType, ScalarType};

/// The first line of every script [`render_ddl`] writes.
pub const HEADER: &str = "-- pgrealm schema (generated; do not edit)";

/// The whole schema as a script that applies in one go to an empty database.
///
/// The schema should be valid ([`crate::validate::validate`] returns nothing); a link to a class
/// that is not there renders a type PostgreSQL refuses, rather than a guess.
///
/// ```
/// use pgrealm_schema::{Class, IntWidth, Property, PropertyType, ScalarType, Schema};
/// use pgrealm_schema::ddl::render_ddl;
///
/// let schema = Schema::new(vec![Class::new("Bus")
///     .property(Property::new("id", PropertyType::Scalar(ScalarType::Int(IntWidth::I64))).primary_key())
///     .property(Property::new("name", PropertyType::Scalar(ScalarType::String)))]);
/// let ddl = render_ddl(&schema);
/// assert!(ddl.contains("CREATE TABLE \"bus\" (\n    \"id\" bigint NOT NULL PRIMARY KEY,\n    \"name\" text NOT NULL\n);"));
/// ```
pub fn render_ddl(schema: &Schema) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    let body = render_tables(schema, &schema.tables());
    if !body.is_empty() {
        out.push('\n');
        out.push_str(&body);
    }
    out
}

/// CREATE TABLE (and CREATE INDEX) statements for some tables of the schema, in dependency
/// order, references among them inside cycles added afterwards with ALTER TABLE.
///
/// Tables outside `tables` are assumed to exist already, as when the runtime adds new classes to
/// a database that holds the old ones.
pub fn render_tables(schema: &Schema, tables: &[TableRef<'_>]) -> String {
    let names: Vec<String> = tables.iter().map(TableRef::name).collect();
    let deps: Vec<BTreeSet<usize>> = tables
        .iter()
        .map(|t| {
            foreign_keys(schema, t)
                .iter()
                .filter_map(|fk| names.iter().position(|n| *n == fk.table))
                .collect()
        })
        .collect();

    // Kahn's algorithm, always taking the earliest declared ready table. When none is ready the
    // rest contains a cycle: take the earliest remaining table and defer its open references.
    let mut created: BTreeSet<usize> = BTreeSet::new();
    let mut statements = Vec::new();
    let mut deferred = Vec::new();
    while created.len() < tables.len() {
        let ready = (0..tables.len()).find(|i| {
            !created.contains(i) && deps[*i].iter().all(|d| *d == *i || created.contains(d))
        });
        let next = ready.unwrap_or_else(|| {
            (0..tables.len())
                .find(|i| !created.contains(i))
                .expect("the loop runs while some table is not created")
        });
        let later: BTreeSet<&str> = (0..tables.len())
            .filter(|i| *i != next && !created.contains(i))
            .map(|i| names[i].as_str())
            .collect();
        let table = &tables[next];
        let (inline, after): (Vec<_>, Vec<_>) = foreign_keys(schema, table)
            .into_iter()
            .partition(|fk| !later.contains(fk.table.as_str()));
        statements.push(create_table(schema, table, &inline));
        statements.extend(create_indexes(table));
        deferred.extend(after.iter().map(|fk| add_foreign_key(&names[next], fk)));
        created.insert(next);
    }
    statements.extend(deferred);
    let mut out = String::new();
    for statement in statements {
        out.push_str(&statement);
        out.push('\n');
    }
    out
}

/// One table: its CREATE TABLE statement with every foreign key inline, then its indexes. The
/// tables it references must exist (or be created in the same transaction before it).
pub fn render_create_table(schema: &Schema, table: &TableRef<'_>) -> String {
    let fks = foreign_keys(schema, table);
    let mut out = create_table(schema, table, &fks);
    out.push('\n');
    for index in create_indexes(table) {
        out.push_str(&index);
        out.push('\n');
    }
    out
}

/// The statements that add `property` to the existing table of `class`: a column (with its
/// foreign key and index), or for a list, its subtable.
///
/// A required column is added with the realm default of its type (0, '', false, the epoch,
/// the nil uuid, empty bytes), which is what Realm gives existing objects when a property is
/// added, and the default is dropped right after so that later inserts must name the column as
/// before. A required link has no such default; [`crate::diff::diff`] reports adding one as not
/// additive.
pub fn render_add_column(schema: &Schema, class: &Class, property: &Property) -> String {
    if property.ty.is_list() {
        return render_create_table(schema, &TableRef::List { class, property });
    }
    let table = quote_ident(&class.table);
    let column = quote_ident(&property.column);
    let ty = column_sql_type(schema, property);
    let mut out = String::new();
    let default = (!property.optional)
        .then(|| property.ty.scalar().map(realm_default))
        .flatten();
    match default {
        Some(default) => {
            let _ = writeln!(
                out,
                "ALTER TABLE {table} ADD COLUMN {column} {ty} NOT NULL DEFAULT {default};"
            );
            let _ = writeln!(
                out,
                "ALTER TABLE {table} ALTER COLUMN {column} DROP DEFAULT;"
            );
        }
        None => {
            let null = if property.optional { "" } else { " NOT NULL" };
            let _ = writeln!(out, "ALTER TABLE {table} ADD COLUMN {column} {ty}{null};");
        }
    }
    if let PropertyType::Link(target) = &property.ty {
        let fk = link_foreign_key(schema, property, target);
        out.push_str(&add_foreign_key(&class.table, &fk));
        out.push('\n');
    }
    if property.indexed && !property.primary_key {
        let _ = writeln!(out, "CREATE INDEX ON {table} ({column});");
    }
    out
}

/// The SQL type of the column a property occupies: its custom type, its `postgres_type`
/// override, or the type map's choice. A link takes its target's primary key column type
/// (including that column's override); a list gives the type of its `target`/`value` column.
pub fn column_sql_type(schema: &Schema, property: &Property) -> String {
    match &property.ty {
        PropertyType::Scalar(scalar) => scalar_sql_type(property, *scalar),
        PropertyType::List(ListItem::Scalar(scalar)) => scalar_sql_type(property, *scalar),
        PropertyType::Link(target) | PropertyType::List(ListItem::Object(target)) => {
            key_sql_type(schema, target)
        }
    }
}

/// The SQL type of the primary key column of `class`, which every reference to it uses.
pub fn key_sql_type(schema: &Schema, class: &str) -> String {
    match schema.class(class).and_then(Class::primary_key) {
        // A key that is itself a link or list is refused by validation; stop the recursion.
        Some(pk) if pk.ty.scalar().is_some() => column_sql_type(schema, pk),
        // Unrenderable: a quoted name PostgreSQL reports as an unknown type, never a guess.
        _ => quote_ident(&format!("pgrealm: class {class} has no usable primary key")),
    }
}

fn scalar_sql_type(property: &Property, scalar: ScalarType) -> String {
    if let Some(custom) = &property.custom_type {
        return custom
            .split('.')
            .map(quote_ident)
            .collect::<Vec<_>>()
            .join(".");
    }
    match &property.postgres_type {
        Some(pg) => normalize_postgres_type(pg),
        None => scalar.postgres_type().to_string(),
    }
}

/// An identifier as PostgreSQL reads it verbatim: in double quotes, inner quotes doubled.
///
/// ```
/// assert_eq!(pgrealm_schema::ddl::quote_ident("a \"b\""), "\"a \"\"b\"\"\"");
/// ```
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal PostgreSQL reads verbatim whatever `standard_conforming_strings` says:
/// quotes doubled, and text with backslashes written as an `E'…'` literal with them doubled
/// (what PostgreSQL's own `quote_literal` does). PostgreSQL text cannot hold NUL.
///
/// ```
/// assert_eq!(pgrealm_schema::ddl::quote_literal("it's"), "'it''s'");
/// assert_eq!(pgrealm_schema::ddl::quote_literal("a\\b"), "E'a\\\\b'");
/// ```
pub fn quote_literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// The value Realm gives existing objects when a required property of this type is added.
fn realm_default(scalar: ScalarType) -> &'static str {
    match scalar {
        ScalarType::Bool => "false",
        ScalarType::Int(_) | ScalarType::Float | ScalarType::Double | ScalarType::Decimal => "0",
        ScalarType::String => "''",
        ScalarType::Data => "''::bytea",
        ScalarType::Date => "'1970-01-01 00:00:00+00'",
        ScalarType::Uuid => "'00000000-0000-0000-0000-000000000000'",
    }
}

/// A foreign key of a table: its column, the referenced table and column, and its actions.
#[derive(Debug, Clone)]
struct ForeignKey {
    column: String,
    table: String,
    references: String,
    on_delete: Option<&'static str>,
}

impl ForeignKey {
    fn clause(&self) -> String {
        let on_delete = self
            .on_delete
            .map(|a| format!(" ON DELETE {a}"))
            .unwrap_or_default();
        format!(
            "FOREIGN KEY ({}) REFERENCES {} ({}){on_delete} DEFERRABLE INITIALLY DEFERRED",
            quote_ident(&self.column),
            quote_ident(&self.table),
            quote_ident(&self.references)
        )
    }
}

fn add_foreign_key(table: &str, fk: &ForeignKey) -> String {
    format!("ALTER TABLE {} ADD {};", quote_ident(table), fk.clause())
}

/// The key column of a class by name (a placeholder name when the schema is invalid; the type
/// rendered for it already makes PostgreSQL refuse the script).
fn key_column(schema: &Schema, class: &str) -> (String, String) {
    let target = schema.class(class);
    let table = target.map_or_else(|| class.to_string(), |c| c.table.clone());
    let column = target
        .and_then(Class::primary_key)
        .map_or_else(|| "id".to_string(), |p| p.column.clone());
    (table, column)
}

fn link_foreign_key(schema: &Schema, property: &Property, target: &str) -> ForeignKey {
    let (table, references) = key_column(schema, target);
    ForeignKey {
        column: property.column.clone(),
        table,
        references,
        on_delete: property.optional.then_some("SET NULL"),
    }
}

fn foreign_keys(schema: &Schema, table: &TableRef<'_>) -> Vec<ForeignKey> {
    match table {
        TableRef::Class(class) => class
            .column_properties()
            .filter_map(|p| match &p.ty {
                PropertyType::Link(target) => Some(link_foreign_key(schema, p, target)),
                _ => None,
            })
            .collect(),
        TableRef::List { class, property } => {
            let (owner_table, owner_key) = key_column(schema, &class.name);
            let mut fks = vec![ForeignKey {
                column: "oid".into(),
                table: owner_table,
                references: owner_key,
                on_delete: Some("CASCADE"),
            }];
            if let PropertyType::List(ListItem::Object(target)) = &property.ty {
                let (table, references) = key_column(schema, target);
                fks.push(ForeignKey {
                    column: "target".into(),
                    table,
                    references,
                    on_delete: None,
                });
            }
            fks
        }
    }
}

fn create_table(schema: &Schema, table: &TableRef<'_>, fks: &[ForeignKey]) -> String {
    let mut lines: Vec<String> = Vec::new();
    let comment = match table {
        TableRef::Class(class) => format!("-- class {}", class.name),
        TableRef::List { class, property } => {
            let item = match &property.ty {
                PropertyType::List(ListItem::Object(target)) => target.clone(),
                PropertyType::List(ListItem::Scalar(s)) => s.to_string(),
                _ => String::new(),
            };
            format!("-- list {}.{} of {item}", class.name, property.name)
        }
    };
    match table {
        TableRef::Class(class) => {
            for p in class.column_properties() {
                let mut line = format!("{} {}", quote_ident(&p.column), column_sql_type(schema, p));
                if !p.optional || p.primary_key {
                    line.push_str(" NOT NULL");
                }
                if p.primary_key {
                    line.push_str(" PRIMARY KEY");
                }
                lines.push(line);
            }
        }
        TableRef::List { class, property } => {
            let item_column = match &property.ty {
                PropertyType::List(ListItem::Object(_)) => "target",
                _ => "value",
            };
            lines.push(format!(
                "\"oid\" {} NOT NULL",
                key_sql_type(schema, &class.name)
            ));
            lines.push("\"idx\" integer NOT NULL".into());
            lines.push(format!(
                "{} {} NOT NULL",
                quote_ident(item_column),
                column_sql_type(schema, property)
            ));
            lines.push("PRIMARY KEY (\"oid\", \"idx\")".into());
        }
    }
    lines.extend(fks.iter().map(ForeignKey::clause));
    format!(
        "{comment}\nCREATE TABLE {} (\n    {}\n);",
        quote_ident(&table.name()),
        lines.join(",\n    ")
    )
}

fn create_indexes(table: &TableRef<'_>) -> Vec<String> {
    let name = quote_ident(&table.name());
    match table {
        TableRef::Class(class) => class
            .column_properties()
            .filter(|p| p.indexed && !p.primary_key)
            .map(|p| format!("CREATE INDEX ON {name} ({});", quote_ident(&p.column)))
            .collect(),
        // An indexed list indexes its items, for "which lists hold X" lookups; (oid, idx) is
        // already indexed by the primary key.
        TableRef::List { property, .. } if property.indexed => {
            let column = match &property.ty {
                PropertyType::List(ListItem::Object(_)) => "target",
                _ => "value",
            };
            vec![format!("CREATE INDEX ON {name} (\"{column}\");")]
        }
        TableRef::List { .. } => Vec::new(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::IntWidth;

    fn int() -> PropertyType {
        PropertyType::Scalar(ScalarType::Int(IntWidth::I64))
    }
    fn string() -> PropertyType {
        PropertyType::Scalar(ScalarType::String)
    }

    /// The original adapter guide's transit models (Route without `fare`).
    pub(crate) fn transit() -> Schema {
        Schema::new(vec![
            Class::new("Route")
                .property(Property::new("id", string()).primary_key())
                .property(Property::new("name", string()))
                .property(Property::new(
                    "schedules",
                    PropertyType::List(ListItem::Object("Schedule".into())),
                )),
            Class::new("Bus")
                .property(Property::new("id", int()).primary_key())
                .property(Property::new("name", string()).indexed())
                .property(
                    Property::new("route", PropertyType::Link("Route".into()))
                        .column("routeid")
                        .optional(),
                ),
            Class::new("Schedule")
                .property(Property::new("id", string()).primary_key())
                .property(Property::new(
                    "departure",
                    PropertyType::Scalar(ScalarType::Date),
                ))
                .property(
                    Property::new("note", string())
                        .optional()
                        .postgres_type("varchar(64)"),
                ),
            Class::new("Driver")
                .property(Property::new("id", int()).primary_key())
                .property(Property::new("name", string()))
                .property(Property::new("bus", PropertyType::Link("Bus".into())).optional()),
        ])
    }

    #[test]
    fn transit_renders_in_dependency_order() {
        let expected = r#"-- pgrealm schema (generated; do not edit)

-- class Route
CREATE TABLE "route" (
    "id" text NOT NULL PRIMARY KEY,
    "name" text NOT NULL
);
-- class Bus
CREATE TABLE "bus" (
    "id" bigint NOT NULL PRIMARY KEY,
    "name" text NOT NULL,
    "routeid" text,
    FOREIGN KEY ("routeid") REFERENCES "route" ("id") ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX ON "bus" ("name");
-- class Schedule
CREATE TABLE "schedule" (
    "id" text NOT NULL PRIMARY KEY,
    "departure" timestamp with time zone NOT NULL,
    "note" character varying(64)
);
-- list Route.schedules of Schedule
CREATE TABLE "route_schedules" (
    "oid" text NOT NULL,
    "idx" integer NOT NULL,
    "target" text NOT NULL,
    PRIMARY KEY ("oid", "idx"),
    FOREIGN KEY ("oid") REFERENCES "route" ("id") ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    FOREIGN KEY ("target") REFERENCES "schedule" ("id") DEFERRABLE INITIALLY DEFERRED
);
-- class Driver
CREATE TABLE "driver" (
    "id" bigint NOT NULL PRIMARY KEY,
    "name" text NOT NULL,
    "bus" bigint,
    FOREIGN KEY ("bus") REFERENCES "bus" ("id") ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED
);
"#;
        assert_eq!(render_ddl(&transit()), expected);
        // Deterministic: the same schema renders the same bytes.
        assert_eq!(render_ddl(&transit()), render_ddl(&transit()));
    }

    #[test]
    fn cycles_are_closed_with_alter_table_and_self_links_stay_inline() {
        let schema = Schema::new(vec![
            Class::new("A")
                .property(Property::new("id", int()).primary_key())
                .property(Property::new("b", PropertyType::Link("B".into())).optional()),
            Class::new("B")
                .property(Property::new("id", string()).primary_key())
                .property(Property::new("a", PropertyType::Link("A".into())))
                .property(Property::new("parent", PropertyType::Link("B".into())).optional()),
        ]);
        let expected = r#"-- pgrealm schema (generated; do not edit)

-- class A
CREATE TABLE "a" (
    "id" bigint NOT NULL PRIMARY KEY,
    "b" text
);
-- class B
CREATE TABLE "b" (
    "id" text NOT NULL PRIMARY KEY,
    "a" bigint NOT NULL,
    "parent" text,
    FOREIGN KEY ("a") REFERENCES "a" ("id") DEFERRABLE INITIALLY DEFERRED,
    FOREIGN KEY ("parent") REFERENCES "b" ("id") ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED
);
ALTER TABLE "a" ADD FOREIGN KEY ("b") REFERENCES "b" ("id") ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED;
"#;
        assert_eq!(render_ddl(&schema), expected);
    }

    #[test]
    fn a_referenced_class_declared_later_is_created_first() {
        let schema = Schema::new(vec![
            Class::new("Driver")
                .property(Property::new("id", int()).primary_key())
                .property(Property::new("bus", PropertyType::Link("Bus".into())).optional()),
            Class::new("Bus").property(Property::new("id", int()).primary_key()),
        ]);
        let ddl = render_ddl(&schema);
        let bus = ddl.find("CREATE TABLE \"bus\"").unwrap();
        let driver = ddl.find("CREATE TABLE \"driver\"").unwrap();
        assert!(bus < driver, "{ddl}");
        assert!(!ddl.contains("ALTER TABLE"), "{ddl}");
    }

    #[test]
    fn primitive_lists_overrides_and_custom_types() {
        let schema = Schema::new(vec![Class::new("Stop")
            .property(
                Property::new("code", string())
                    .primary_key()
                    .postgres_type("VARCHAR(8)"),
            )
            .property(Property::new("mood", string()).custom_type("public.mood"))
            .property(
                Property::new(
                    "tags",
                    PropertyType::List(ListItem::Scalar(ScalarType::String)),
                )
                .indexed(),
            )
            .property(Property::new(
                "near",
                PropertyType::List(ListItem::Object("Stop".into())),
            ))]);
        let ddl = render_ddl(&schema);
        assert!(
            ddl.contains("\"code\" character varying(8) NOT NULL PRIMARY KEY"),
            "{ddl}"
        );
        assert!(
            ddl.contains("\"mood\" \"public\".\"mood\" NOT NULL"),
            "{ddl}"
        );
        assert!(
            ddl.contains(
                "CREATE TABLE \"stop_tags\" (\n    \"oid\" character varying(8) NOT NULL,\n    \
             \"idx\" integer NOT NULL,\n    \"value\" text NOT NULL,\n    PRIMARY KEY (\"oid\", \
             \"idx\"),\n    FOREIGN KEY (\"oid\") REFERENCES \"stop\" (\"code\") ON DELETE \
             CASCADE DEFERRABLE INITIALLY DEFERRED\n);\nCREATE INDEX ON \"stop_tags\" (\"value\");"
            ),
            "{ddl}"
        );
        assert!(
            ddl.contains("\"target\" character varying(8) NOT NULL"),
            "{ddl}"
        );
    }

    #[test]
    fn identifiers_are_always_quoted() {
        let schema = Schema::new(vec![Class::new("Odd")
            .table("we\"ird")
            .property(Property::new("id", int()).primary_key().column("select"))]);
        let ddl = render_ddl(&schema);
        assert!(
            ddl.contains("CREATE TABLE \"we\"\"ird\" (\n    \"select\" bigint"),
            "{ddl}"
        );
        assert_eq!(quote_ident(""), "\"\"");
        assert_eq!(quote_literal("x"), "'x'");
    }

    #[test]
    fn per_table_and_add_column_statements() {
        let schema = transit();
        let bus = schema.class("Bus").unwrap();
        let route = schema.class("Route").unwrap();
        let create = render_create_table(&schema, &TableRef::Class(bus));
        assert!(
            create.starts_with("-- class Bus\nCREATE TABLE \"bus\""),
            "{create}"
        );
        assert!(
            create.ends_with(");\nCREATE INDEX ON \"bus\" (\"name\");\n"),
            "{create}"
        );

        let seats = Property::new(
            "seats",
            PropertyType::Scalar(ScalarType::Int(IntWidth::I16)),
        );
        assert_eq!(
            render_add_column(&schema, bus, &seats),
            "ALTER TABLE \"bus\" ADD COLUMN \"seats\" smallint NOT NULL DEFAULT 0;\n\
             ALTER TABLE \"bus\" ALTER COLUMN \"seats\" DROP DEFAULT;\n"
        );
        let depot = Property::new("depot", PropertyType::Link("Route".into())).optional();
        assert_eq!(
            render_add_column(&schema, bus, &depot),
            "ALTER TABLE \"bus\" ADD COLUMN \"depot\" text;\n\
             ALTER TABLE \"bus\" ADD FOREIGN KEY (\"depot\") REFERENCES \"route\" (\"id\") ON \
             DELETE SET NULL DEFERRABLE INITIALLY DEFERRED;\n"
        );
        let stops = Property::new(
            "stops",
            PropertyType::List(ListItem::Scalar(ScalarType::Uuid)),
        );
        let list = render_add_column(&schema, route, &stops);
        assert!(list.starts_with("-- list Route.stops of Uuid\nCREATE TABLE \"route_stops\""));
        assert_eq!(column_sql_type(&schema, &depot), "text");
        assert_eq!(column_sql_type(&schema, &stops), "uuid");
    }

    #[test]
    fn a_schema_with_no_classes_is_just_the_header() {
        assert_eq!(render_ddl(&Schema::default()), format!("{HEADER}\n"));
    }
}
