pgrealm::schema! {
    #[realm_object(tabel = "bus")]
    #[derive(Hash)]
    pub struct Bus {
        #[primary_key]
        pub id: i64,
        #[colum = "bus_name"]
        pub name: String,
        #[postgres(typ = "varchar(10)")]
        pub plate: String,
    }
}

fn main() {}
