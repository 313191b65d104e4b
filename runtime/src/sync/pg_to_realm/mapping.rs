//! Mapping: which class and realm a PostgreSQL row belongs to, and its values as realm values.
//!
//! Owns the per-table plan (which column feeds which property, as which type, and the routing
//! columns) and the conversion of one tuple of text values into a [`RowImage`]. It never writes:
//! a value that cannot convert, or a routing value that would make an invalid realm path, is a
//! [`RowError`] with the reason and the raw values, which the apply step turns into a rejection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use pgrealm_schema::pgtext::{parse_key_pg_text, parse_pg_text, PgType};
use pgrealm_schema::{Class, ListItem, PrimaryKey, PropertyType, ScalarType, Schema, Value};

use crate::replication::{ColumnValue, Relation};
use crate::store::{RealmPath, RecordWriter};
use crate::template::PathTemplate;

use super::route::{PgRow, RealmRouter, Route};
use super::types::{builtin_type_name, same_family, target_scalar, CustomTypes};

/// How one column converts.
#[derive(Debug, Clone)]
pub(crate) struct ColumnPlan {
    /// Position in the tuple.
    pub(crate) index: usize,
    /// The realm property it feeds.
    pub(crate) property: String,
    /// That property's position in its class (`usize::MAX` in a placeholder).
    pub(crate) property_index: usize,
    /// The property's label for errors (`Bus.name`).
    pub(crate) label: String,
    /// The PostgreSQL type, normalised once here rather than per value (for [`parse_pg_text`]).
    pub(crate) pg_type: PgType,
    /// What the text reads as.
    pub(crate) read_as: ScalarType,
    /// The property holds a link (to a key of type `read_as`).
    pub(crate) link: bool,
    /// A custom enum type: its labels.
    pub(crate) enum_labels: Option<(String, Arc<HashSet<String>>)>,
    /// A custom type mapped to a realm type other than the property's: why it cannot apply.
    pub(crate) mismatch: Option<String>,
}

/// Given each value [`Mapper::record`] writes, with its property's index in the class.
pub(crate) type SeenValue<'a> = &'a mut dyn FnMut(usize, &Value);

impl ColumnPlan {
    /// Whether `read_value` reads this column's text as it is: a string property that is not
    /// a link, of no custom enum type, and readable.
    fn is_plain_text(&self) -> bool {
        self.read_as == ScalarType::String
            && !self.link
            && self.enum_labels.is_none()
            && self.mismatch.is_none()
    }
}

/// What a published table is to pgrealm.
#[derive(Debug, Clone)]
pub(crate) enum TableKind {
    /// A class's own table.
    Class {
        /// Index of the class in the schema.
        class: usize,
        /// The primary key column.
        key: ColumnPlan,
        /// Every other mapped column.
        columns: Vec<ColumnPlan>,
    },
    /// A list subtable `(oid, idx, target|value)`.
    List {
        /// Index of the owning class.
        class: usize,
        /// The list property.
        property: String,
        /// The `oid` column (owner key).
        owner: ColumnPlan,
        /// The `idx` column.
        idx: usize,
        /// The `target`/`value` column.
        item: ColumnPlan,
    },
    /// pgrealm's own marker table: echo detection only.
    Marker,
    /// Not mapped: ignored.
    Ignored,
}

/// The plan of one relation (rebuilt when PostgreSQL sends a new Relation message).
#[derive(Debug, Clone)]
pub(crate) struct TablePlan {
    pub(crate) table: String,
    pub(crate) columns: Vec<String>,
    pub(crate) kind: TableKind,
    /// A mapped table whose shape pgrealm cannot use: every change of it is rejected with this.
    pub(crate) broken: Option<String>,
    /// A path template's captures and the positions of their columns (`None`: no such column).
    pub(crate) route_columns: Vec<(String, Option<usize>)>,
    /// The realm paths rendered for this table's rows so far.
    pub(crate) paths: PathCache,
    /// How a row of this class table makes its object's record directly, when it can (see
    /// [`Mapper::record_fields`]).
    pub(crate) record_fields: Option<RecordFields>,
}

impl TablePlan {
    /// Whether a row of this table carries the property with index `property` of its class
    /// (a column feeds it; the key's among them), unless the value is an unchanged TOAST one.
    pub(crate) fn carries(&self, property: usize) -> bool {
        match &self.kind {
            TableKind::Class { key, columns, .. } => {
                key.property_index == property
                    || columns.iter().any(|c| c.property_index == property)
            }
            _ => false,
        }
    }
}

/// Realm paths a template rendered for a table's rows, each parsed once: rows of one realm
/// render the same path, and parsing it again per row was a visible share of the mapping's
/// CPU. Bounded: it is emptied when it holds [`PathCache::MAX`] paths (about 100 bytes each).
#[derive(Default)]
pub(crate) struct PathCache(Mutex<Paths>);

#[derive(Default)]
struct Paths {
    parsed: HashMap<String, RealmPath>,
    /// Where each row's path is rendered: a path seen before costs no allocation.
    rendered: String,
}

impl PathCache {
    /// Paths kept at most: more than the realms most mappings route to (one per user is
    /// common), or a table's rows spread over them would parse every path again, and empty the
    /// cache every `MAX` rows. With 4,096, a load over 10,000 realms spent 28 % of its mapping
    /// thread routing rows.
    const MAX: usize = 65_536;

    /// `template` rendered with `value_of` and parsed, from the cache when this path was parsed
    /// before (a refused path is not kept: it is parsed again, to give the same error).
    fn render<V: AsRef<str>>(
        &self,
        template: &PathTemplate,
        value_of: impl Fn(&str) -> Option<V>,
    ) -> Result<RealmPath, String> {
        let mut paths = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let Paths { parsed, rendered } = &mut *paths;
        template.render_into(rendered, value_of)?;
        if let Some(path) = parsed.get(rendered.as_str()) {
            return Ok(path.clone());
        }
        let path = RealmPath::parse(rendered).map_err(|e| e.to_string())?;
        if parsed.len() >= Self::MAX {
            parsed.clear();
        }
        parsed.insert(rendered.clone(), path.clone());
        Ok(path)
    }
}

impl Clone for PathCache {
    /// A copy starts empty: the cache is only a saving.
    fn clone(&self) -> Self {
        PathCache::default()
    }
}

impl std::fmt::Debug for PathCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.0.lock().map(|p| p.parsed.len()).unwrap_or_default();
        f.debug_struct("PathCache").field("paths", &len).finish()
    }
}

/// A row converted to realm values.
#[derive(Debug, Clone)]
pub(crate) struct RowImage {
    pub(crate) key: PrimaryKey,
    /// Properties the change carried.
    pub(crate) values: BTreeMap<String, Value>,
    /// Properties whose TOASTed value did not change (not carried).
    pub(crate) unchanged: Vec<String>,
}

/// Where each property of a class-table row's record comes from, in property-name order (see
/// [`Mapper::record_fields`]).
#[derive(Debug)]
pub(crate) struct RecordFields {
    /// Each property's name, where its value comes from, and its index in the class.
    fields: Vec<(String, Field, usize)>,
    /// The length of the last record written: the next one's first guess.
    last_len: AtomicUsize,
}

impl Clone for RecordFields {
    fn clone(&self) -> Self {
        RecordFields {
            fields: self.fields.clone(),
            last_len: AtomicUsize::new(self.last_len.load(Ordering::Relaxed)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Field {
    Key,
    /// An index into the plan's other columns.
    Column(usize),
}

/// Why a row cannot be applied.
#[derive(Debug, Clone)]
pub(crate) struct RowError {
    pub(crate) key: Option<String>,
    pub(crate) reason: String,
}

impl RowError {
    fn new(key: Option<&PrimaryKey>, reason: impl Into<String>) -> Self {
        RowError {
            key: key.map(|k| k.to_string()),
            reason: reason.into(),
        }
    }
}

/// The raw values of a tuple as JSON (column → text, null, or `"(unchanged TOAST)"`).
pub(crate) fn raw_values(columns: &[String], values: &[ColumnValue]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (name, value) in columns.iter().zip(values) {
        let v = match value {
            ColumnValue::Null => serde_json::Value::Null,
            ColumnValue::UnchangedToast => serde_json::Value::String("(unchanged TOAST)".into()),
            ColumnValue::Text(bytes) | ColumnValue::Binary(bytes) => {
                let text = String::from_utf8_lossy(bytes);
                let text: String = if text.chars().count() > 1000 {
                    text.chars().take(1000).chain("…".chars()).collect()
                } else {
                    text.into_owned()
                };
                serde_json::Value::String(text)
            }
        };
        map.insert(name.clone(), v);
    }
    serde_json::Value::Object(map)
}

/// The schema side of the mapping, shared by the stream and the initial load.
#[derive(Debug, Clone)]
pub(crate) struct Mapper {
    pub(crate) schema: Schema,
    pub(crate) router: RealmRouter,
    pub(crate) custom: CustomTypes,
}

impl Mapper {
    /// The plan of a relation; `type_name` names non-built-in type oids.
    pub(crate) fn plan(
        &self,
        relation: &Relation,
        type_name: &dyn Fn(u32) -> Option<String>,
    ) -> TablePlan {
        let columns: Vec<String> = relation.columns.iter().map(|c| c.name.clone()).collect();
        let mut plan = TablePlan {
            table: format!("{}.{}", relation.namespace, relation.name),
            columns,
            kind: TableKind::Ignored,
            broken: None,
            route_columns: Vec::new(),
            paths: PathCache::default(),
            record_fields: None,
        };
        if let RealmRouter::Template(template) = &self.router {
            plan.route_columns = template
                .captures()
                .into_iter()
                .map(|name| {
                    let index = plan.columns.iter().position(|c| c == name);
                    (name.to_owned(), index)
                })
                .collect();
        }
        if relation.namespace == "pgrealm" && relation.name == "marker" {
            plan.kind = TableKind::Marker;
            return plan;
        }
        if relation.namespace != "public" {
            return plan;
        }
        let pg_type = |i: usize| -> String {
            let column = &relation.columns[i];
            builtin_type_name(column.type_oid)
                .map(str::to_owned)
                .or_else(|| type_name(column.type_oid))
                .unwrap_or_else(|| format!("oid {}", column.type_oid))
        };
        let schema = &self.schema;
        for (ci, class) in schema.classes.iter().enumerate() {
            if class.table == relation.name {
                match self.class_plan(ci, class, relation, &pg_type) {
                    Ok(kind) => plan.kind = kind,
                    Err(reason) => {
                        plan.kind = TableKind::Class {
                            class: ci,
                            key: placeholder(),
                            columns: Vec::new(),
                        };
                        plan.broken = Some(reason);
                    }
                }
                plan.record_fields = self.record_fields(&plan);
                return plan;
            }
            for property in class.list_properties() {
                if class.list_table(property) == relation.name {
                    match self.list_plan(ci, class, &property.name, relation, &pg_type) {
                        Ok(kind) => plan.kind = kind,
                        Err(reason) => {
                            plan.kind = TableKind::List {
                                class: ci,
                                property: property.name.clone(),
                                owner: placeholder(),
                                idx: 0,
                                item: placeholder(),
                            };
                            plan.broken = Some(reason);
                        }
                    }
                    return plan;
                }
            }
        }
        plan
    }

    fn column_plan(
        &self,
        class: &Class,
        property: &pgrealm_schema::Property,
        index: usize,
        pg_type: String,
        property_type: ScalarType,
        link: bool,
    ) -> ColumnPlan {
        let label = format!("{}.{}", class.name, property.name);
        let custom_name = property
            .custom_type
            .clone()
            .or_else(|| self.custom.target(&pg_type).map(|_| pg_type.clone()));
        let mut plan = ColumnPlan {
            index,
            property: property.name.clone(),
            property_index: class
                .properties
                .iter()
                .position(|p| p.name == property.name)
                .expect("a property of the class"),
            label: label.clone(),
            read_as: property_type,
            pg_type: PgType::new(&pg_type),
            link,
            enum_labels: None,
            mismatch: None,
        };
        if let Some(custom) = custom_name {
            if let Some(target) = self.custom.target(&custom) {
                match target_scalar(target) {
                    Some(t) if same_family(t, property_type) => {}
                    _ => {
                        plan.mismatch = Some(format!(
                            "custom_postgres_types maps {custom} to {target}, but `{label}` is {}",
                            property_type.realm_name()
                        ))
                    }
                }
            }
            if let Some(labels) = self.custom.labels(&custom) {
                plan.enum_labels = Some((custom, labels));
            }
        }
        plan
    }

    fn class_plan(
        &self,
        class_index: usize,
        class: &Class,
        relation: &Relation,
        pg_type: &dyn Fn(usize) -> String,
    ) -> Result<TableKind, String> {
        let schema = &self.schema;
        let mut key = None;
        let mut columns = Vec::new();
        for property in class.column_properties() {
            let Some(index) = relation.column_index(&property.column) else {
                if property.primary_key {
                    return Err(format!(
                        "table {} has no column {:?} for the primary key `{}.{}`",
                        relation.name, property.column, class.name, property.name
                    ));
                }
                // A column the table lacks is simply not synced (the catalog check reports it).
                continue;
            };
            let ty = schema.column_type(property).ok_or_else(|| {
                format!(
                    "`{}.{}` links to a class without a primary key",
                    class.name, property.name
                )
            })?;
            let link = matches!(property.ty, PropertyType::Link(_));
            let plan = self.column_plan(class, property, index, pg_type(index), ty, link);
            if property.primary_key {
                key = Some(plan);
            } else {
                columns.push(plan);
            }
        }
        let key = key.ok_or_else(|| format!("class {} has no primary key", class.name))?;
        Ok(TableKind::Class {
            class: class_index,
            key,
            columns,
        })
    }

    fn list_plan(
        &self,
        class_index: usize,
        class: &Class,
        property_name: &str,
        relation: &Relation,
        pg_type: &dyn Fn(usize) -> String,
    ) -> Result<TableKind, String> {
        let schema = &self.schema;
        let property = class
            .property_named(property_name)
            .expect("a list property of the class");
        let PropertyType::List(item) = &property.ty else {
            return Err(format!("`{}.{property_name}` is not a list", class.name));
        };
        let key_property = class
            .primary_key()
            .ok_or_else(|| format!("class {} has no primary key", class.name))?;
        let key_type = schema
            .column_type(key_property)
            .ok_or_else(|| format!("class {} has no key type", class.name))?;
        let column = |name: &str| {
            relation
                .column_index(name)
                .ok_or_else(|| format!("list table {} has no column {name:?}", relation.name))
        };
        let owner_index = column("oid")?;
        let idx = column("idx")?;
        let (item_column, link) = match item {
            ListItem::Object(_) => ("target", true),
            ListItem::Scalar(_) => ("value", false),
        };
        let item_index = column(item_column)?;
        let item_type = schema.list_item_type(item).ok_or_else(|| {
            format!(
                "`{}.{property_name}` lists a class without a primary key",
                class.name
            )
        })?;
        let owner = ColumnPlan {
            index: owner_index,
            property: key_property.name.clone(),
            property_index: class
                .properties
                .iter()
                .position(|p| p.name == key_property.name)
                .expect("the key is a property of the class"),
            label: format!("{}.{property_name} (oid)", class.name),
            pg_type: PgType::new(&pg_type(owner_index)),
            read_as: key_type,
            link: false,
            enum_labels: None,
            mismatch: None,
        };
        let mut item = self.column_plan(
            class,
            property,
            item_index,
            pg_type(item_index),
            item_type,
            link,
        );
        item.label = format!("{}.{property_name}", class.name);
        Ok(TableKind::List {
            class: class_index,
            property: property_name.to_owned(),
            owner,
            idx,
            item,
        })
    }

    /// Convert one class-table tuple. `new` may hold `UnchangedToast` values (left out).
    pub(crate) fn row_image(
        &self,
        plan: &TablePlan,
        values: &[ColumnValue],
    ) -> Result<RowImage, RowError> {
        let TableKind::Class {
            class,
            key,
            columns,
        } = &plan.kind
        else {
            return Err(RowError::new(None, "not a class table"));
        };
        let class = &self.schema.classes[*class];
        let key = read_key(key, values).map_err(|reason| RowError::new(None, reason))?;
        if let Some(broken) = &plan.broken {
            return Err(RowError::new(Some(&key), broken.clone()));
        }
        let mut out = RowImage {
            key,
            values: BTreeMap::new(),
            unchanged: Vec::new(),
        };
        let key_property = class.primary_key().expect("planned with a key");
        out.values
            .insert(key_property.name.clone(), out.key.to_value());
        for column in columns {
            let value = match values.get(column.index) {
                Some(ColumnValue::UnchangedToast) => {
                    out.unchanged.push(column.property.clone());
                    continue;
                }
                Some(v) => v,
                None => &ColumnValue::Null,
            };
            let value = read_value(column, value)
                .map_err(|reason| RowError::new(Some(&out.key), reason))?;
            let property = &class.properties[column.property_index];
            let value = if matches!(value, Value::Null) {
                // NULL is the one value `read_value` makes that the property may refuse (or, for
                // an optional property, keep): the schema's check says which, with its message.
                pgrealm_schema::value::check_value(&self.schema, class, property, value)
                    .map_err(|e| RowError::new(Some(&out.key), e.to_string()))?
            } else {
                // Any other value was read as exactly the property's type (`read_as` is the
                // property's scalar type, or its link target's key type) and range-checked
                // against its width, so `check_value` would return it unchanged: not run per
                // value. Debug builds (the tests) still check that claim.
                debug_assert!(
                    matches!(
                        pgrealm_schema::value::check_value(&self.schema, class, property, value.clone()),
                        Ok(checked) if checked.same_as(&value)
                    ),
                    "{}: {value:?}",
                    column.label
                );
                value
            };
            out.values.insert(column.property.clone(), value);
        }
        Ok(out)
    }

    /// How rows of `plan`'s table make records without a map of their values: when a column
    /// feeds every property of the class (none a list, which has no column) and the table's
    /// shape is usable.
    pub(crate) fn record_fields(&self, plan: &TablePlan) -> Option<RecordFields> {
        let TableKind::Class {
            class,
            key,
            columns,
        } = &plan.kind
        else {
            return None;
        };
        if plan.broken.is_some() {
            return None;
        }
        let mut fields = Vec::new();
        for (index, property) in self.schema.classes[*class].properties.iter().enumerate() {
            let field = if key.property_index == index {
                Field::Key
            } else {
                Field::Column(columns.iter().position(|c| c.property_index == index)?)
            };
            fields.push((property.name.clone(), field, index));
        }
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        Some(RecordFields {
            fields,
            last_len: AtomicUsize::new(0),
        })
    }

    /// A class-table row (`fields` from [`Mapper::record_fields`] for its plan) as its key and
    /// its object's record, each value converted and checked as [`Mapper::row_image`] does;
    /// `None` when that finds anything to say (a value that does not convert, a NULL its
    /// property refuses, an unchanged TOAST value): `row_image` then says it. `seen` is given
    /// each value with its property's index in the class; without it, plain text columns go
    /// into the record without a `Value` made of them.
    pub(crate) fn record(
        &self,
        plan: &TablePlan,
        fields: &RecordFields,
        values: &[ColumnValue],
        mut seen: Option<SeenValue<'_>>,
    ) -> Option<(PrimaryKey, Vec<u8>)> {
        let TableKind::Class {
            class,
            key: key_plan,
            columns,
        } = &plan.kind
        else {
            return None;
        };
        let class = &self.schema.classes[*class];
        let key = read_key(key_plan, values).ok()?;
        let mut record =
            RecordWriter::new(fields.last_len.load(Ordering::Relaxed), fields.fields.len());
        for (name, field, index) in &fields.fields {
            let value = match *field {
                Field::Key => key.to_value(),
                Field::Column(c) => {
                    let column = &columns[c];
                    let value = values.get(column.index).unwrap_or(&ColumnValue::Null);
                    if seen.is_none() && column.is_plain_text() {
                        if let ColumnValue::Text(_) = value {
                            // What `read_value` makes of it, as the record holds it.
                            record.push_str(name, value.as_text()?);
                            continue;
                        }
                    }
                    match read_value(column, value).ok()? {
                        Value::Null => {
                            let property = &class.properties[column.property_index];
                            pgrealm_schema::value::check_value(
                                &self.schema,
                                class,
                                property,
                                Value::Null,
                            )
                            .ok()?
                        }
                        value => value,
                    }
                }
            };
            if let Some(seen) = &mut seen {
                seen(*index, &value);
            }
            record.push(name, &value);
        }
        let record = record.finish();
        fields.last_len.store(record.len(), Ordering::Relaxed);
        Some((key, record))
    }

    /// A class row's [`record`](Self::record) and the realm it goes to; `None` when it does
    /// not convert or route cleanly (the general way then says why).
    pub(crate) fn routed_record(
        &self,
        plan: &TablePlan,
        fields: &RecordFields,
        values: &[ColumnValue],
        seen: Option<SeenValue<'_>>,
    ) -> Option<(PrimaryKey, Vec<u8>, RealmPath)> {
        let (key, record) = self.record(plan, fields, values, seen)?;
        let Ok(Route::Path(target)) = self.route(plan, values) else {
            return None;
        };
        Some((key, record, target))
    }

    /// The key of a class-table tuple (an old key tuple of a delete or key change).
    pub(crate) fn key_of(
        &self,
        plan: &TablePlan,
        values: &[ColumnValue],
    ) -> Result<PrimaryKey, String> {
        match &plan.kind {
            TableKind::Class { key, .. } => read_key(key, values),
            _ => Err("not a class table".into()),
        }
    }

    /// Where a class row goes.
    pub(crate) fn route(&self, plan: &TablePlan, values: &[ColumnValue]) -> Result<Route, String> {
        match &self.router {
            RealmRouter::Template(template) => {
                // What `PgRow::get`/`is_unchanged` would find, by the positions in the plan.
                let value = |index: Option<usize>| index.and_then(|i| values.get(i));
                if plan
                    .route_columns
                    .iter()
                    .any(|(_, i)| matches!(value(*i), Some(ColumnValue::UnchangedToast)))
                {
                    return Ok(Route::Unchanged);
                }
                plan.paths
                    .render(template, |name| {
                        let (_, index) = plan.route_columns.iter().find(|(n, _)| n == name)?;
                        value(*index).and_then(ColumnValue::as_text)
                    })
                    .map(Route::Path)
            }
            RealmRouter::Closure(f) => {
                let table = plan.table.rsplit('.').next().unwrap_or(&plan.table);
                f(table, &PgRow::new(&plan.columns, values)).map(Route::Path)
            }
        }
    }

    /// A list subtable row: (owner key, idx, item value); `None` item for an old-key tuple.
    pub(crate) fn list_entry(
        &self,
        plan: &TablePlan,
        values: &[ColumnValue],
        with_item: bool,
    ) -> Result<(PrimaryKey, i64, Option<Value>), RowError> {
        let TableKind::List {
            owner, idx, item, ..
        } = &plan.kind
        else {
            return Err(RowError::new(None, "not a list table"));
        };
        let owner_key = read_key(owner, values).map_err(|r| RowError::new(None, r))?;
        if let Some(broken) = &plan.broken {
            return Err(RowError::new(Some(&owner_key), broken.clone()));
        }
        let idx = values
            .get(*idx)
            .and_then(ColumnValue::as_text)
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or_else(|| RowError::new(Some(&owner_key), "the list row has no integer idx"))?;
        if !with_item {
            return Ok((owner_key, idx, None));
        }
        let value = match values.get(item.index) {
            Some(ColumnValue::UnchangedToast) => None,
            Some(v) => Some(
                read_value(item, v).map_err(|reason| RowError::new(Some(&owner_key), reason))?,
            ),
            None => Some(Value::Null),
        };
        if let Some(Value::Null) = value {
            return Err(RowError::new(
                Some(&owner_key),
                format!("list `{}` cannot hold NULL (idx {idx})", item.label),
            ));
        }
        Ok((owner_key, idx, value))
    }
}

fn placeholder() -> ColumnPlan {
    ColumnPlan {
        index: usize::MAX,
        property: String::new(),
        property_index: usize::MAX,
        label: String::new(),
        pg_type: PgType::new(""),
        read_as: ScalarType::String,
        link: false,
        enum_labels: None,
        mismatch: None,
    }
}

fn read_key(plan: &ColumnPlan, values: &[ColumnValue]) -> Result<PrimaryKey, String> {
    match values.get(plan.index) {
        Some(ColumnValue::Text(_)) => {
            let text = values[plan.index]
                .as_text()
                .ok_or_else(|| format!("the key of {} is not UTF-8", plan.label))?;
            parse_key_pg_text(plan.read_as, &plan.pg_type, text, &plan.label)
                .map_err(|e| e.to_string())
        }
        Some(ColumnValue::Null) | None => Err(format!("the key {} is NULL", plan.label)),
        Some(ColumnValue::UnchangedToast) => Err(format!(
            "the key {} was not sent (unchanged TOAST)",
            plan.label
        )),
        Some(ColumnValue::Binary(_)) => Err("binary values are not requested".into()),
    }
}

fn read_value(plan: &ColumnPlan, value: &ColumnValue) -> Result<Value, String> {
    let text = match value {
        ColumnValue::Null => return Ok(Value::Null),
        ColumnValue::Text(_) => value
            .as_text()
            .ok_or_else(|| format!("the value of {} is not UTF-8", plan.label))?,
        ColumnValue::UnchangedToast => return Err("unchanged TOAST value".into()),
        ColumnValue::Binary(_) => return Err("binary values are not requested".into()),
    };
    if let Some(mismatch) = &plan.mismatch {
        return Err(mismatch.clone());
    }
    if let Some((type_name, labels)) = &plan.enum_labels {
        if !labels.contains(text) {
            return Err(format!(
                "unknown enum label {text:?} of type {type_name} for `{}`",
                plan.label
            ));
        }
    }
    if plan.link {
        return parse_key_pg_text(plan.read_as, &plan.pg_type, text, &plan.label)
            .map(Value::Link)
            .map_err(|e| e.to_string());
    }
    parse_pg_text(plan.read_as, &plan.pg_type, text, &plan.label).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_cache_gives_what_parsing_gives_and_stays_bounded() {
        let cache = PathCache::default();
        let template = PathTemplate::parse("/{user_id}/bench").unwrap();
        let user = |id: &'static str| move |_: &str| Some(id);
        let first = cache.render(&template, user("u1")).unwrap();
        assert_eq!(first, RealmPath::parse("/u1/bench").unwrap());
        assert_eq!(cache.render(&template, user("u1")).unwrap(), first);
        // A refused path is refused each time, with the parser's own message, and not kept.
        let refused = RealmPath::parse("/../bench").unwrap_err().to_string();
        for _ in 0..2 {
            assert_eq!(cache.render(&template, user("..")), Err(refused.clone()));
        }
        // A value the template refuses, with the template's message.
        assert!(cache
            .render(&template, user("a/b"))
            .unwrap_err()
            .contains("cannot be part of a realm path"));
        for i in 0..PathCache::MAX + 10 {
            let id = format!("u{i}");
            assert_eq!(
                cache
                    .render(&template, |_: &str| Some(id.as_str()))
                    .unwrap(),
                RealmPath::parse(&format!("/{id}/bench")).unwrap()
            );
        }
        assert!(cache.0.lock().unwrap().parsed.len() <= PathCache::MAX);
    }
}
