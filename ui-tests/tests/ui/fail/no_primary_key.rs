pgrealm::schema! {
    pub struct Bus {
        pub id: i64,
        pub name: String,
    }
}

fn main() {}
