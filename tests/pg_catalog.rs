//! Reading a live catalog and checking it against a schema: what changed in the database is
//! reported in words the person fixing it understands.

mod common;

use common::{fresh_db, transit_schema};
use pgrealm_runtime::pg::read_catalog;
use pgrealm_schema::catalog::{check_catalog, CatalogColumn};
use pgrealm_schema::ddl::render_ddl;
use tokio_postgres::Client;

async fn transit_db() -> (pgrealm_runtime::testing::TestDb, Client) {
    let (db, client) = fresh_db().await;
    client
        .batch_execute(&render_ddl(&transit_schema()))
        .await
        .unwrap();
    (db, client)
}

/// Every problem the check finds, as the user reads it.
async fn problems(client: &Client) -> Vec<String> {
    let catalog = read_catalog(client, "public").await.unwrap();
    check_catalog(&transit_schema(), &catalog)
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[tokio::test]
async fn the_catalog_keeps_lengths_order_keys_and_skips_dropped_columns_and_other_schemas() {
    let (_db, client) = fresh_db().await;
    client
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('sad', 'happy');
             CREATE TABLE t (b text, a varchar(64) NOT NULL, gone int, n numeric(38,10),
                             m mood, ts timestamptz, PRIMARY KEY (a, b));
             ALTER TABLE t DROP COLUMN gone;
             CREATE TABLE empty ();
             CREATE VIEW v AS SELECT 1 AS x;
             CREATE SCHEMA other;
             CREATE TABLE other.hidden (id int PRIMARY KEY);",
        )
        .await
        .unwrap();
    let catalog = read_catalog(&client, "public").await.unwrap();
    assert_eq!(
        catalog.tables.keys().collect::<Vec<_>>(),
        ["empty", "t"],
        "views and other schemas are not sync targets"
    );
    let t = &catalog.tables["t"];
    let column = |name: &str, data_type: &str, udt: &str, not_null: bool| CatalogColumn {
        name: name.into(),
        data_type: data_type.into(),
        udt_name: udt.into(),
        not_null,
    };
    assert_eq!(
        t.columns,
        [
            column("b", "text", "text", true),
            column("a", "character varying(64)", "varchar", true),
            column("n", "numeric(38,10)", "numeric", false),
            column("m", "mood", "mood", false),
            column("ts", "timestamp with time zone", "timestamptz", false),
        ]
    );
    assert_eq!(t.primary_key, ["a", "b"], "key order, not column order");
    assert!(catalog.tables["empty"].columns.is_empty());
    assert!(catalog.tables["empty"].primary_key.is_empty());

    let other = read_catalog(&client, "other").await.unwrap();
    assert_eq!(other.tables["hidden"].primary_key, ["id"]);
}

#[tokio::test]
async fn a_dropped_column_is_reported_with_the_sql_that_adds_it() {
    let (_db, client) = transit_db().await;
    assert_eq!(problems(&client).await, Vec::<String>::new());
    client
        .batch_execute("ALTER TABLE bus DROP COLUMN name")
        .await
        .unwrap();
    let found = problems(&client).await;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("column \"bus\".\"name\" is missing (property Bus.name); add it with `ALTER TABLE \"bus\" ADD COLUMN \"name\" text"),
        "{}",
        found[0]
    );
}

#[tokio::test]
async fn a_changed_type_is_reported_with_what_the_property_needs() {
    let (_db, client) = transit_db().await;
    client
        .batch_execute(
            "ALTER TABLE schedule ALTER COLUMN departure TYPE text;
             ALTER TABLE bus ALTER COLUMN id TYPE numeric(20,0)",
        )
        .await
        .unwrap();
    let found = problems(&client).await;
    assert_eq!(found.len(), 2, "{found:#?}");
    let departure = found
        .iter()
        .find(|p| p.contains("\"schedule\".\"departure\""))
        .expect("the departure column is reported");
    assert!(
        departure.starts_with("column \"schedule\".\"departure\" is text, but Schedule.departure"),
        "{departure}"
    );
    assert!(
        departure.contains("timestamp with time zone"),
        "{departure}"
    );
    let id = found
        .iter()
        .find(|p| p.contains("\"bus\".\"id\""))
        .expect("the bus id column is reported");
    assert!(
        id.starts_with("column \"bus\".\"id\" is numeric(20,0), but Bus.id"),
        "{id}"
    );
    assert!(id.contains("bigint"), "{id}");
}

#[tokio::test]
async fn a_missing_table_is_reported_with_how_to_create_it() {
    let (_db, client) = transit_db().await;
    client.batch_execute("DROP TABLE driver").await.unwrap();
    let found = problems(&client).await;
    assert_eq!(
        found,
        [
            "table \"driver\" is missing (class Driver); create it with your binary's `ddl` \
          command (e.g. `transit ddl | psql`) or set create_postgres_db = true"
        ]
    );
}
