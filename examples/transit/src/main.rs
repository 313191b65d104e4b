//! The `transit` binary. For now its one command prints the schema's PostgreSQL DDL; the sync
//! engine's commands join it as they are built.

use anyhow::bail;

const USAGE: &str = "usage: transit <command>

commands:
  ddl    print the PostgreSQL DDL of the transit schema";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ddl") => print!("{}", transit::Schema::DDL),
        Some("help" | "--help" | "-h") => println!("{USAGE}"),
        Some(other) => bail!("unknown command `{other}`\n\n{USAGE}"),
        None => bail!("no command given\n\n{USAGE}"),
    }
    Ok(())
}
