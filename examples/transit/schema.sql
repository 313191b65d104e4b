-- pgrealm schema (generated; do not edit)

-- class Route
CREATE TABLE "route" (
    "id" text NOT NULL PRIMARY KEY,
    "name" text NOT NULL
);
-- class Bus
CREATE TABLE "bus" (
    "id" bigint NOT NULL PRIMARY KEY,
    "name" text NOT NULL,
    "routeid" text,
    FOREIGN KEY ("routeid") REFERENCES "route" ("id") ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED
);
-- class Schedule
CREATE TABLE "schedule" (
    "id" text NOT NULL PRIMARY KEY,
    "day" text NOT NULL,
    "departure" timestamp with time zone NOT NULL,
    "arrival" timestamp with time zone
);
-- list Route.schedules of Schedule
CREATE TABLE "route_schedules" (
    "oid" text NOT NULL,
    "idx" integer NOT NULL,
    "target" text NOT NULL,
    PRIMARY KEY ("oid", "idx"),
    FOREIGN KEY ("oid") REFERENCES "route" ("id") ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    FOREIGN KEY ("target") REFERENCES "schedule" ("id") DEFERRABLE INITIALLY DEFERRED
);
-- class Driver
CREATE TABLE "driver" (
    "id" bigint NOT NULL PRIMARY KEY,
    "name" text NOT NULL,
    "bus" bigint,
    FOREIGN KEY ("bus") REFERENCES "bus" ("id") ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED
);
