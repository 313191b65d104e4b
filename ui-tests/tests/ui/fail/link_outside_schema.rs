// `Route` is a realm object, but of another schema: a link must stay within its own.
mod routes {
    pgrealm::schema! {
        pub struct Route {
            #[primary_key]
            pub id: String,
        }
    }
}

pgrealm::schema! {
    pub struct Bus {
        #[primary_key]
        pub id: i64,
        pub route: Option<pgrealm::Link<routes::Route>>,
    }
}

fn main() {}
