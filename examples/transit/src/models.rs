// The transit app's realm classes: the models of the original Postgres adapter guide.
//
// This one file is the schema. The library compiles it (src/lib.rs) and so does the build
// script (build.rs, through include!), which writes the DDL file; it must therefore stay a plain
// list of items, without inner attributes or `//!` comments.

use pgrealm::{DateTime, Link, List, Utc};

pgrealm::schema! {
    /// A bus route. The guide's `route` table also has a `fare` column; it is left out of the
    /// class, so it does not sync.
    #[realm_object(table = "route")]
    pub struct Route {
        #[primary_key]
        pub id: String,
        pub name: String,
        /// The route's timetable, kept in the list subtable `route_schedules`.
        pub schedules: List<Schedule>,
    }

    /// A bus, serving at most one route: the foreign key column `routeid` becomes a link.
    #[realm_object(table = "bus")]
    pub struct Bus {
        #[primary_key]
        pub id: i64,
        pub name: String,
        #[column = "routeid"]
        pub route: Option<Link<Route>>,
    }

    /// One departure of a route.
    #[realm_object(table = "schedule")]
    pub struct Schedule {
        #[primary_key]
        pub id: String,
        /// The day of the week the departure runs on.
        pub day: String,
        pub departure: DateTime<Utc>,
        pub arrival: Option<DateTime<Utc>>,
    }

    /// A driver, assigned to at most one bus.
    #[realm_object(table = "driver")]
    pub struct Driver {
        #[primary_key]
        pub id: i64,
        pub name: String,
        pub bus: Option<Link<Bus>>,
    }
}
