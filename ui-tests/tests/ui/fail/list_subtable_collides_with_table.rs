// Route's list `schedules` lives in the subtable `route_schedules`, the table Timetable asks for.
pgrealm::schema! {
    pub struct Route {
        #[primary_key]
        pub id: String,
        pub schedules: pgrealm::List<Timetable>,
    }

    #[realm_object(table = "route_schedules")]
    pub struct Timetable {
        #[primary_key]
        pub id: String,
    }
}

fn main() {}
