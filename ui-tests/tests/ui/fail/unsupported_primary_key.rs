pgrealm::schema! {
    pub struct Reading {
        #[primary_key]
        pub value: f64,
    }

    pub struct Switch {
        #[primary_key]
        pub on: bool,
    }
}

fn main() {}
