pgrealm::schema! {
    pub struct Bus {
        #[primary_key]
        pub id: i64,
        #[column = "route"]
        pub route_name: String,
        pub route: String,
    }
}

fn main() {}
