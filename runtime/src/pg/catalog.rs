//! Reading a live database's tables into [`Catalog`], for `check_catalog` to compare with the
//! schema.
//!
//! Types come from `pg_attribute` through `format_type()`, which keeps lengths and precisions
//! (`character varying(64)`, `numeric(38,10)`) that `information_schema.columns.data_type`
//! drops. Dropped columns (`attisdropped`) and system columns are skipped. Only ordinary and
//! partitioned tables count: a view or foreign table cannot be a sync target.

use pgrealm_schema::catalog::{Catalog, CatalogColumn, CatalogTable};
use tokio_postgres::GenericClient;

use super::PgError;

const COLUMNS: &str = "\
SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text,
       a.attnotnull
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_type t ON t.oid = a.atttypid
 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
 ORDER BY c.relname, a.attnum";

const PRIMARY_KEYS: &str = "\
SELECT c.relname::text, a.attname::text
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position)
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
 WHERE n.nspname = $1 AND i.indisprimary AND c.relkind IN ('r', 'p')
 ORDER BY c.relname, k.position";

/// The tables of schema `schema_name` (usually `public`), with their columns in `attnum`
/// order and their primary keys in key order.
pub async fn read_catalog<C: GenericClient>(
    client: &C,
    schema_name: &str,
) -> Result<Catalog, PgError> {
    let mut catalog = Catalog::default();
    let rows = client
        .query(COLUMNS, &[&schema_name])
        .await
        .map_err(|e| PgError::sql(format!("reading the columns of schema `{schema_name}`"), e))?;
    for row in rows {
        let table: String = row.get(0);
        let entry = catalog
            .tables
            .entry(table)
            .or_insert_with(CatalogTable::default);
        // A table without columns has one row with NULLs from the outer join.
        let Some(name) = row.get::<_, Option<String>>(1) else {
            continue;
        };
        entry.columns.push(CatalogColumn {
            name,
            data_type: row.get(2),
            udt_name: row.get(3),
            not_null: row.get(4),
        });
    }
    let rows = client
        .query(PRIMARY_KEYS, &[&schema_name])
        .await
        .map_err(|e| {
            PgError::sql(
                format!("reading the primary keys of schema `{schema_name}`"),
                e,
            )
        })?;
    for row in rows {
        let table: String = row.get(0);
        if let Some(entry) = catalog.tables.get_mut(&table) {
            entry.primary_key.push(row.get(1));
        }
    }
    Ok(catalog)
}
