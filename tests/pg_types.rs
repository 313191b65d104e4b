//! Every realm type through a real PostgreSQL, both ways: values written with the binary
//! converters (`PgValue`) read back equal through the binary reader (`pg::decode`), and the
//! text the server prints for them (what pgoutput and COPY send) reads, through
//! `pgtext::parse_text`, to the same value. Values that cannot convert exactly are refused with
//! an error that names the property.
//!
//! Table-driven like sqlx's `test_type!`: each case is a column type, a property type and the
//! values to send, each expected back unchanged unless the case says otherwise.

mod common;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use common::{fresh_db, I16, I32, I64};
use pgrealm_runtime::pg::{describe, read_column, PgValue};
use pgrealm_schema::pgtext::parse_text;
use pgrealm_schema::{ScalarType, Value, ValueError};
use rust_decimal::Decimal;
use tokio_postgres::Client;
use uuid::Uuid;

const PROPERTY: &str = "Sample.v";

/// Write each `(sent, expected)` pair into a fresh column of `pg_type`, read it back in binary
/// and as text, and compare both with `expected`.
async fn round_trip(client: &Client, pg_type: &str, ty: ScalarType, cases: &[(Value, Value)]) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS rt; CREATE TABLE rt (id integer PRIMARY KEY, v {pg_type})"
        ))
        .await
        .unwrap();
    let format_type: String = client
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'rt'::regclass AND attname = 'v'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for (i, (sent, _)) in cases.iter().enumerate() {
        client
            .execute(
                "INSERT INTO rt (id, v) VALUES ($1, $2)",
                &[&(i as i32), &PgValue::new(sent, PROPERTY)],
            )
            .await
            .unwrap_or_else(|e| panic!("writing {sent:?} into {pg_type}: {}", describe(&e)));
    }
    let rows = client
        .query("SELECT v FROM rt ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), cases.len());
    let texts = output_texts(client, "SELECT v FROM rt ORDER BY id").await;
    for ((row, text), (sent, expected)) in rows.iter().zip(texts).zip(cases) {
        let binary = read_column(row, 0, ty, PROPERTY)
            .unwrap_or_else(|e| panic!("reading {sent:?} back from {pg_type}: {e}"));
        assert!(
            binary.same_as(expected),
            "{pg_type}: sent {sent:?}, expected {expected:?}, read {binary:?}"
        );
        if let (Value::Decimal(read), Value::Decimal(want)) = (&binary, expected) {
            assert_eq!(
                read.scale(),
                want.scale(),
                "{pg_type}: the scale of {want} is kept"
            );
        }
        let from_text = match &text {
            None => Value::Null,
            Some(text) => parse_text(ty, &format_type, text, PROPERTY)
                .unwrap_or_else(|e| panic!("{pg_type}: parsing the text {text:?}: {e}")),
        };
        assert!(
            from_text.same_as(&binary),
            "{pg_type}: the text path read {text:?} as {from_text:?}, the binary path {binary:?}"
        );
    }
}

/// The text of each row's first column as the type's output function prints it: what pgoutput
/// and COPY send. (The simple query protocol returns exactly that; a `::text` cast may differ,
/// e.g. it trims `character(n)` padding.)
async fn output_texts(client: &Client, sql: &str) -> Vec<Option<String>> {
    client
        .simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
            _ => None,
        })
        .collect()
}

/// Cases whose values come back as sent.
fn same(values: Vec<Value>) -> Vec<(Value, Value)> {
    values.into_iter().map(|v| (v.clone(), v)).collect()
}

/// The error of writing `value` into a fresh column of `pg_type`.
async fn write_error(client: &Client, pg_type: &str, value: Value) -> String {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS bad; CREATE TABLE bad (v {pg_type})"
        ))
        .await
        .unwrap();
    let result = client
        .execute(
            "INSERT INTO bad (v) VALUES ($1)",
            &[&PgValue::new(&value, PROPERTY)],
        )
        .await;
    match result {
        Ok(_) => panic!("{value:?} was written into {pg_type}; it must be refused"),
        Err(e) => describe(&e),
    }
}

/// The error of reading the value of SQL expression `sql` as a property of type `ty`, from
/// the binary path and the text path; both must refuse it.
async fn read_errors(client: &Client, sql: &str, ty: ScalarType) -> (ValueError, ValueError) {
    let select = format!("SELECT v, format_type(pg_typeof(v), NULL) FROM (SELECT {sql} AS v) s");
    let row = client.query_one(&select, &[]).await.unwrap();
    let binary = match read_column(&row, 0, ty, PROPERTY) {
        Ok(v) => panic!("{sql} read as {v:?}; it must be refused"),
        Err(pgrealm_runtime::pg::PgError::Value(e)) => e,
        Err(e) => panic!("{sql}: expected a value error, got {e}"),
    };
    let pg_type: String = row.get(1);
    let text = output_texts(client, &select).await.remove(0).unwrap();
    let text = match parse_text(ty, &pg_type, &text, PROPERTY) {
        Ok(v) => panic!("{sql} read from text as {v:?}; it must be refused"),
        Err(e) => e,
    };
    (binary, text)
}

fn dec(text: &str) -> Value {
    Value::Decimal(text.parse::<Decimal>().unwrap())
}

fn date(rfc3339: &str) -> Value {
    Value::Date(
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&Utc),
    )
}

#[tokio::test]
async fn booleans() {
    let (_db, client) = fresh_db().await;
    let values = vec![Value::Bool(true), Value::Bool(false), Value::Null];
    round_trip(&client, "boolean", ScalarType::Bool, &same(values)).await;
}

#[tokio::test]
async fn integers_of_every_width() {
    let (_db, client) = fresh_db().await;
    let edges = |min: i64, max: i64| {
        same(vec![
            Value::Int(min),
            Value::Int(-1),
            Value::Int(0),
            Value::Int(1),
            Value::Int(max),
            Value::Null,
        ])
    };
    round_trip(
        &client,
        "smallint",
        I16,
        &edges(i16::MIN.into(), i16::MAX.into()),
    )
    .await;
    round_trip(
        &client,
        "integer",
        I32,
        &edges(i32::MIN.into(), i32::MAX.into()),
    )
    .await;
    round_trip(&client, "bigint", I64, &edges(i64::MIN, i64::MAX)).await;
    // A wider property reads a narrower column.
    round_trip(
        &client,
        "smallint",
        I64,
        &edges(i16::MIN.into(), i16::MAX.into()),
    )
    .await;
    // A domain travels as its base type; its CHECK still applies.
    client
        .batch_execute("CREATE DOMAIN positive AS integer CHECK (VALUE > 0)")
        .await
        .unwrap();
    let positives = same(vec![
        Value::Int(1),
        Value::Int(i32::MAX.into()),
        Value::Null,
    ]);
    round_trip(&client, "positive", I64, &positives).await;
    let message = write_error(&client, "positive", Value::Int(0)).await;
    assert!(message.contains("violates check constraint"), "{message}");
}

#[tokio::test]
async fn an_i16_overflow_is_refused_with_an_error() {
    let (_db, client) = fresh_db().await;
    let message = write_error(&client, "smallint", Value::Int(40_000)).await;
    assert!(
        message.contains("value 40000 is out of range for `Sample.v` (i16: -32768..=32767)"),
        "{message}"
    );
    let message = write_error(&client, "integer", Value::Int(i64::MAX)).await;
    assert!(message.contains("out of range"), "{message}");

    // Reading: a bigint column holding more than an i16 property takes.
    let (binary, text) = read_errors(&client, "70000::bigint", I16).await;
    for e in [binary, text] {
        assert!(matches!(e, ValueError::OutOfRange { .. }), "{e}");
        assert!(e.to_string().contains("70000"), "{e}");
    }
}

#[tokio::test]
async fn floats_including_nan_and_infinities() {
    let (_db, client) = fresh_db().await;
    let floats = same(
        [
            0.0,
            -0.0,
            1.5,
            -3.25e-7,
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]
        .into_iter()
        .map(Value::Float)
        .chain([Value::Null])
        .collect(),
    );
    round_trip(&client, "real", ScalarType::Float, &floats).await;
    let doubles = same(
        [
            0.0,
            0.1,
            -1e300,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ]
        .into_iter()
        .map(Value::Double)
        .chain([Value::Null])
        .collect(),
    );
    round_trip(&client, "double precision", ScalarType::Double, &doubles).await;
    // A real column widens into an f64 property exactly.
    let widened = vec![
        (Value::Double(0.5), Value::Double(0.5)),
        (Value::Float(0.1), Value::Double(f64::from(0.1f32))),
    ];
    round_trip(&client, "real", ScalarType::Double, &widened).await;

    let message = write_error(&client, "real", Value::Double(0.1)).await;
    assert!(
        message.contains("does not fit an f32 without loss"),
        "{message}"
    );
}

#[tokio::test]
async fn numeric_is_exact_to_28_digits_and_refuses_what_a_decimal_cannot_hold() {
    let (_db, client) = fresh_db().await;
    let values = same(vec![
        dec("0"),
        dec("0.01234"),
        dec("-1.2300"),
        // 28 significant digits, scale 10.
        dec("123456789012345678.9012345678"),
        dec("-123456789012345678.9012345678"),
        dec("0.0000000000000000000000000001"),
        Value::Decimal(Decimal::MAX),
        Value::Decimal(Decimal::MIN),
        dec("10000000000000000000000000000"),
        Value::Null,
    ]);
    round_trip(&client, "numeric", ScalarType::Decimal, &values).await;
    let scaled = vec![
        (
            dec("123456789012345678.9012345678"),
            dec("123456789012345678.9012345678"),
        ),
        (dec("1.5"), dec("1.5000000000")),
        (dec("-7"), dec("-7.0000000000")),
    ];
    round_trip(&client, "numeric(38,10)", ScalarType::Decimal, &scaled).await;

    let (binary, text) = read_errors(&client, "'NaN'::numeric", ScalarType::Decimal).await;
    for e in [binary, text] {
        assert!(e.to_string().contains("NaN has no realm decimal"), "{e}");
    }
    let (binary, text) = read_errors(&client, "'Infinity'::numeric", ScalarType::Decimal).await;
    for e in [binary, text] {
        assert!(e.to_string().contains("infinite numeric"), "{e}");
    }
    let (binary, text) = read_errors(
        &client,
        "123456789012345678901234567890.5::numeric",
        ScalarType::Decimal,
    )
    .await;
    for e in [binary, text] {
        assert!(e.to_string().contains("significant digits"), "{e}");
    }
    let (binary, text) = read_errors(
        &client,
        "0.00000000000000000000000000001::numeric",
        ScalarType::Decimal,
    )
    .await;
    for e in [binary, text] {
        assert!(
            e.to_string().contains("digits after the decimal point"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn strings_of_every_textual_type() {
    let (_db, client) = fresh_db().await;
    let text = same(vec![
        Value::String(String::new()),
        Value::String("plain".into()),
        Value::String("🚌🚏 emoji".into()),
        Value::String("東京駅 CJK".into()),
        Value::String("e\u{301} combining, A\u{30a}, Z\u{335}\u{321}".into()),
        Value::String("quote ' backslash \\ newline \n tab \t".into()),
        Value::String("x".repeat(100_000)),
        Value::Null,
    ]);
    round_trip(&client, "text", ScalarType::String, &text).await;
    round_trip(
        &client,
        "character varying(64)",
        ScalarType::String,
        &text[..6],
    )
    .await;
    let padded = vec![(Value::String("ab".into()), Value::String("ab   ".into()))];
    round_trip(&client, "character(5)", ScalarType::String, &padded).await;
    let json = same(vec![
        Value::String(r#"{"a": [1, 2.5, "東京"], "b": null}"#.into()),
        Value::String("[]".into()),
    ]);
    round_trip(&client, "json", ScalarType::String, &json).await;
    round_trip(&client, "jsonb", ScalarType::String, &json).await;
    // uuid columns print lowercase; a string property reads that text.
    let uuids = vec![(
        Value::String("67E55044-10B1-426F-9247-BB680E5FE0C8".into()),
        Value::String("67e55044-10b1-426f-9247-bb680e5fe0c8".into()),
    )];
    round_trip(&client, "uuid", ScalarType::String, &uuids).await;
    client
        .batch_execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy 😀')")
        .await
        .unwrap();
    let moods = same(vec![
        Value::String("ok".into()),
        Value::String("happy 😀".into()),
        Value::Null,
    ]);
    round_trip(&client, "mood", ScalarType::String, &moods).await;

    let message = write_error(&client, "mood", Value::String("angry".into())).await;
    assert!(
        message.contains("invalid input value for enum mood"),
        "{message}"
    );
    let message = write_error(
        &client,
        "character varying(3)",
        Value::String("four".into()),
    )
    .await;
    assert!(message.contains("value too long"), "{message}");
    let message = write_error(&client, "uuid", Value::String("not-a-uuid".into())).await;
    assert!(message.contains("not a uuid"), "{message}");
    // PostgreSQL text cannot hold NUL: refused, not cut at the NUL.
    let message = write_error(&client, "text", Value::String("a\0b".into())).await;
    assert!(message.contains("0x00"), "{message}");
}

#[tokio::test]
async fn tsvector_columns_travel_as_text_through_the_row_helpers() {
    use pgrealm_runtime::pg::{object_from_row, select_columns, upsert_object};
    use pgrealm_schema::{Class, Object, Schema};

    let (_db, client) = fresh_db().await;
    let schema = Schema::new(vec![Class::new("Doc")
        .property(common::scalar("id", I64).primary_key())
        .property(common::scalar("words", ScalarType::String).postgres_type("tsvector"))]);
    client
        .batch_execute(&pgrealm_schema::ddl::render_ddl(&schema))
        .await
        .unwrap();
    let doc = Object::new("Doc")
        .with("id", Value::Int(1))
        .with("words", Value::String("'a':1 'fat':2 'cat':3".into()));
    upsert_object(&client, &schema, &doc).await.unwrap();
    let class = schema.class("Doc").unwrap();
    let row = client
        .query_one(&format!("SELECT {} FROM doc", select_columns(class)), &[])
        .await
        .unwrap();
    let read = object_from_row(&schema, class, &row).unwrap();
    // tsvector's own output: lexemes sorted.
    assert_eq!(
        read.get("words"),
        Some(&Value::String("'a':1 'cat':3 'fat':2".into()))
    );
}

#[tokio::test]
async fn bytea_up_to_a_mebibyte() {
    let (_db, client) = fresh_db().await;
    let mebibyte: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let values = same(vec![
        Value::Data(Vec::new()),
        Value::Data(vec![0, 1, 0x5c, 0x27, 0xff]),
        Value::Data(mebibyte),
        Value::Null,
    ]);
    round_trip(&client, "bytea", ScalarType::Data, &values).await;
}

#[tokio::test]
async fn timestamps_with_microseconds_offsets_and_dates_before_1970() {
    let (_db, client) = fresh_db().await;
    let instants = same(vec![
        date("2024-03-10T12:34:56.123456Z"),
        date("2024-03-10T12:34:56.000001+05:30"),
        date("2024-10-27T01:30:00.5-07:00"),
        date("1969-12-31T23:59:59.999999Z"),
        date("1901-12-13T20:45:52.000001Z"),
        // Asia/Kolkata had local mean time then: the text carries a seconds offset.
        date("1850-06-01T00:00:00Z"),
        date("0001-01-01T00:00:00Z"),
        Value::Date(Utc.with_ymd_and_hms(-300, 1, 1, 0, 0, 0).unwrap()),
        date("9999-12-31T23:59:59.999999Z"),
        Value::Null,
    ]);
    round_trip(
        &client,
        "timestamp with time zone",
        ScalarType::Date,
        &instants,
    )
    .await;
    round_trip(
        &client,
        "timestamp without time zone",
        ScalarType::Date,
        &instants,
    )
    .await;
    let days = same(vec![
        date("2024-02-29T00:00:00Z"),
        date("1960-02-29T00:00:00Z"),
        date("0500-01-01T00:00:00Z"),
        Value::Null,
    ]);
    round_trip(&client, "date", ScalarType::Date, &days).await;

    let message = write_error(&client, "date", date("2024-02-29T10:00:00Z")).await;
    assert!(message.contains("only midnight UTC fits"), "{message}");
    let nanos = Value::Date(
        NaiveDate::from_ymd_opt(2024, 1, 1)
            .unwrap()
            .and_hms_nano_opt(0, 0, 0, 1)
            .unwrap()
            .and_utc(),
    );
    let message = write_error(&client, "timestamptz", nanos).await;
    assert!(message.contains("keeps microseconds"), "{message}");
    for sql in [
        "'infinity'::timestamptz",
        "'-infinity'::timestamp",
        "'infinity'::date",
    ] {
        let (binary, text) = read_errors(&client, sql, ScalarType::Date).await;
        for e in [binary, text] {
            assert!(e.to_string().contains("infinit"), "{sql}: {e}");
        }
    }
}

#[tokio::test]
async fn uuids() {
    let (_db, client) = fresh_db().await;
    let values = same(vec![
        Value::Uuid(Uuid::nil()),
        Value::Uuid(Uuid::max()),
        Value::Uuid(Uuid::new_v4()),
        Value::Null,
    ]);
    round_trip(&client, "uuid", ScalarType::Uuid, &values).await;
}

#[tokio::test]
async fn values_of_the_wrong_kind_are_refused_in_both_directions() {
    let (_db, client) = fresh_db().await;
    let message = write_error(&client, "bigint", Value::String("12".into())).await;
    assert!(message.contains("`Sample.v` expects"), "{message}");
    let message = write_error(&client, "text", Value::Int(12)).await;
    assert!(message.contains("`Sample.v` expects"), "{message}");
    let row = client.query_one("SELECT 'x'::text", &[]).await.unwrap();
    let e = read_column(&row, 0, I64, PROPERTY).unwrap_err();
    assert!(e.to_string().contains("a column of type text"), "{e}");
}

/// Apply the every-type schema's DDL to the test database.
async fn every_type_tables(client: &Client) -> pgrealm_schema::Schema {
    let schema = common::every_type_schema();
    let ddl = pgrealm_schema::ddl::render_ddl(&schema);
    client
        .batch_execute(&ddl)
        .await
        .unwrap_or_else(|e| panic!("{}\n{ddl}", describe(&e)));
    schema
}

#[tokio::test]
async fn whole_objects_round_trip_through_rows_and_lists() {
    use pgrealm_runtime::pg::{object_from_row, read_list, select_columns, upsert_object};
    use pgrealm_schema::{Object, PrimaryKey};

    let (_db, mut client) = fresh_db().await;
    let schema = every_type_tables(&client).await;
    let sample = schema.class("Sample").unwrap();
    let tx = client.transaction().await.unwrap();
    for (id, label) in [(1, "one"), (2, "two")] {
        let tag = Object::new("Tag")
            .with("id", Value::Int(id))
            .with("label", Value::String(label.into()));
        upsert_object(&tx, &schema, &tag).await.unwrap();
    }
    let id = Uuid::new_v4();
    let mut object = Object::new("Sample").with("id", Value::Uuid(id));
    for property in sample.column_properties().filter(|p| !p.primary_key) {
        let value = match property.ty.scalar() {
            Some(ScalarType::Bool) => Value::Bool(true),
            Some(ScalarType::Int(w)) => Value::Int(w.range().0),
            Some(ScalarType::Float) => Value::Float(f32::NAN),
            Some(ScalarType::Double) => Value::Double(f64::NEG_INFINITY),
            Some(ScalarType::Decimal) => dec("-123456789012345678.9012345678"),
            Some(ScalarType::String) => Value::String("東京 🚌".into()),
            Some(ScalarType::Data) => Value::Data(vec![0, 255]),
            Some(ScalarType::Date) => date("1969-07-20T20:17:40.000001-04:00"),
            Some(ScalarType::Uuid) => Value::Uuid(Uuid::new_v4()),
            // The optional link.
            None => Value::Link(PrimaryKey::Int(2)),
        };
        // Optional properties stay NULL half the time: both shapes are checked.
        let value = if property.optional && property.name.contains("bool") {
            Value::Null
        } else {
            value
        };
        object.values.insert(property.name.clone(), value);
    }
    object.values.insert(
        "friends".into(),
        Value::List(vec![
            Value::Link(PrimaryKey::Int(2)),
            Value::Link(PrimaryKey::Int(1)),
            Value::Link(PrimaryKey::Int(2)),
        ]),
    );
    object.values.insert(
        "words".into(),
        Value::List(vec![
            Value::String(String::new()),
            Value::String("é".into()),
        ]),
    );
    object
        .values
        .insert("numbers".into(), Value::List(Vec::new()));
    upsert_object(&tx, &schema, &object).await.unwrap();
    tx.commit().await.unwrap();

    let row = client
        .query_one(
            &format!(
                "SELECT {} FROM sample WHERE id = $1",
                select_columns(sample)
            ),
            &[&id],
        )
        .await
        .unwrap();
    let mut read = object_from_row(&schema, sample, &row).unwrap();
    let key = PrimaryKey::Uuid(id);
    for property in sample.list_properties() {
        let list = read_list(&client, &schema, sample, property, &key)
            .await
            .unwrap();
        read.values.insert(property.name.clone(), list);
    }
    let expected = object.normalize(&schema).unwrap();
    assert_eq!(read.values.len(), expected.values.len());
    for (name, want) in &expected.values {
        let got = &read.values[name];
        assert!(got.same_as(want), "{name}: wrote {want:?}, read {got:?}");
    }

    // A NULL in a required column is refused when the row is read, not turned into a default.
    client
        .batch_execute("ALTER TABLE sample ALTER COLUMN bool_bool DROP NOT NULL; UPDATE sample SET bool_bool = NULL")
        .await
        .unwrap();
    let row = client
        .query_one(
            &format!("SELECT {} FROM sample", select_columns(sample)),
            &[],
        )
        .await
        .unwrap();
    let e = object_from_row(&schema, sample, &row).unwrap_err();
    assert!(
        e.to_string()
            .contains("`Sample.bool_bool` is required but the value is NULL"),
        "{e}"
    );
}

#[tokio::test]
async fn lists_empty_and_of_ten_thousand_entries_keep_their_order() {
    use pgrealm_runtime::pg::{read_list, write_list};
    use pgrealm_schema::PrimaryKey;

    let (_db, mut client) = fresh_db().await;
    let schema = every_type_tables(&client).await;
    let sample = schema.class("Sample").unwrap();
    let id = Uuid::new_v4();
    let key = PrimaryKey::Uuid(id);
    client
        .execute(
            "INSERT INTO tag (id, label) SELECT i, 'tag ' || i FROM generate_series(0, 9999) i",
            &[],
        )
        .await
        .unwrap();
    // Every required column of the owner, through the converters, NULLs where optional.
    let mut owner = pgrealm_schema::Object::new("Sample").with("id", Value::Uuid(id));
    for p in sample
        .column_properties()
        .filter(|p| !p.optional && !p.primary_key)
    {
        let v = match p.ty.scalar().unwrap() {
            ScalarType::Bool => Value::Bool(false),
            ScalarType::Int(_) => Value::Int(0),
            ScalarType::Float => Value::Float(0.0),
            ScalarType::Double => Value::Double(0.0),
            ScalarType::Decimal => dec("0"),
            ScalarType::String => Value::String(String::new()),
            ScalarType::Data => Value::Data(Vec::new()),
            ScalarType::Date => date("2000-01-01T00:00:00Z"),
            ScalarType::Uuid => Value::Uuid(Uuid::nil()),
        };
        owner.values.insert(p.name.clone(), v);
    }
    pgrealm_runtime::pg::upsert_object(&client, &schema, &owner)
        .await
        .unwrap();

    let words = sample.property_named("words").unwrap();
    let numbers = sample.property_named("numbers").unwrap();
    let friends = sample.property_named("friends").unwrap();
    for list in [words, numbers, friends] {
        let read = read_list(&client, &schema, sample, list, &key)
            .await
            .unwrap();
        assert_eq!(read, Value::List(Vec::new()), "{} starts empty", list.name);
    }

    // Descending, so an ORDER BY on anything but idx would show.
    let many_numbers: Vec<Value> = (0..10_000).rev().map(Value::Int).collect();
    let many_words: Vec<Value> = (0..10_000)
        .map(|i| Value::String(format!("w{}", 9_999 - i)))
        .collect();
    let many_friends: Vec<Value> = (0..10_000)
        .map(|i| Value::Link(PrimaryKey::Int((i * 7_919) % 10_000)))
        .collect();
    let tx = client.transaction().await.unwrap();
    write_list(&tx, &schema, sample, numbers, &key, &many_numbers)
        .await
        .unwrap();
    write_list(&tx, &schema, sample, words, &key, &many_words)
        .await
        .unwrap();
    write_list(&tx, &schema, sample, friends, &key, &many_friends)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    for (list, items) in [
        (numbers, &many_numbers),
        (words, &many_words),
        (friends, &many_friends),
    ] {
        let read = read_list(&client, &schema, sample, list, &key)
            .await
            .unwrap();
        assert!(
            read.same_as(&Value::List(items.clone())),
            "{} reads back in order",
            list.name
        );
    }
    let count: i64 = client
        .query_one(
            "SELECT count(*) FROM sample_numbers WHERE idx BETWEEN 0 AND 9999",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 10_000, "idx runs densely from 0");

    // Rewriting replaces the whole list, down to empty.
    write_list(&client, &schema, sample, numbers, &key, &[])
        .await
        .unwrap();
    let read = read_list(&client, &schema, sample, numbers, &key)
        .await
        .unwrap();
    assert_eq!(read, Value::List(Vec::new()));
    // A value the list's type cannot hold is refused before anything is written.
    let e = write_list(
        &client,
        &schema,
        sample,
        numbers,
        &key,
        &[Value::String("1".into())],
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("`Sample.numbers` expects int"),
        "{e}"
    );
}

mod properties {
    //! Property-based round trips of the two types with the most room for subtle loss.

    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    /// Bounded so the suite stays quick; each case is one write and one read.
    const CASES: u32 = 64;

    fn decimals() -> impl Strategy<Value = Decimal> {
        // Any 96-bit mantissa with any scale a Decimal takes.
        (any::<i128>(), 0u32..=28).prop_map(|(m, scale)| {
            let m = m % (1i128 << 96);
            Decimal::from_i128_with_scale(m, scale)
        })
    }

    fn instants() -> impl Strategy<Value = DateTime<Utc>> {
        // From 4000 BC to 9999 AD, in microseconds (what PostgreSQL keeps).
        let min = Utc
            .with_ymd_and_hms(-3999, 1, 1, 0, 0, 0)
            .unwrap()
            .timestamp_micros();
        let max = Utc
            .with_ymd_and_hms(9999, 12, 31, 23, 59, 59)
            .unwrap()
            .timestamp_micros();
        (min..=max).prop_map(|us| DateTime::from_timestamp_micros(us).unwrap())
    }

    /// Run `cases` of `strategy` through a `pg_type` column: binary and text reads must equal
    /// the value written.
    fn check<S>(pg_type: &'static str, ty: ScalarType, strategy: S, to_value: fn(S::Value) -> Value)
    where
        S: Strategy,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = runtime.block_on(async {
            // The database outlives its TestDb handle: the cluster owns it.
            let (_db, client) = fresh_db().await;
            client
                .batch_execute(&format!("CREATE TABLE p (v {pg_type})"))
                .await
                .unwrap();
            client
        });
        let mut runner = TestRunner::new(Config {
            cases: CASES,
            ..Config::default()
        });
        runner
            .run(&strategy, |input| {
                let value = to_value(input);
                runtime.block_on(async {
                    client.batch_execute("TRUNCATE p").await.unwrap();
                    client
                        .execute(
                            "INSERT INTO p (v) VALUES ($1)",
                            &[&PgValue::new(&value, PROPERTY)],
                        )
                        .await
                        .map_err(|e| TestCaseError::fail(describe(&e)))?;
                    let row = client.query_one("SELECT v FROM p", &[]).await.unwrap();
                    let binary = read_column(&row, 0, ty, PROPERTY)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let text = output_texts(&client, "SELECT v FROM p")
                        .await
                        .remove(0)
                        .unwrap();
                    let from_text = parse_text(ty, pg_type, &text, PROPERTY)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(&binary, &value, "binary read of {:?}", value);
                    prop_assert_eq!(&from_text, &value, "text {:?}", text);
                    if let (Value::Decimal(read), Value::Decimal(sent)) = (&binary, &value) {
                        prop_assert_eq!(read.scale(), sent.scale());
                    }
                    Ok(())
                })
            })
            .unwrap();
    }

    #[test]
    fn decimals_round_trip_exactly() {
        check("numeric", ScalarType::Decimal, decimals(), Value::Decimal);
    }

    #[test]
    fn timestamps_round_trip_exactly() {
        check(
            "timestamp with time zone",
            ScalarType::Date,
            instants(),
            Value::Date,
        );
        check(
            "timestamp without time zone",
            ScalarType::Date,
            instants(),
            Value::Date,
        );
    }
}
