pgrealm::schema! {
    pub struct Bus {
        #[primary_key]
        pub id: i64,
        #[primary_key]
        pub name: String,
    }
}

fn main() {}
