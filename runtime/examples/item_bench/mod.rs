//! What the PostgreSQL benches (`bench_pg2realm`, `bench_remote`) share: the one-table `Item`
//! schema they sync, its DDL, and the allocator of the generated binary.

use pgrealm_schema::{Class, IntWidth, Property, PropertyType, ScalarType, Schema};

/// The allocator the generated binary uses (`pgrealm::main!`), so the figures are its.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One class, `Item` (table `item`): a key, a name and a number.
pub fn schema() -> Schema {
    let scalar = PropertyType::Scalar;
    Schema::new(vec![Class::new("Item")
        .table("item")
        .property(Property::new("id", scalar(ScalarType::Int(IntWidth::I64))).primary_key())
        .property(Property::new("name", scalar(ScalarType::String)))
        .property(Property::new(
            "n",
            scalar(ScalarType::Int(IntWidth::I64)),
        ))])
}

/// The `item` table, with a `user_id` column for routing by template.
pub const DDL: &str =
    "CREATE TABLE item (id bigint PRIMARY KEY, name text NOT NULL, n bigint NOT NULL, \
                   user_id text NOT NULL)";

/// `BENCH_ROWS`, or `default`.
pub fn rows(default: i64) -> i64 {
    std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
