//! The transit app of the original Postgres adapter guide, on pgrealm: its models and schema.
//!
//! The classes are defined in `src/models.rs` with `pgrealm::schema!`. Building this package
//! also writes the schema's PostgreSQL DDL to `<target dir>/pgrealm/transit/schema.sql` (see
//! `build.rs`); `transit ddl` prints the same text.

mod demo;
mod models;

pub use demo::DEMO;

pub use models::*;

/// Where the build script writes the DDL, relative to the cargo target directory.
pub const DDL_FILE: &str = "pgrealm/transit/schema.sql";

#[cfg(test)]
mod tests {
    use pgrealm::{Link, List, RealmObject, Utc, Value, ValueError};

    use super::*;

    #[test]
    fn models_round_trip_through_realm_objects() {
        let mut route = Route {
            id: "r1".into(),
            name: "Downtown".into(),
            schedules: List::new(),
        };
        route.schedules.push_key("s1");
        route.schedules.push_key("s2");
        let object = route.to_object();
        assert_eq!(object.class, "Route");
        assert_eq!(
            object.get("schedules"),
            Some(&Value::List(vec![
                Value::Link("s1".into()),
                Value::Link("s2".into())
            ]))
        );
        assert_eq!(Route::from_object(&object).unwrap(), route);

        let bus = Bus {
            id: 7,
            name: "Seven".into(),
            route: Some(Link::to(&route)),
        };
        assert_eq!(bus.primary_key(), 7i64.into());
        assert_eq!(Bus::from_object(&bus.to_object()).unwrap(), bus);

        let schedule = Schedule {
            id: "s1".into(),
            day: "Monday".into(),
            departure: "2024-03-01T08:15:00.123456Z"
                .parse::<pgrealm::DateTime<Utc>>()
                .unwrap(),
            arrival: None,
        };
        let object = schedule.to_object();
        assert_eq!(object.get("arrival"), Some(&Value::Null));
        assert_eq!(Schedule::from_object(&object).unwrap(), schedule);
    }

    #[test]
    fn conversion_errors_name_the_class_and_property() {
        let object = Driver {
            id: 1,
            name: "Ann".into(),
            bus: None,
        }
        .to_object()
        .with("name", Value::Null);
        assert_eq!(
            Driver::from_object(&object),
            Err(ValueError::NullIntoRequired {
                property: "Driver.name".into()
            })
        );
        let wrong_class = pgrealm::Object::new("Bus").with("id", Value::Int(1));
        let err = Driver::from_object(&wrong_class).unwrap_err().to_string();
        assert!(
            err.contains("class `Driver`") && err.contains("class `Bus`"),
            "{err}"
        );
    }
}
