pgrealm::schema! {
    #[realm_object(table = "vehicle")]
    pub struct Bus {
        #[primary_key]
        pub id: i64,
    }

    #[realm_object(table = "vehicle")]
    pub struct Tram {
        #[primary_key]
        pub id: i64,
    }
}

fn main() {}
