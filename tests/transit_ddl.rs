//! The transit example's DDL: a snapshot of it, and the checks that every copy of it agrees —
//! the committed `examples/transit/schema.sql`, the file the build script writes under the
//! target directory, and the schema model `Schema::schema()` builds at run time.

use pgrealm::CompiledSchema;
use std::path::PathBuf;

const REFRESH: &str = "cargo run -p transit -- ddl > examples/transit/schema.sql";

#[test]
fn transit_ddl_snapshot() {
    insta::assert_snapshot!(transit::Schema::DDL);
}

#[test]
fn committed_schema_sql_matches_the_models() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/transit/schema.sql");
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; create it with `{REFRESH}`",
            path.display()
        )
    });
    assert!(
        committed == transit::Schema::DDL,
        "{} is out of date with examples/transit/src/models.rs; refresh it with `{REFRESH}` \
         and commit it",
        path.display()
    );
}

#[test]
fn build_script_writes_the_ddl_at_the_documented_path() {
    // Integration tests get `<target dir>/tmp` as CARGO_TARGET_TMPDIR.
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target directory")
        .to_path_buf();
    let path = target.join(transit::DDL_FILE);
    let written = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the transit build script did not write {}: {e}",
            path.display()
        )
    });
    assert_eq!(written, transit::Schema::DDL);
}

#[test]
fn the_run_time_schema_renders_the_compile_time_ddl() {
    let schema = transit::Schema::schema();
    assert_eq!(
        pgrealm::render_ddl(schema),
        <transit::Schema as CompiledSchema>::DDL
    );
    let names: Vec<_> = schema.classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["Route", "Bus", "Schedule", "Driver"]);
    let bus = schema.class("Bus").unwrap();
    assert_eq!(bus.property_named("route").unwrap().column, "routeid");
}
