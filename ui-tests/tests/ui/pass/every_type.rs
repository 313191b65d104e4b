// Every supported field type, written with and without its crate path, from pgrealm's
// re-exports and from the crates themselves; the values round-trip through realm objects.

use pgrealm::{CompiledSchema, Link, List, RealmObject, Value};

mod plain {
    use pgrealm::{DateTime, Decimal, Link, List, Utc, Uuid};

    pgrealm::schema! {
        /// Every type, by its short name.
        pub struct Everything {
            #[primary_key]
            pub id: Uuid,
            pub flag: bool,
            pub small: i16,
            pub medium: i32,
            pub large: i64,
            pub single: f32,
            pub double: f64,
            pub text: String,
            pub bytes: Vec<u8>,
            pub when: DateTime<Utc>,
            pub amount: Decimal,
            pub other_id: Uuid,
            pub maybe: Option<i64>,
            pub maybe_text: Option<String>,
            pub maybe_bytes: Option<Vec<u8>>,
            pub owner: Link<Owner>,
            pub previous_owner: Option<Link<Owner>>,
            pub owners: List<Owner>,
            pub numbers: Vec<i64>,
            pub words: Vec<String>,
        }

        pub struct Owner {
            #[primary_key]
            pub name: String,
        }
    }
}

mod qualified {
    pgrealm::schema! {
        /// Every type, by its full path: the user's own crates and pgrealm's re-exports.
        #[realm_object(table = "everything_qualified", class = "Qualified")]
        pub struct Everything {
            #[primary_key]
            pub id: i32,
            pub when: chrono::DateTime<chrono::Utc>,
            pub when_too: pgrealm::chrono::DateTime<pgrealm::chrono::Utc>,
            pub amount: rust_decimal::Decimal,
            pub amount_too: pgrealm::Decimal,
            pub uuid: uuid::Uuid,
            pub uuid_too: ::pgrealm::Uuid,
            pub text: std::string::String,
            pub bytes: std::vec::Vec<u8>,
            pub maybe: core::option::Option<i16>,
            pub owner: pgrealm::Link<Owner>,
            pub owners: pgrealm::List<Owner>,
            pub flags: Vec<bool>,
        }

        #[realm_object(table = "owner_qualified")]
        pub struct Owner {
            #[primary_key]
            pub id: i16,
        }
    }
}

fn main() {
    let when = "1969-07-20T20:17:40.123456Z".parse().unwrap();
    let mut owners = List::new();
    owners.push_key("ann");
    let everything = plain::Everything {
        id: uuid::Uuid::from_u128(1),
        flag: true,
        small: i16::MIN,
        medium: i32::MAX,
        large: i64::MIN,
        single: 1.5,
        double: f64::INFINITY,
        text: "żółw 🐢".into(),
        bytes: vec![0, 255],
        when,
        amount: "1234567890.0123456789".parse().unwrap(),
        other_id: uuid::Uuid::nil(),
        maybe: None,
        maybe_text: Some(String::new()),
        maybe_bytes: Some(Vec::new()),
        owner: Link::new("ann"),
        previous_owner: None,
        owners,
        numbers: vec![1, -1],
        words: vec!["a".into(), "".into()],
    };
    let object = everything.to_object();
    assert_eq!(object.get("small"), Some(&Value::Int(i16::MIN.into())));
    assert_eq!(object.get("maybe"), Some(&Value::Null));
    assert_eq!(plain::Everything::from_object(&object).unwrap(), everything);
    assert_eq!(everything.primary_key(), uuid::Uuid::from_u128(1).into());

    let ddl = <plain::Schema as CompiledSchema>::DDL;
    assert!(ddl.contains("CREATE TABLE \"everything_words\""), "{ddl}");
    assert_eq!(pgrealm::render_ddl(plain::Schema::schema()), ddl);

    let qualified = qualified::Schema::schema();
    let class = qualified.class("Qualified").unwrap();
    assert_eq!(class.table, "everything_qualified");
    assert_eq!(class.properties.len(), 13);
    assert_eq!(pgrealm::render_ddl(qualified), qualified::Schema::DDL);
    assert_eq!(<qualified::Everything as RealmObject>::CLASS, "Qualified");
}
