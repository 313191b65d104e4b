// Several mistakes at once: each is reported, none hides another, and code using the structs
// reports nothing more.
pgrealm::schema! {
    pub struct Route {
        pub id: String,
    }

    pub struct Bus {
        #[primary_key]
        pub id: f32,
        #[primary_key]
        pub number: i64,
        pub seats: u8,
        #[colour = "red"]
        pub name: String,
        pub route: pgrealm::Link<Route>,
    }

    #[realm_object(table = "bus")]
    pub struct Coach {
        #[primary_key]
        pub id: i64,
    }
}

fn main() {
    // The structs and Schema still exist, so this line adds no error of its own.
    let _ = (Bus::clone, Route::clone, Schema::DDL);
}
