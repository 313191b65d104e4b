//! Writes the transit schema's PostgreSQL DDL where tools can find it:
//!
//! - `$OUT_DIR/schema.sql`, for this package's own use;
//! - `<target dir>/pgrealm/transit/schema.sql`, the stable documented path (the `target`
//!   directory of the workspace, or `CARGO_TARGET_DIR`).
//!
//! The `schema!` macro itself never writes files (rust-analyzer and rustc's caching may skip a
//! macro's side effects); this script compiles the same models, through `include!`, and writes
//! their `Schema::DDL`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

// The build script only reads the DDL; the structs, impls and `schema()` go unused here.
#[allow(dead_code)]
mod models {
    include!("src/models.rs");
}

fn main() {
    println!("cargo::rerun-if-changed=src/models.rs");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_DIR");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    write(&out_dir.join("schema.sql"));
    let stable = target_dir(&out_dir)
        .join("pgrealm")
        .join("transit")
        .join("schema.sql");
    write(&stable);
}

fn write(path: &Path) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    // Rewrite only on change, so tools watching the file see real changes only.
    if fs::read_to_string(path).ok().as_deref() == Some(models::Schema::DDL) {
        return;
    }
    fs::write(path, models::Schema::DDL)
        .unwrap_or_else(|e| panic!("cannot write the DDL to {}: {e}", path.display()));
}

/// The cargo target directory this build writes into.
///
/// `OUT_DIR` is `<target>/[<triple>/]<profile>/build/<pkg>-<hash>/out`, and cargo marks
/// `<target>` itself with a `CACHEDIR.TAG` file; the nearest ancestor holding one is the target
/// directory, whether or not `--target` added a triple level. `CARGO_TARGET_DIR` (when absolute)
/// and `OUT_DIR`'s fifth ancestor are the fallbacks for layouts without the tag.
fn target_dir(out_dir: &Path) -> PathBuf {
    if let Some(dir) = out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
    {
        return dir.to_path_buf();
    }
    if let Some(dir) = env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        if dir.is_absolute() {
            return dir;
        }
    }
    out_dir.ancestors().nth(4).unwrap_or(out_dir).to_path_buf()
}
