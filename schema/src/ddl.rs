//! DDL rendering: the one place PostgreSQL CREATE statements are written.
//! (Being written: see the schema helper's task.)

use crate::model::Schema;

/// The whole schema as a script that applies in one go to an empty database.
pub fn render_ddl(schema: &Schema) -> String {
    let _ = schema;
    String::new()
}
