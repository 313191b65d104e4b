// `Schedule` is a realm object, but of another schema: a list must stay within its own.
mod schedules {
    pgrealm::schema! {
        pub struct Schedule {
            #[primary_key]
            pub id: String,
        }
    }
}

pgrealm::schema! {
    pub struct Route {
        #[primary_key]
        pub id: String,
        pub schedules: pgrealm::List<schedules::Schedule>,
    }
}

fn main() {}
