//! Nothing here: this crate only holds `schema!`'s compile-fail tests (`tests/compile_fail.rs`).
//! trybuild builds each case against this crate's dependencies, which are kept to pgrealm's
//! schema side so that build stays small.
