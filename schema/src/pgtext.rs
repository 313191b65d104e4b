//! PostgreSQL text-format values (as pgoutput and COPY send them) into realm values.
//! (Being written: see the schema helper's task.)
