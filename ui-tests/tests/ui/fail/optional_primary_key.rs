pgrealm::schema! {
    pub struct Bus {
        #[primary_key]
        pub id: Option<i64>,
        pub name: String,
    }
}

fn main() {}
