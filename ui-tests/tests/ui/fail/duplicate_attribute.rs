pgrealm::schema! {
    #[realm_object(table = "bus")]
    #[realm_object(table = "buses")]
    pub struct Bus {
        #[primary_key]
        #[primary_key]
        pub id: i64,
        #[column = "name"]
        #[column = "bus_name"]
        pub name: String,
    }
}

fn main() {}
