//! The SQL side of realm → PostgreSQL: one connection that turns changesets into one SQL
//! transaction per batch, with the progress rows and the echo mark inside it.
//!
//! Instructions run in order, with two groupings that keep their meaning: a run of consecutive
//! creates becomes upserts of up to 1,000 rows, each column bound as one array (and one
//! rewrite of their lists per subtable), and consecutive list inserts at consecutive indices
//! (or erases at one index) shift the remaining items once. Indices move through negative
//! values because `PRIMARY KEY (oid, idx)` is checked row by row. Statements are prepared once
//! per SQL text (table and column set) and cached for the connection's life; the statements of
//! a flush are sent together ([`Writer::pipeline`]), and a transaction's BEGIN and progress rows
//! travel with them, so a small transaction costs two round trips (its statements, COMMIT).
//! Values are always bound ([`PgValue`], [`ColumnArray`]), identifiers always quoted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use futures_util::future::maybe_done;

use pgrealm_schema::ddl::quote_ident;
use pgrealm_schema::{Class, Object, PrimaryKey, Schema, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::bind::{ColumnArray, RefusedValue};
use super::echo::{set_up_echo_mark, EchoMark, Marker};
use super::mapping::{Extra, RealmMapping, Target};
use super::refusal::{classify, Failure};
use super::sql::{
    key_column, key_object, list_target, placeholder, tsvector_cast, unnest_list_insert_sql,
    unnest_upsert_sql, upsert_sql, Creates, ListGroup, ListTarget, RowGroup,
};
use super::RealmToPgError;
use crate::pg::PgValue;
use crate::replication::PgConnectOptions;
use crate::store::{Changeset, Instruction, RealmPath};

/// Bind parameters per statement we build, well under the protocol's 65,535.
const MAX_PARAMS: usize = 30_000;
/// Rows per multi-row statement, and per array-bound statement (several of which are sent
/// without waiting: see [`Writer::pipeline`]).
const MAX_ROWS: usize = 1_000;
/// Prepared statements kept per connection before the cache starts over.
const STATEMENT_CACHE: usize = 512;

/// `parameter 1`, `parameter 2`, …: how bound values are named in conversion errors, made
/// once rather than per statement.
fn parameter_labels() -> &'static [String] {
    static LABELS: OnceLock<Vec<String>> = OnceLock::new();
    LABELS.get_or_init(|| {
        (1..=MAX_PARAMS + 64)
            .map(|i| format!("parameter {i}"))
            .collect()
    })
}

/// How list rows' values are named in errors.
const LIST_LABELS: [&str; 3] = ["the list's owner", "the list index", "a list item"];

/// A bound parameter of a pipelined statement.
type Param<'a> = Box<dyn ToSql + Sync + Send + 'a>;

/// One statement of a [`Writer::pipeline`]: prepared, with its parameters bound.
struct Job<'a> {
    statement: Statement,
    params: Vec<Param<'a>>,
    /// What it does, for errors.
    action: &'static str,
}

impl Job<'_> {
    async fn execute(&self, client: &Client) -> Result<u64, tokio_postgres::Error> {
        let params: Vec<&(dyn ToSql + Sync)> = self
            .params
            .iter()
            .map(|p| &**p as &(dyn ToSql + Sync))
            .collect();
        client.execute(&self.statement, &params).await
    }
}

/// One changeset of a batch, and whether its data was already dealt with (a compensated
/// refusal whose progress row is all that is left to write).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Item<'a> {
    pub(crate) changeset: &'a Changeset,
    pub(crate) progress_only: bool,
}

/// What a batch did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Committed with its progress rows.
    Written,
    /// A progress row was already at or past a changeset of the batch (it was committed before
    /// a connection loss, or by another writer): nothing was written; reload the progress.
    AlreadyApplied,
}

/// The writer's connection and caches.
pub(crate) struct Writer {
    pub(crate) client: Client,
    schema: Arc<Schema>,
    mapping: RealmMapping,
    statements: HashMap<String, Statement>,
    column_types: HashMap<(String, String), String>,
    /// Per table: each column's type as an array parameter names its elements (`None`: a type
    /// without an array form); `None` for a table the catalog does not have.
    array_types: HashMap<String, Option<HashMap<String, Option<String>>>>,
    marker: Marker,
    /// A transaction is open on our side but its BEGIN is not sent yet.
    begin_pending: bool,
    /// The object whose value the last batch's encoder refused, when it could name one.
    refused_object: Option<(String, PrimaryKey)>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("mark", &self.marker.mark())
            .field("statements", &self.statements.len())
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Connect, and set up the echo mark of the session.
    pub(crate) async fn connect(
        options: &PgConnectOptions,
        schema: Schema,
        mapping: RealmMapping,
    ) -> Result<Writer, RealmToPgError> {
        let client = options.connect_sql().await?;
        let mark = set_up_echo_mark(&client).await;
        Ok(Writer {
            client,
            schema: Arc::new(schema),
            mapping,
            statements: HashMap::new(),
            column_types: HashMap::new(),
            array_types: HashMap::new(),
            marker: Marker::new(mark),
            begin_pending: false,
            refused_object: None,
        })
    }

    /// The object whose value the encoder refused in the last batch, when it named one (a
    /// refusal by the server names its rows in the error's detail instead).
    pub(crate) fn refused_object(&self) -> Option<&(String, PrimaryKey)> {
        self.refused_object.as_ref()
    }

    /// How this session's transactions are recognised in the WAL.
    pub(crate) fn echo_mark(&self) -> EchoMark {
        self.marker.mark()
    }

    pub(crate) fn schema(&self) -> &Schema {
        &self.schema
    }

    pub(crate) fn mapping(&self) -> &RealmMapping {
        &self.mapping
    }

    /// Forget cached column types and statements (after a schema change).
    pub(crate) fn forget_catalog(&mut self) {
        self.column_types.clear();
        self.array_types.clear();
        self.statements.clear();
    }

    /// Every realm's progress row.
    pub(crate) async fn load_progress(&self) -> Result<HashMap<RealmPath, u64>, RealmToPgError> {
        let rows = self
            .client
            .query("SELECT realm_path, version FROM pgrealm.progress", &[])
            .await
            .map_err(|e| RealmToPgError::sql("reading pgrealm.progress", e))?;
        let mut out = HashMap::new();
        for row in rows {
            let path: String = row.get(0);
            let version: i64 = row.get(1);
            // A row for a path that is not a realm path cannot have been written by us.
            if let Ok(path) = RealmPath::parse(&path) {
                out.insert(path, version.max(0) as u64);
            }
        }
        Ok(out)
    }

    /// Write `items` in one transaction with their progress rows.
    pub(crate) async fn write_batch(&mut self, items: &[Item<'_>]) -> Result<Outcome, Failure> {
        // BEGIN goes out with the transaction's first statements (see `pipeline`), not on a
        // round trip of its own.
        self.begin_pending = true;
        self.refused_object = None;
        let result = self.write_in_transaction(items).await;
        let begun = !std::mem::replace(&mut self.begin_pending, false);
        match result {
            Ok(Outcome::Written) => {
                self.client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| classify("committing", e))?;
                Ok(Outcome::Written)
            }
            other => {
                // After a failed statement the server only accepts ROLLBACK; a lost connection
                // rolls back by itself.
                if begun {
                    let _ = self.client.batch_execute("ROLLBACK").await;
                }
                other
            }
        }
    }

    async fn write_in_transaction(&mut self, items: &[Item<'_>]) -> Result<Outcome, Failure> {
        let mut creates = Creates::default();
        let mut progress: BTreeMap<&RealmPath, u64> = BTreeMap::new();
        for item in items {
            let cs = item.changeset;
            let v = progress.entry(&cs.realm).or_insert(0);
            *v = (*v).max(cs.version);
            if item.progress_only {
                continue;
            }
            let mut i = 0;
            while i < cs.instructions.len() {
                i += self
                    .instruction(&cs.realm, &cs.instructions[i..], &mut creates)
                    .await?;
            }
        }
        // The progress rows go in the same pipeline as the last creates. One statement text
        // for any number of realms, so it is prepared once.
        let sql = "INSERT INTO pgrealm.progress (realm_path, version) \
                   SELECT * FROM unnest($1::text[], $2::bigint[]) \
                   ON CONFLICT (realm_path) DO UPDATE SET version = EXCLUDED.version \
                   WHERE pgrealm.progress.version < EXCLUDED.version";
        let paths: Vec<&str> = progress.keys().map(|p| p.as_str()).collect();
        let versions: Vec<i64> = progress.values().map(|v| *v as i64).collect();
        let mut tail = vec![Job {
            statement: self.statement(sql).await?,
            params: vec![Box::new(paths), Box::new(versions)],
            action: "writing pgrealm.progress",
        }];
        // The echo mark, when it is a marker row, in the same pipeline too.
        for sql in self.marker.statements() {
            tail.push(Job {
                statement: self.statement(sql).await?,
                params: Vec::new(),
                action: "marking the transaction in pgrealm.marker",
            });
        }
        let written = self.flush_creates_then(&mut creates, tail).await?;
        // Fewer rows than realms: a progress row was already at or past its version.
        if written.first().copied().unwrap_or(0) as usize != progress.len() {
            return Ok(Outcome::AlreadyApplied);
        }
        Ok(Outcome::Written)
    }

    /// Handle the instruction at the head of `rest` (and the ones grouped with it); returns how
    /// many it consumed.
    async fn instruction(
        &mut self,
        realm: &RealmPath,
        rest: &[Instruction],
        creates: &mut Creates,
    ) -> Result<usize, Failure> {
        let head = &rest[0];
        if !matches!(head, Instruction::Create { .. }) {
            // Only creates are grouped; anything else keeps its place after them.
            self.flush_creates(creates).await?;
        }
        match head {
            Instruction::AddClass { .. } | Instruction::AddProperty { .. } => Ok(1),
            Instruction::Create { class, key, values } => {
                self.buffer_create(realm, class, key, values, creates)
                    .await?;
                Ok(1)
            }
            Instruction::Set { class, key, .. } => {
                // Every consecutive set of this object: one UPDATE of the changed columns.
                let run = rest
                    .iter()
                    .take_while(|i| {
                        matches!(i, Instruction::Set { class: c, key: k, .. } if c == class && k == key)
                    })
                    .count();
                let mut object = key_object(&self.schema, class, key);
                let mut sets = Vec::new();
                for ins in &rest[..run] {
                    if let Instruction::Set { property, new, .. } = ins {
                        object.values.insert(property.clone(), new.clone());
                        sets.push((property.clone(), new.clone()));
                    }
                }
                self.update(realm, class, key, &object, sets).await?;
                Ok(run)
            }
            Instruction::Delete { class, key } => {
                let Some((class_def, target)) = self.target_of_key(realm, class, key) else {
                    return Ok(1);
                };
                let key_column = key_column(&class_def)?;
                let mut sql = format!(
                    "DELETE FROM {} WHERE {} = $1",
                    quote_ident(&target.table),
                    quote_ident(&key_column)
                );
                let key_value = key.to_value();
                let mut values = vec![(key_value, None)];
                self.where_extras(&target, &mut sql, &mut values).await?;
                self.run(&sql, &values, "deleting").await?;
                Ok(1)
            }
            Instruction::ListSet {
                class,
                key,
                property,
                index,
                new,
                ..
            } => {
                let Some(list) = self.list_of(realm, class, key, property)? else {
                    return Ok(1);
                };
                let sql = format!(
                    "UPDATE {} SET {} = $3 WHERE \"oid\" = $1 AND \"idx\" = $2",
                    quote_ident(&list.table),
                    quote_ident(list.item_column)
                );
                let values = [
                    (key.to_value(), None),
                    (Value::Int(*index as i64), None),
                    (new.clone(), None),
                ];
                self.run(&sql, &values, "setting a list item").await?;
                Ok(1)
            }
            Instruction::ListInsert {
                class,
                key,
                property,
                index,
                ..
            } => {
                // Inserts at index, index + 1, …: shift the tail once, then insert them all.
                let run = rest
                    .iter()
                    .enumerate()
                    .take_while(|(n, i)| {
                        matches!(i, Instruction::ListInsert { class: c, key: k, property: p, index: at, .. }
                            if c == class && k == key && p == property && *at == index + n)
                    })
                    .count()
                    .min(MAX_ROWS);
                let Some(list) = self.list_of(realm, class, key, property)? else {
                    return Ok(run);
                };
                let owner = key.to_value();
                self.shift(&list, &owner, *index, run as i64).await?;
                let items: Vec<Value> = rest[..run]
                    .iter()
                    .filter_map(|i| match i {
                        Instruction::ListInsert { value, .. } => Some(value.clone()),
                        _ => None,
                    })
                    .collect();
                self.insert_items(&list.table, list.item_column, &owner, *index, items)
                    .await?;
                Ok(run)
            }
            Instruction::ListErase {
                class,
                key,
                property,
                index,
                ..
            } => {
                let run = rest
                    .iter()
                    .take_while(|i| {
                        matches!(i, Instruction::ListErase { class: c, key: k, property: p, index: at, .. }
                            if c == class && k == key && p == property && at == index)
                    })
                    .count();
                let Some(list) = self.list_of(realm, class, key, property)? else {
                    return Ok(run);
                };
                let owner = key.to_value();
                let sql = format!(
                    "DELETE FROM {} WHERE \"oid\" = $1 AND \"idx\" >= $2 AND \"idx\" < $3",
                    quote_ident(&list.table)
                );
                let values = [
                    (owner.clone(), None),
                    (Value::Int(*index as i64), None),
                    (Value::Int((*index + run) as i64), None),
                ];
                self.run(&sql, &values, "erasing list items").await?;
                self.shift(&list, &owner, index + run, -(run as i64))
                    .await?;
                Ok(run)
            }
            Instruction::ListClear {
                class,
                key,
                property,
            } => {
                let Some(list) = self.list_of(realm, class, key, property)? else {
                    return Ok(1);
                };
                let sql = format!(
                    "DELETE FROM {} WHERE \"oid\" = $1",
                    quote_ident(&list.table)
                );
                self.run(&sql, &[(key.to_value(), None)], "clearing a list")
                    .await?;
                Ok(1)
            }
        }
    }

    /// Move the items of `owner` at `from` and after by `by` (either way), through negative
    /// indices so no two rows ever share `(oid, idx)`.
    async fn shift(
        &mut self,
        list: &ListTarget,
        owner: &Value,
        from: usize,
        by: i64,
    ) -> Result<(), Failure> {
        let table = quote_ident(&list.table);
        // idx → -(idx + by) - 1, all negative and distinct; then back: -idx - 1 = idx + by.
        let first = format!(
            "UPDATE {table} SET \"idx\" = -(\"idx\" + $3) - 1 WHERE \"oid\" = $1 AND \"idx\" >= $2"
        );
        let second =
            format!("UPDATE {table} SET \"idx\" = -\"idx\" - 1 WHERE \"oid\" = $1 AND \"idx\" < 0");
        let values = [
            (owner.clone(), None),
            (Value::Int(from as i64), None),
            (Value::Int(by), None),
        ];
        let moved = self.run(&first, &values, "shifting list items").await?;
        if moved > 0 {
            self.run(&second, &values[..1], "shifting list items")
                .await?;
        }
        Ok(())
    }

    /// Insert `items` at `first`, `first + 1`, … of `owner`'s list.
    async fn insert_items(
        &mut self,
        table: &str,
        item_column: &str,
        owner: &Value,
        first: usize,
        items: Vec<Value>,
    ) -> Result<(), Failure> {
        let rows: Vec<[Value; 3]> = items
            .into_iter()
            .enumerate()
            .map(|(n, item)| [owner.clone(), Value::Int((first + n) as i64), item])
            .collect();
        self.insert_list_rows(table, item_column, &rows).await
    }

    async fn insert_list_rows(
        &mut self,
        table: &str,
        item_column: &str,
        rows: &[[Value; 3]],
    ) -> Result<(), Failure> {
        let mut jobs = Vec::new();
        self.list_row_jobs(table, item_column, rows, &mut jobs)
            .await?;
        self.pipeline(jobs).await?;
        Ok(())
    }

    /// UPDATE the changed columns of one object.
    async fn update(
        &mut self,
        realm: &RealmPath,
        class: &str,
        key: &PrimaryKey,
        object: &Object,
        sets: Vec<(String, Value)>,
    ) -> Result<(), Failure> {
        let schema = self.schema.clone();
        let Some(class_def) = schema.class(class) else {
            return Ok(());
        };
        let Some(target) = self.mapping.target(realm, &class_def.table, object) else {
            return Ok(());
        };
        let mut assignments = Vec::new();
        let mut values = Vec::new();
        for (property, value) in sets {
            let Some(p) = class_def.property_named(&property) else {
                continue;
            };
            if p.ty.is_list() || target.extras.iter().any(|e| e.column == p.column) {
                continue;
            }
            values.push((value, tsvector_cast(p)));
            assignments.push(format!(
                "{} = {}",
                quote_ident(&p.column),
                placeholder(values.len(), values.last().and_then(|v| v.1.as_deref()))
            ));
        }
        if assignments.is_empty() {
            return Ok(());
        }
        let key_column = key_column(class_def)?;
        values.push((key.to_value(), None));
        let mut sql = format!(
            "UPDATE {} SET {} WHERE {} = ${}",
            quote_ident(&target.table),
            assignments.join(", "),
            quote_ident(&key_column),
            values.len()
        );
        self.where_extras(&target, &mut sql, &mut values).await?;
        self.run(&sql, &values, "updating").await?;
        Ok(())
    }

    /// ` AND "col" = $n` for each extra column of `target`.
    pub(crate) async fn where_extras(
        &mut self,
        target: &Target,
        sql: &mut String,
        values: &mut Vec<(Value, Option<String>)>,
    ) -> Result<(), Failure> {
        for extra in &target.extras {
            let cast = self.extra_cast(&target.table, extra).await?;
            values.push((extra.value.clone(), cast));
            sql.push_str(&format!(
                " AND {} = {}",
                quote_ident(&extra.column),
                placeholder(values.len(), values.last().and_then(|v| v.1.as_deref()))
            ));
        }
        Ok(())
    }

    /// How a path capture is cast to its column's type.
    async fn extra_cast(&mut self, table: &str, extra: &Extra) -> Result<Option<String>, Failure> {
        if !extra.from_text {
            return Ok(None);
        }
        let id = (table.to_owned(), extra.column.clone());
        if let Some(ty) = self.column_types.get(&id) {
            return Ok(Some(ty.clone()));
        }
        let row = self
            .client
            .query_opt(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
                  WHERE attrelid = to_regclass($1) AND attname = $2 AND attnum > 0 \
                    AND NOT attisdropped",
                &[&quote_ident(table), &extra.column],
            )
            .await
            .map_err(|e| classify("reading a column's type", e))?;
        let Some(row) = row else {
            return Err(Failure::Refused(format!(
                "table \"{table}\" has no column \"{}\" for the realm path's `{{{}}}`; add the \
                 column or change the realm path template",
                extra.column, extra.column
            )));
        };
        let ty: String = row.get(0);
        self.column_types.insert(id, ty.clone());
        Ok(Some(ty))
    }

    /// Queue a created object's row and lists.
    async fn buffer_create(
        &mut self,
        realm: &RealmPath,
        class: &str,
        key: &PrimaryKey,
        values: &BTreeMap<String, Value>,
        creates: &mut Creates,
    ) -> Result<(), Failure> {
        let schema = self.schema.clone();
        let Some(class_def) = schema.class(class) else {
            return Ok(());
        };
        if let RealmMapping::Closure(_) = &self.mapping {
            // Only a closure looks at the object: it is given every property.
            let object = Object {
                class: class.to_owned(),
                values: values.clone(),
            };
            let Some(target) = self.mapping.target(realm, &class_def.table, &object) else {
                return Ok(());
            };
            return self
                .queue_create(class_def, key, values, &target, creates)
                .await;
        }
        // The other mappings look only at the realm path: a run of creates in one realm is
        // mapped once.
        let cached = match creates.target.take() {
            Some(c) if c.0 == *realm && c.1 == class_def.table => c,
            _ => match self
                .mapping
                .target(realm, &class_def.table, &Object::new(class))
            {
                Some(t) => (realm.clone(), class_def.table.clone(), t),
                None => return Ok(()),
            },
        };
        let queued = self
            .queue_create(class_def, key, values, &cached.2, creates)
            .await;
        creates.target = Some(cached);
        queued
    }

    async fn queue_create(
        &mut self,
        class_def: &Class,
        key: &PrimaryKey,
        values: &BTreeMap<String, Value>,
        target: &Target,
        creates: &mut Creates,
    ) -> Result<(), Failure> {
        let fresh = match creates.keys.get_mut(target.table.as_str()) {
            Some(keys) => keys.insert(key.clone()),
            None => {
                creates
                    .keys
                    .insert(target.table.clone(), HashSet::from([key.clone()]));
                true
            }
        };
        if !fresh {
            // The same row twice in one statement is refused by ON CONFLICT: write the first.
            self.flush_creates(creates).await?;
            creates
                .keys
                .insert(target.table.clone(), HashSet::from([key.clone()]));
        }
        let is_extra = |column: &str| target.extras.iter().any(|e| e.column == column);
        let found = creates.groups.iter().position(|g| {
            g.table == target.table
                && g.class == class_def.name
                && g.extras.iter().eq(target.extras.iter().map(|e| &e.column))
        });
        let index = match found {
            Some(i) => i,
            None => {
                let mut columns = Vec::new();
                let mut labels = Vec::new();
                for p in class_def.column_properties() {
                    if !is_extra(&p.column) {
                        columns.push((p.column.clone(), tsvector_cast(p)));
                        labels.push(format!("{}.{}", class_def.name, p.name));
                    }
                }
                for extra in &target.extras {
                    let cast = self.extra_cast(&target.table, extra).await?;
                    columns.push((extra.column.clone(), cast));
                    labels.push(format!(
                        "{}.{} (from the realm path)",
                        target.table, extra.column
                    ));
                }
                creates.groups.push(RowGroup {
                    table: target.table.clone(),
                    class: class_def.name.clone(),
                    key_column: key_column(class_def)?,
                    columns,
                    extras: target.extras.iter().map(|e| e.column.clone()).collect(),
                    labels,
                    rows: Vec::new(),
                    keys: Vec::new(),
                });
                creates.groups.len() - 1
            }
        };
        let group = &mut creates.groups[index];
        let mut row = Vec::with_capacity(group.columns.len());
        for p in class_def.column_properties() {
            if !is_extra(&p.column) {
                row.push(values.get(&p.name).cloned().unwrap_or(Value::Null));
            }
        }
        row.extend(target.extras.iter().map(|e| e.value.clone()));
        group.rows.push(row);
        group.keys.push(key.clone());
        let owner = key.to_value();
        for p in class_def.list_properties() {
            let list = list_target(class_def, &target.table, p);
            let group = creates
                .lists
                .entry(list.table)
                .or_insert_with(|| ListGroup {
                    item_column: list.item_column,
                    owners: Vec::new(),
                    rows: Vec::new(),
                });
            group.owners.push(owner.clone());
            if let Some(Value::List(items)) = values.get(&p.name) {
                for (idx, item) in items.iter().enumerate() {
                    group
                        .rows
                        .push([owner.clone(), Value::Int(idx as i64), item.clone()]);
                }
            }
        }
        Ok(())
    }

    /// Write the queued creates: upserts, then each subtable's rows of those owners replaced;
    /// every statement sent before the first result is read.
    async fn flush_creates(&mut self, creates: &mut Creates) -> Result<(), Failure> {
        if creates.is_empty() {
            return Ok(());
        }
        self.flush_creates_then(creates, Vec::new()).await?;
        Ok(())
    }

    /// [`flush_creates`](Self::flush_creates), then `tail` in the same pipeline; the row counts
    /// of `tail`.
    async fn flush_creates_then(
        &mut self,
        creates: &mut Creates,
        tail: Vec<Job<'_>>,
    ) -> Result<Vec<u64>, Failure> {
        let groups = std::mem::take(&mut creates.groups);
        let lists = std::mem::take(&mut creates.lists);
        creates.clear();
        let labels = parameter_labels();
        let mut jobs = Vec::new();
        for group in &groups {
            match self.array_types(&group.table, &group.columns).await? {
                Some(types) => {
                    let statement = self.statement(&unnest_upsert_sql(group, &types)).await?;
                    for (rows, keys) in group.rows.chunks(MAX_ROWS).zip(group.keys.chunks(MAX_ROWS))
                    {
                        let params = (0..group.columns.len())
                            .map(|column| {
                                Box::new(ColumnArray {
                                    rows,
                                    column,
                                    label: &group.labels[column],
                                    class: &group.class,
                                    keys,
                                }) as Param<'_>
                            })
                            .collect();
                        jobs.push(Job {
                            statement: statement.clone(),
                            params,
                            action: "inserting",
                        });
                    }
                }
                None => {
                    let per_row = group.columns.len().max(1);
                    let chunk_rows = (MAX_PARAMS / per_row).clamp(1, MAX_ROWS);
                    for chunk in group.rows.chunks(chunk_rows) {
                        let statement = self.statement(&upsert_sql(group, chunk.len())).await?;
                        let params = chunk
                            .iter()
                            .flatten()
                            .zip(labels)
                            .map(|(v, l)| Box::new(PgValue::new(v, l)) as Param<'_>)
                            .collect();
                        jobs.push(Job {
                            statement,
                            params,
                            action: "inserting",
                        });
                    }
                }
            }
        }
        for (table, group) in &lists {
            let owner_type = self.array_types(table, &[("oid".to_owned(), None)]).await?;
            for owners in group.owners.chunks(MAX_ROWS) {
                let (sql, params) = match &owner_type {
                    Some(types) => (
                        format!(
                            "DELETE FROM {} WHERE \"oid\" = ANY($1::{}[])",
                            quote_ident(table),
                            types[0]
                        ),
                        vec![Box::new(ColumnArray {
                            rows: owners,
                            column: 0,
                            label: "the list's owner",
                            class: "",
                            keys: &[],
                        }) as Param<'_>],
                    ),
                    None => {
                        let marks: Vec<String> =
                            (1..=owners.len()).map(|i| format!("${i}")).collect();
                        (
                            format!(
                                "DELETE FROM {} WHERE \"oid\" IN ({})",
                                quote_ident(table),
                                marks.join(", ")
                            ),
                            owners
                                .iter()
                                .zip(labels)
                                .map(|(v, l)| Box::new(PgValue::new(v, l)) as Param<'_>)
                                .collect(),
                        )
                    }
                };
                jobs.push(Job {
                    statement: self.statement(&sql).await?,
                    params,
                    action: "replacing lists",
                });
            }
            self.list_row_jobs(table, group.item_column, &group.rows, &mut jobs)
                .await?;
        }
        let first_of_tail = jobs.len();
        jobs.extend(tail);
        let mut counts = self.pipeline(jobs).await?;
        Ok(counts.split_off(first_of_tail))
    }

    /// The statements inserting list rows `(owner, idx, item)` into `table`.
    async fn list_row_jobs<'r>(
        &mut self,
        table: &str,
        item_column: &str,
        rows: &'r [[Value; 3]],
        jobs: &mut Vec<Job<'r>>,
    ) -> Result<(), Failure> {
        let columns = [
            ("oid".to_owned(), None),
            ("idx".to_owned(), None),
            (item_column.to_owned(), None),
        ];
        if let Some(types) = self.array_types(table, &columns).await? {
            let statement = self
                .statement(&unnest_list_insert_sql(table, item_column, &types))
                .await?;
            for chunk in rows.chunks(MAX_ROWS) {
                let params = (0..3)
                    .map(|column| {
                        Box::new(ColumnArray {
                            rows: chunk,
                            column,
                            label: LIST_LABELS[column],
                            class: "",
                            keys: &[],
                        }) as Param<'r>
                    })
                    .collect();
                jobs.push(Job {
                    statement: statement.clone(),
                    params,
                    action: "inserting list items",
                });
            }
            return Ok(());
        }
        let labels = parameter_labels();
        for chunk in rows.chunks(MAX_ROWS) {
            let mut sql = format!(
                "INSERT INTO {} (\"oid\", \"idx\", {}) VALUES ",
                quote_ident(table),
                quote_ident(item_column)
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3));
            }
            let params = chunk
                .iter()
                .flatten()
                .zip(labels)
                .map(|(v, l)| Box::new(PgValue::new(v, l)) as Param<'r>)
                .collect();
            jobs.push(Job {
                statement: self.statement(&sql).await?,
                params,
                action: "inserting list items",
            });
        }
        Ok(())
    }

    /// The element type of each column's array parameter (`text` for a column whose values
    /// PostgreSQL casts from text), or `None` when a column has no array form or the table is
    /// not in the catalog (then the rows take the one-parameter-per-value form, which also
    /// gives PostgreSQL's own error for a missing table or column).
    async fn array_types(
        &mut self,
        table: &str,
        columns: &[(String, Option<String>)],
    ) -> Result<Option<Vec<String>>, Failure> {
        if !self.array_types.contains_key(table) {
            // `format_type(…, -1)`: the type without its modifier (`bpchar`, not `character`,
            // which would mean `character(1)`), so PostgreSQL's assignment to the column checks
            // length and precision exactly as for a single bound value.
            let rows = self
                .client
                .query(
                    "SELECT a.attname::text, \
                            CASE WHEN t.typarray <> 0 AND t.typcategory <> 'A' \
                                 THEN format_type(a.atttypid, -1) END \
                       FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                      WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 \
                        AND NOT a.attisdropped",
                    &[&quote_ident(table)],
                )
                .await
                .map_err(|e| classify("reading a table's column types", e))?;
            if rows.is_empty() {
                // Not cached: the table may be created later.
                return Ok(None);
            }
            let types = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            self.array_types.insert(table.to_owned(), Some(types));
        }
        let Some(Some(known)) = self.array_types.get(table) else {
            return Ok(None);
        };
        Ok(columns
            .iter()
            .map(|(column, cast)| match cast {
                Some(_) => Some("text".to_owned()),
                None => known.get(column).cloned().flatten(),
            })
            .collect())
    }

    /// Run `jobs` in order, sending every statement before reading any result: the server runs
    /// one while the next are on the wire, and this side encodes them meanwhile. They share the
    /// open transaction (its BEGIN goes first when not sent yet); the first failure in order is
    /// the batch's (the statements after it only report the aborted transaction). The row count
    /// of each job.
    async fn pipeline(&mut self, mut jobs: Vec<Job<'_>>) -> Result<Vec<u64>, Failure> {
        let begin = self.begin_pending;
        if begin {
            let statement = self.statement("BEGIN").await?;
            jobs.insert(
                0,
                Job {
                    statement,
                    params: Vec::new(),
                    action: "starting a transaction",
                },
            );
            self.begin_pending = false;
        }
        let client = &self.client;
        let mut running: Vec<_> = jobs
            .iter()
            .map(|job| Box::pin(maybe_done(job.execute(client))))
            .collect();
        // A statement's request is sent by the first poll of its future (the statement is
        // prepared already): poll each once, in order, so they reach the server in this order.
        std::future::poll_fn(|cx| {
            for f in running.iter_mut() {
                let _ = f.as_mut().poll(cx);
            }
            Poll::Ready(())
        })
        .await;
        let mut counts = Vec::with_capacity(running.len());
        let mut first = None;
        for (f, job) in running.iter_mut().zip(&jobs) {
            f.as_mut().await;
            match f.as_mut().take_output() {
                Some(Ok(n)) => counts.push(n),
                Some(Err(e)) if first.is_none() => first = Some((e, job.action)),
                _ => {}
            }
        }
        drop(running);
        if let Some((e, action)) = first {
            if let Some(object) = RefusedValue::object_of(&e) {
                self.refused_object = Some(object);
            }
            return Err(classify(action, e));
        }
        if begin {
            counts.remove(0);
        }
        Ok(counts)
    }

    /// Prepare (or reuse) and execute `sql` with `values` bound.
    async fn run(
        &mut self,
        sql: &str,
        values: &[(Value, Option<String>)],
        action: &'static str,
    ) -> Result<u64, Failure> {
        let statement = self.statement(sql).await?;
        let params = values
            .iter()
            .zip(parameter_labels())
            .map(|((v, _), l)| Box::new(PgValue::new(v, l)) as Param<'_>)
            .collect();
        let job = Job {
            statement,
            params,
            action,
        };
        Ok(self
            .pipeline(vec![job])
            .await?
            .first()
            .copied()
            .unwrap_or(0))
    }

    /// Prepare (or reuse) and run a query with `values` bound.
    pub(crate) async fn query(
        &mut self,
        sql: &str,
        values: &[(Value, Option<String>)],
    ) -> Result<Vec<tokio_postgres::Row>, Failure> {
        let statement = self.statement(sql).await?;
        let labels = parameter_labels();
        let bound: Vec<PgValue<'_>> = values
            .iter()
            .zip(labels)
            .map(|((v, _), l)| PgValue::new(v, l))
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> =
            bound.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        self.client
            .query(&statement, &params)
            .await
            .map_err(|e| classify("reading", e))
    }

    async fn statement(&mut self, sql: &str) -> Result<Statement, Failure> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let statement = self
            .client
            .prepare(sql)
            .await
            .map_err(|e| classify("preparing a statement", e))?;
        if self.statements.len() >= STATEMENT_CACHE {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn target_of_key(
        &self,
        realm: &RealmPath,
        class: &str,
        key: &PrimaryKey,
    ) -> Option<(Class, Target)> {
        let class_def = self.schema.class(class)?.clone();
        let object = key_object(&self.schema, class, key);
        let target = self.mapping.target(realm, &class_def.table, &object)?;
        Some((class_def, target))
    }

    fn list_of(
        &self,
        realm: &RealmPath,
        class: &str,
        key: &PrimaryKey,
        property: &str,
    ) -> Result<Option<ListTarget>, Failure> {
        let Some((class_def, target)) = self.target_of_key(realm, class, key) else {
            return Ok(None);
        };
        let Some(p) = class_def.property_named(property) else {
            return Ok(None);
        };
        Ok(Some(list_target(&class_def, &target.table, p)))
    }
}
