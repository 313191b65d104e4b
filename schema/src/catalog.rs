//! Comparing a live PostgreSQL catalog (read by the runtime) with a schema.
//! (Being written: see the schema helper's task.)
