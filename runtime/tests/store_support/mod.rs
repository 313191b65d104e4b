//! What the store tests share: a small transit schema, a hand-written typed class (the store
//! tests must not depend on the `schema!` macro crate), and a seeded random generator.
#![allow(dead_code)] // Each test binary uses a different part of this module.

use pgrealm_schema::{
    Class, FieldValue, IntWidth, ListItem, Object, PrimaryKey, Property, PropertyType, RealmObject,
    ScalarType, Schema, Value, ValueError,
};

pub fn int(width: IntWidth) -> PropertyType {
    PropertyType::Scalar(ScalarType::Int(width))
}

pub fn string() -> PropertyType {
    PropertyType::Scalar(ScalarType::String)
}

/// `Bus { id: i64, name: String, seats: Option<i16>, route: Option<Link<Route>>, tags: Vec<String> }`
/// and `Route { id: String, name: String, buses: List<Bus> }`.
pub fn schema() -> Schema {
    Schema::new(vec![
        Class::new("Bus")
            .property(Property::new("id", int(IntWidth::I64)).primary_key())
            .property(Property::new("name", string()))
            .property(Property::new("seats", int(IntWidth::I16)).optional())
            .property(Property::new("route", PropertyType::Link("Route".into())).optional())
            .property(Property::new(
                "tags",
                PropertyType::List(ListItem::Scalar(ScalarType::String)),
            )),
        Class::new("Route")
            .property(Property::new("id", string()).primary_key())
            .property(Property::new("name", string()))
            .property(Property::new(
                "buses",
                PropertyType::List(ListItem::Object("Bus".into())),
            )),
    ])
}

/// What `schema!` would generate for `Bus`.
#[derive(Debug, Clone, PartialEq)]
pub struct Bus {
    pub id: i64,
    pub name: String,
    pub seats: Option<i16>,
    pub route: Option<String>,
    pub tags: Vec<String>,
}

impl RealmObject for Bus {
    const CLASS: &'static str = "Bus";
    type Key = i64;

    fn primary_key(&self) -> PrimaryKey {
        PrimaryKey::Int(self.id)
    }

    fn to_object(&self) -> Object {
        Object::new("Bus")
            .with("id", self.id.to_value())
            .with("name", self.name.to_value())
            .with("seats", self.seats.to_value())
            .with(
                "route",
                self.route
                    .as_ref()
                    .map_or(Value::Null, |r| Value::Link(PrimaryKey::String(r.clone()))),
            )
            .with("tags", self.tags.to_value())
    }

    fn from_object(object: &Object) -> Result<Self, ValueError> {
        let get = |p: &str| object.get(p).cloned().unwrap_or(Value::Null);
        Ok(Bus {
            id: i64::from_value(&get("id"), "Bus.id")?,
            name: String::from_value(&get("name"), "Bus.name")?,
            seats: Option::<i16>::from_value(&get("seats"), "Bus.seats")?,
            route: match get("route") {
                Value::Link(PrimaryKey::String(s)) => Some(s),
                _ => None,
            },
            tags: Vec::<String>::from_value(&get("tags"), "Bus.tags")?,
        })
    }
}

pub fn bus(id: i64, name: &str) -> Bus {
    Bus {
        id,
        name: name.to_owned(),
        seats: None,
        route: None,
        tags: Vec::new(),
    }
}

/// splitmix64: a tiny seeded generator, so a failing run can be repeated from its printed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// A seed from the environment variable `var` if set, else from the clock; printed either way.
    pub fn from_env(var: &str) -> Self {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("the clock is after 1970")
                    .as_nanos() as u64
            });
        eprintln!("seed: {var}={seed}");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
