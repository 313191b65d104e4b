//! The DDL the schema compiler renders applies in one go to an empty PostgreSQL database, and
//! the catalog check then finds nothing to report.

mod common;

use common::{fresh_db, scalar};
use pgrealm_runtime::pg::{describe, read_catalog};
use pgrealm_schema::catalog::check_catalog;
use pgrealm_schema::ddl::render_ddl;
use pgrealm_schema::{Class, Property, PropertyType, ScalarType, Schema};
use tokio_postgres::Client;

/// Apply `schema`'s DDL to the fresh database behind `client`, then check the catalog.
async fn apply_and_check(client: &Client, schema: &Schema) {
    let ddl = render_ddl(schema);
    client
        .batch_execute(&ddl)
        .await
        .unwrap_or_else(|e| panic!("the DDL did not apply: {}\n{ddl}", describe(&e)));
    let catalog = read_catalog(client, "public").await.unwrap();
    for table in schema.tables() {
        assert!(
            catalog.tables.contains_key(&table.name()),
            "{} was created",
            table.name()
        );
    }
    let problems = check_catalog(schema, &catalog);
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        text.is_empty(),
        "the fresh DDL must check clean:\n{}",
        text.join("\n")
    );
}

#[tokio::test]
async fn the_transit_ddl_applies_to_an_empty_database_and_checks_clean() {
    let (_db, client) = fresh_db().await;
    apply_and_check(&client, &common::transit_schema()).await;
}

#[tokio::test]
async fn a_schema_of_every_type_applies_and_checks_clean() {
    let (_db, client) = fresh_db().await;
    apply_and_check(&client, &common::every_type_schema()).await;
}

#[tokio::test]
async fn overrides_and_custom_types_apply_and_check_clean() {
    let (_db, client) = fresh_db().await;
    client
        .batch_execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
        .await
        .unwrap();
    let schema = Schema::new(vec![Class::new("Person")
        .property(scalar("id", ScalarType::Uuid).primary_key())
        .property(
            scalar("name", ScalarType::String)
                .postgres_type("varchar(64)")
                .indexed(),
        )
        .property(
            scalar("mood", ScalarType::String)
                .custom_type("mood")
                .optional(),
        )
        .property(scalar("balance", ScalarType::Decimal).postgres_type("numeric(38,10)"))
        .property(
            Property::new("mentor", PropertyType::Link("Person".into())).optional(),
        )]);
    apply_and_check(&client, &schema).await;
}

#[tokio::test]
async fn foreign_keys_are_checked_at_commit_so_sync_may_write_in_any_order() {
    let (_db, mut client) = fresh_db().await;
    apply_and_check(&client, &common::transit_schema()).await;

    // The bus and the route's list entry come before the rows they reference.
    let tx = client.transaction().await.unwrap();
    tx.batch_execute(
        "INSERT INTO bus (id, name, routeid) VALUES (1, 'Bus 1', 'r1');
         INSERT INTO route_schedules (oid, idx, target) VALUES ('r1', 0, 's1');
         INSERT INTO route (id, name) VALUES ('r1', 'Route 1');
         INSERT INTO schedule (id, day, departure) VALUES ('s1', 'monday', now());",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    // A reference that is still dangling at COMMIT is refused then, with PostgreSQL's message.
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("INSERT INTO bus (id, name, routeid) VALUES (2, 'Bus 2', 'nowhere')")
        .await
        .unwrap();
    let e = tx.commit().await.unwrap_err();
    assert!(
        describe(&e).contains("violates foreign key constraint"),
        "{}",
        describe(&e)
    );

    // Deleting a route clears the links to it and drops its list rows.
    client
        .batch_execute("DELETE FROM route WHERE id = 'r1'")
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT (SELECT routeid FROM bus WHERE id = 1), (SELECT count(*) FROM route_schedules)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), None);
    assert_eq!(row.get::<_, i64>(1), 0);
}

/// The transit example compiled by `schema!`: its DDL constant applies and checks clean against
/// its run-time schema, and its typed structs travel struct → realm object → PostgreSQL row →
/// realm object → struct unchanged.
#[tokio::test]
async fn the_compiled_transit_schema_applies_and_its_structs_round_trip_through_rows() {
    use pgrealm::{Link, List, RealmObject};
    use pgrealm_runtime::pg::{object_from_row, read_list, select_columns, upsert_object};
    use transit::{Bus, Route, Schedule};

    let (_db, mut client) = fresh_db().await;
    client
        .batch_execute(transit::Schema::DDL)
        .await
        .unwrap_or_else(|e| panic!("{}\n{}", describe(&e), transit::Schema::DDL));
    let schema = transit::Schema::schema();
    let catalog = read_catalog(&client, "public").await.unwrap();
    let problems: Vec<String> = check_catalog(schema, &catalog)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");

    let departure = chrono::DateTime::parse_from_rfc3339("1969-07-20T20:17:40.123456-04:00")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let schedule = Schedule {
        id: "s1".into(),
        day: "月曜日".into(),
        departure,
        arrival: None,
    };
    let route = Route {
        id: "r1".into(),
        name: "Downtown 🚌".into(),
        schedules: List::from(vec![Link::to(&schedule), Link::to(&schedule)]),
    };
    let bus = Bus {
        id: i64::MIN,
        name: String::new(),
        route: Some(Link::to(&route)),
    };
    let tx = client.transaction().await.unwrap();
    // Links first, targets later: the deferred foreign keys allow any order.
    upsert_object(&tx, schema, &bus.to_object()).await.unwrap();
    upsert_object(&tx, schema, &route.to_object())
        .await
        .unwrap();
    upsert_object(&tx, schema, &schedule.to_object())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let read = |table: &'static str| {
        let class = schema.class_by_table(table).unwrap();
        let sql = format!("SELECT {} FROM {table}", select_columns(class));
        let client = &client;
        async move {
            let row = client.query_one(&sql, &[]).await.unwrap();
            let mut object = object_from_row(schema, class, &row).unwrap();
            let key = object.primary_key(schema).unwrap();
            for list in class.list_properties() {
                let items = read_list(client, schema, class, list, &key).await.unwrap();
                object.values.insert(list.name.clone(), items);
            }
            object
        }
    };
    assert_eq!(Bus::from_object(&read("bus").await).unwrap(), bus);
    assert_eq!(Route::from_object(&read("route").await).unwrap(), route);
    assert_eq!(
        Schedule::from_object(&read("schedule").await).unwrap(),
        schedule
    );
}
