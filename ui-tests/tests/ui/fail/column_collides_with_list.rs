// A list's column name is the suffix of its subtable (`route_schedules`), and shares the
// class's column names.
pgrealm::schema! {
    pub struct Route {
        #[primary_key]
        pub id: String,
        pub schedules: pgrealm::List<Schedule>,
        #[column = "schedules"]
        pub schedule_count: i32,
    }

    pub struct Schedule {
        #[primary_key]
        pub id: String,
    }
}

fn main() {}
