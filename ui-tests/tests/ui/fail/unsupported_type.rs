use std::collections::HashMap;

pgrealm::schema! {
    pub struct Bus {
        #[primary_key]
        pub id: i64,
        pub seats: u64,
        pub tags: HashMap<String, String>,
        pub departure: chrono::DateTime<chrono::Local>,
        pub stops: Option<Vec<i64>>,
    }
}

fn main() {}
