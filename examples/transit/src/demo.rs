//! What `transit demo` shows: the guide's routes, schedules, buses and drivers, a bus renamed
//! in PostgreSQL arriving in the realm, and a bus written through the API arriving in
//! PostgreSQL.

use pgrealm::runtime::cli::Demo;

/// The transit demo.
pub const DEMO: Demo = Demo {
    seed_sql: "
        INSERT INTO route (id, name) VALUES ('r1', 'Downtown loop'), ('r2', 'Airport express');
        INSERT INTO schedule (id, day, departure, arrival) VALUES
            ('s1', 'Monday', '2026-11-30 07:00:00+00', '2026-11-30 07:45:00+00'),
            ('s2', 'Monday', '2026-11-30 08:00:00+00', NULL),
            ('s3', 'Tuesday', '2026-12-01 09:30:00+00', NULL);
        INSERT INTO route_schedules (oid, idx, target) VALUES ('r1', 0, 's1'), ('r1', 1, 's2'), ('r2', 0, 's3');
        INSERT INTO bus (id, name, routeid) VALUES (1, 'Bus 1', 'r1'), (2, 'Bus 2', 'r2');
        INSERT INTO driver (id, name, bus) VALUES (1, 'Ann', 1), (2, 'Bo', 2);
    ",
    pg_change_sql: "UPDATE bus SET name = 'Bus 1 (express)' WHERE id = 1",
    watch_class: "Bus",
    watch_key_json: "1",
    watch_property: "name",
    watch_value_json: "\"Bus 1 (express)\"",
    api_class: "Bus",
    api_object_json: r#"{"id": 100, "name": "Demo bus", "route": "r2"}"#,
    pg_check_sql: "SELECT name FROM bus WHERE id = 100",
};
