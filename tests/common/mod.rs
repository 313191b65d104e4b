//! Helpers shared by the PostgreSQL integration tests: a connected fresh database from the
//! shared test cluster, and the schemas the tests use, built with the model's builders so these
//! tests depend on the schema crate only.

// Each test binary includes this module and uses a different part of it.
#![allow(dead_code)]

use pgrealm_runtime::testing::{PgCluster, TestDb};
use pgrealm_schema::{Class, IntWidth, ListItem, Property, PropertyType, ScalarType, Schema};
use tokio_postgres::Client;

/// A fresh database of the shared cluster and a connection to it whose session time zone is not
/// UTC (`Asia/Kolkata`, +05:30), so every timestamp in text form carries a real offset.
pub async fn fresh_db() -> (TestDb, Client) {
    let db = PgCluster::shared()
        .fresh_database()
        .expect("a fresh test database");
    let client = db.connect().await.expect("connecting to the test database");
    client
        .batch_execute("SET TimeZone = 'Asia/Kolkata'")
        .await
        .expect("setting the session time zone");
    (db, client)
}

pub fn scalar(name: &str, ty: ScalarType) -> Property {
    Property::new(name, PropertyType::Scalar(ty))
}

pub const I64: ScalarType = ScalarType::Int(IntWidth::I64);
pub const I32: ScalarType = ScalarType::Int(IntWidth::I32);
pub const I16: ScalarType = ScalarType::Int(IntWidth::I16);

/// The transit models of the original adapter's guide: Route (without `fare`) with a list of
/// Schedules, Bus linking to Route through `routeid`, Schedule, Driver linking to Bus.
pub fn transit_schema() -> Schema {
    Schema::new(vec![
        Class::new("Route")
            .table("route")
            .property(scalar("id", ScalarType::String).primary_key())
            .property(scalar("name", ScalarType::String))
            .property(Property::new(
                "schedules",
                PropertyType::List(ListItem::Object("Schedule".into())),
            )),
        Class::new("Bus")
            .table("bus")
            .property(scalar("id", I64).primary_key())
            .property(scalar("name", ScalarType::String))
            .property(
                Property::new("route", PropertyType::Link("Route".into()))
                    .column("routeid")
                    .optional(),
            ),
        Class::new("Schedule")
            .table("schedule")
            .property(scalar("id", ScalarType::String).primary_key())
            .property(scalar("day", ScalarType::String))
            .property(scalar("departure", ScalarType::Date))
            .property(scalar("arrival", ScalarType::Date).optional()),
        Class::new("Driver")
            .table("driver")
            .property(scalar("id", I64).primary_key())
            .property(scalar("name", ScalarType::String))
            .property(Property::new("bus", PropertyType::Link("Bus".into())).optional()),
    ])
}

/// One class with a property of every scalar type (optional and required), a list of links and
/// lists of primitives.
pub fn every_type_schema() -> Schema {
    let mut sample = Class::new("Sample")
        .table("sample")
        .property(scalar("id", ScalarType::Uuid).primary_key());
    for ty in ScalarType::ALL {
        let name = format!("{}_{}", ty.realm_name(), ty.rust_type().to_lowercase());
        let name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        sample = sample
            .property(scalar(&name, ty))
            .property(scalar(&format!("maybe_{name}"), ty).optional());
    }
    let sample = sample
        .property(Property::new(
            "friends",
            PropertyType::List(ListItem::Object("Tag".into())),
        ))
        .property(Property::new(
            "words",
            PropertyType::List(ListItem::Scalar(ScalarType::String)),
        ))
        .property(Property::new(
            "numbers",
            PropertyType::List(ListItem::Scalar(I64)),
        ))
        .property(Property::new("best", PropertyType::Link("Tag".into())).optional());
    let tag = Class::new("Tag")
        .table("tag")
        .property(scalar("id", I64).primary_key())
        .property(scalar("label", ScalarType::String));
    Schema::new(vec![sample, tag])
}
