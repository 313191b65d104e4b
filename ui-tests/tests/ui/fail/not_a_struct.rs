pgrealm::schema! {
    pub enum Direction {
        North,
        South,
    }

    pub struct Stop(i64);

    pub struct Line<T> {
        #[primary_key]
        pub id: T,
    }
}

fn main() {}
