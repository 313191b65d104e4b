//! The `transit` binary: the sync engine and object server for the transit schema, generated
//! from the schema by one line. `transit --help` lists the commands.

pgrealm::main!(transit::Schema, demo = transit::DEMO);
