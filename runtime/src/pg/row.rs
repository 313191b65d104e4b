//! Whole objects between realm and PostgreSQL rows: reading a row into an [`Object`], the
//! columns and parameters of an upsert, and list subtables `(oid, idx, target|value)` read in
//! `idx` order and written whole.
//!
//! Kept small on purpose: the sync engine builds its own batched SQL writers; these are the
//! per-object building blocks and what the tests use. Identifiers are always quoted, values
//! always bound.

use pgrealm_schema::ddl::quote_ident;
use pgrealm_schema::types::normalize_postgres_type;
use pgrealm_schema::value::check_value;
use pgrealm_schema::{
    Class, ListItem, Object, PrimaryKey, Property, PropertyType, ScalarType, Schema, Value,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

use super::value::{decode, PgValue, RawColumn};
use super::PgError;

/// Rows per INSERT when writing a list: 1 + 2 × 1000 parameters, well under the protocol's
/// 65,535, and few round trips for long lists.
const LIST_CHUNK: usize = 1000;

/// `Bus.name`: how errors name a property.
pub fn property_label(class: &Class, property: &Property) -> String {
    format!("{}.{}", class.name, property.name)
}

/// Whether the column is a `tsvector`, which has no binary form we read or write: such columns
/// are selected as `::text` and bound as `$n::text::tsvector`.
fn is_tsvector(property: &Property) -> bool {
    property
        .postgres_type
        .as_deref()
        .is_some_and(|t| normalize_postgres_type(t) == "tsvector")
}

/// The select list of every column `class` maps to, for [`object_from_row`]:
/// `"id", "name", "routeid"`.
pub fn select_columns(class: &Class) -> String {
    class
        .column_properties()
        .map(|p| {
            let column = quote_ident(&p.column);
            if is_tsvector(p) {
                format!("{column}::text AS {column}")
            } else {
                column
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Read one column of a row into a value of a property of type `ty`; NULL is [`Value::Null`].
pub fn read_column(
    row: &Row,
    index: usize,
    ty: ScalarType,
    property: &str,
) -> Result<Value, PgError> {
    let raw: RawColumn<'_> = row
        .try_get(index)
        .map_err(|e| PgError::sql(format!("reading column {index} for `{property}`"), e))?;
    Ok(decode(ty, &raw.ty, raw.bytes, property)?)
}

/// An object of `class` from a row holding (at least) every column the class maps to, by
/// column name. List properties are not in the row: they are left out (read them with
/// [`read_list`]). Values are checked against their properties: a NULL in a required
/// property, or an integer beyond the property's width, is an error.
pub fn object_from_row(schema: &Schema, class: &Class, row: &Row) -> Result<Object, PgError> {
    let mut object = Object::new(class.name.clone());
    for property in class.column_properties() {
        let label = property_label(class, property);
        let index = row
            .columns()
            .iter()
            .position(|c| c.name() == property.column)
            .ok_or_else(|| PgError::MissingColumn {
                column: property.column.clone(),
                property: label.clone(),
            })?;
        let ty = column_scalar(schema, property, &label)?;
        let value = read_column(row, index, ty, &label)?;
        let value = check_value(schema, class, property, value)?;
        object.values.insert(property.name.clone(), value);
    }
    Ok(object)
}

fn column_scalar(schema: &Schema, property: &Property, label: &str) -> Result<ScalarType, PgError> {
    schema.column_type(property).ok_or_else(|| {
        PgError::Schema(format!(
            "`{label}` has no column type: its link target is not in the schema or has no \
             primary key"
        ))
    })
}

/// `INSERT INTO "t" (…) VALUES ($1, …) ON CONFLICT (pk) DO UPDATE SET …` for every column of
/// `class`, parameters in [`Class::column_properties`] order (see [`RowParams`]).
pub fn upsert_sql(class: &Class) -> String {
    let properties: Vec<&Property> = class.column_properties().collect();
    let columns: Vec<String> = properties.iter().map(|p| quote_ident(&p.column)).collect();
    let values: Vec<String> = properties
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if is_tsvector(p) {
                format!("${}::text::tsvector", i + 1)
            } else {
                format!("${}", i + 1)
            }
        })
        .collect();
    let key: Vec<String> = properties
        .iter()
        .filter(|p| p.primary_key)
        .map(|p| quote_ident(&p.column))
        .collect();
    let updates: Vec<String> = properties
        .iter()
        .filter(|p| !p.primary_key)
        .map(|p| format!("{0} = EXCLUDED.{0}", quote_ident(&p.column)))
        .collect();
    let on_conflict = if updates.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    format!(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {on_conflict}",
        quote_ident(&class.table),
        columns.join(", "),
        values.join(", "),
        key.join(", ")
    )
}

/// The column values of an object, checked against its class, ready to bind.
#[derive(Debug, Clone)]
pub struct RowParams {
    labels: Vec<String>,
    values: Vec<Value>,
}

impl RowParams {
    /// The column values of `object` in [`Class::column_properties`] order (the order of
    /// [`upsert_sql`]'s parameters). Missing properties are NULL; values are checked first.
    pub fn new(schema: &Schema, class: &Class, object: &Object) -> Result<RowParams, PgError> {
        let mut labels = Vec::new();
        let mut values = Vec::new();
        for property in class.column_properties() {
            let value = object.get(&property.name).cloned().unwrap_or(Value::Null);
            values.push(check_value(schema, class, property, value)?);
            labels.push(property_label(class, property));
        }
        Ok(RowParams { labels, values })
    }

    /// The values as bind parameters.
    pub fn params(&self) -> Vec<PgValue<'_>> {
        self.values
            .iter()
            .zip(&self.labels)
            .map(|(v, l)| PgValue::new(v, l))
            .collect()
    }
}

/// Bind parameters as tokio-postgres takes them.
pub fn as_params<'a>(values: &'a [PgValue<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// Insert or update `object`'s row, and replace each of its lists present in the object.
pub async fn upsert_object<C: GenericClient>(
    client: &C,
    schema: &Schema,
    object: &Object,
) -> Result<(), PgError> {
    let class = class_of(schema, &object.class)?;
    let row = RowParams::new(schema, class, object)?;
    let params = row.params();
    client
        .execute(&upsert_sql(class), &as_params(&params))
        .await
        .map_err(|e| {
            PgError::sql(
                format!("writing {} {}", class.name, key_text(schema, object)),
                e,
            )
        })?;
    let key = object.primary_key(schema)?;
    for property in class.list_properties() {
        if let Some(Value::List(items)) = object.get(&property.name) {
            write_list(client, schema, class, property, &key, items).await?;
        }
    }
    Ok(())
}

fn key_text(schema: &Schema, object: &Object) -> String {
    object
        .primary_key(schema)
        .map(|k| k.to_string())
        .unwrap_or_else(|_| "(no key)".into())
}

fn class_of<'s>(schema: &'s Schema, name: &str) -> Result<&'s Class, PgError> {
    schema
        .class(name)
        .ok_or_else(|| PgError::Schema(format!("the schema has no class `{name}`")))
}

/// The subtable's item column (`target` for links, `value` for primitives) and item type.
fn list_shape(
    schema: &Schema,
    class: &Class,
    property: &Property,
) -> Result<(&'static str, ScalarType), PgError> {
    let label = property_label(class, property);
    let PropertyType::List(item) = &property.ty else {
        return Err(PgError::Schema(format!("`{label}` is not a list")));
    };
    let column = match item {
        ListItem::Object(_) => "target",
        ListItem::Scalar(_) => "value",
    };
    let ty = schema.list_item_type(item).ok_or_else(|| {
        PgError::Schema(format!(
            "`{label}` lists a class that is not in the schema or has no primary key"
        ))
    })?;
    Ok((column, ty))
}

/// The list `property` of the object `owner` of `class`, from its subtable in `idx` order.
pub async fn read_list<C: GenericClient>(
    client: &C,
    schema: &Schema,
    class: &Class,
    property: &Property,
    owner: &PrimaryKey,
) -> Result<Value, PgError> {
    let (column, ty) = list_shape(schema, class, property)?;
    let label = property_label(class, property);
    let table = class.list_table(property);
    let sql = format!(
        "SELECT {} FROM {} WHERE \"oid\" = $1 ORDER BY \"idx\"",
        quote_ident(column),
        quote_ident(&table)
    );
    let owner_value = owner.to_value();
    let rows = client
        .query(&sql, &[&PgValue::new(&owner_value, &label)])
        .await
        .map_err(|e| PgError::sql(format!("reading list {label} of {owner}"), e))?;
    let items = rows
        .iter()
        .map(|row| {
            let value = read_column(row, 0, ty, &label)?;
            Ok(match &property.ty {
                PropertyType::List(ListItem::Object(_)) => match PrimaryKey::from_value(&value) {
                    Some(key) => Value::Link(key),
                    None => value,
                },
                _ => value,
            })
        })
        .collect::<Result<Vec<_>, PgError>>()?;
    Ok(check_value(schema, class, property, Value::List(items))?)
}

/// Replace the list `property` of the object `owner` with `items`: its subtable rows are
/// deleted and written again with `idx` 0, 1, …. Run it inside a transaction.
pub async fn write_list<C: GenericClient>(
    client: &C,
    schema: &Schema,
    class: &Class,
    property: &Property,
    owner: &PrimaryKey,
    items: &[Value],
) -> Result<(), PgError> {
    let (column, _) = list_shape(schema, class, property)?;
    let label = property_label(class, property);
    let Value::List(items) = check_value(schema, class, property, Value::List(items.to_vec()))?
    else {
        return Err(PgError::Schema(format!(
            "`{label}` did not check as a list"
        )));
    };
    let table = quote_ident(&class.list_table(property));
    let owner_value = owner.to_value();
    let owner_param = PgValue::new(&owner_value, &label);
    client
        .execute(
            &format!("DELETE FROM {table} WHERE \"oid\" = $1"),
            &[&owner_param],
        )
        .await
        .map_err(|e| PgError::sql(format!("clearing list {label} of {owner}"), e))?;
    let indexes: Vec<Value> = (0..items.len() as i64).map(Value::Int).collect();
    for (chunk_no, chunk) in items.chunks(LIST_CHUNK).enumerate() {
        let first = chunk_no * LIST_CHUNK;
        let mut sql = format!(
            "INSERT INTO {table} (\"oid\", \"idx\", {}) VALUES ",
            quote_ident(column)
        );
        let mut params: Vec<PgValue<'_>> = vec![owner_param];
        for (i, item) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("($1, ${}, ${})", 2 + 2 * i, 3 + 2 * i));
            params.push(PgValue::new(&indexes[first + i], &label));
            params.push(PgValue::new(item, &label));
        }
        client
            .execute(&sql, &as_params(&params))
            .await
            .map_err(|e| PgError::sql(format!("writing list {label} of {owner}"), e))?;
    }
    Ok(())
}
