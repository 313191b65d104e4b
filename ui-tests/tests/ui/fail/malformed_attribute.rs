pgrealm::schema! {
    #[realm_object(table)]
    pub struct Bus {
        #[primary_key = "yes"]
        pub id: i64,
        #[column]
        pub name: String,
        #[column = 5]
        pub seats: i32,
        #[postgres(type = varchar)]
        pub plate: String,
    }
}

fn main() {}
