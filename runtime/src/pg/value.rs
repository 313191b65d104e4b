//! One value between the realm value model and PostgreSQL's binary wire format.
//!
//! Writing: [`PgValue`] binds a [`Value`] as a parameter of whatever type the statement's
//! column really has (an int into `smallint`, `integer` or `bigint`; a string into `text`,
//! `varchar`, `json`, `jsonb`, `uuid` or an enum; a date into `timestamptz`, `timestamp` or
//! `date`), refusing every value the column cannot hold exactly.
//!
//! Reading: [`decode`] turns a column's binary value into the value of a property of a given
//! [`ScalarType`], by the column's real type, range-checked and never lossy (a `numeric` NaN, a
//! timestamp at infinity, an `f64` that is no `f32` are errors, not values).
//!
//! Conversions that are not one-to-one, and why (the same as the text path in
//! `pgrealm_schema::pgtext`, so both paths agree):
//! - `timestamp without time zone` holds UTC wall-clock time.
//! - `date` is midnight UTC; writing a date that is not midnight UTC into one is refused.
//! - a `real` column widens into an `f64` property; an `f64` written into it must be an `f32`.
//!
//! This module never builds SQL and never talks to a server.

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Timelike, Utc};
use pgrealm_schema::pgtext::parse_text;
use pgrealm_schema::{IntWidth, ScalarType, Value, ValueError};
use tokio_postgres::types::{FromSql, IsNull, Kind, ToSql, Type};
use uuid::Uuid;

use super::numeric;

type BoxError = Box<dyn StdError + Sync + Send>;

/// A [`Value`] bound as a statement parameter, written in the binary format of the parameter's
/// actual PostgreSQL type. `property` names the value in errors.
///
/// ```no_run
/// # async fn demo(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
/// use pgrealm_runtime::pg::PgValue;
/// use pgrealm_schema::Value;
///
/// let seats = Value::Int(40);
/// client
///     .execute("UPDATE bus SET seats = $1 WHERE id = 1", &[&PgValue::new(&seats, "Bus.seats")])
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct PgValue<'a> {
    value: &'a Value,
    property: &'a str,
}

impl<'a> PgValue<'a> {
    /// Bind `value`; `property` (`Bus.seats`) names it in errors.
    pub fn new(value: &'a Value, property: &'a str) -> Self {
        PgValue { value, property }
    }
}

impl ToSql for PgValue<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        encode(self.value, ty, self.property, out)
    }

    // Every type is accepted here; `encode` refuses the combinations that do not fit, with a
    // message naming the property, which `accepts` could not give.
    fn accepts(_: &Type) -> bool {
        true
    }

    fn to_sql_checked(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        self.to_sql(ty, out)
    }
}

/// Write `value` in the binary format of `ty`.
fn encode(
    value: &Value,
    ty: &Type,
    property: &str,
    out: &mut BytesMut,
) -> Result<IsNull, BoxError> {
    // A domain travels in its base type's format.
    if let Kind::Domain(base) = ty.kind() {
        return encode(value, base, property, out);
    }
    let wrong = || -> BoxError {
        Box::new(ValueError::WrongKind {
            property: property.to_owned(),
            expected: format!("a value for a column of type {}", ty.name()),
            got: value.kind().to_owned(),
        })
    };
    match value {
        Value::Null => return Ok(IsNull::Yes),
        Value::Bool(b) if *ty == Type::BOOL => out.put_u8(u8::from(*b)),
        Value::Int(i) => match *ty {
            Type::INT2 => out
                .put_i16(i16::try_from(*i).map_err(|_| out_of_range(*i, IntWidth::I16, property))?),
            Type::INT4 => out
                .put_i32(i32::try_from(*i).map_err(|_| out_of_range(*i, IntWidth::I32, property))?),
            Type::INT8 => out.put_i64(*i),
            _ => return Err(wrong()),
        },
        Value::Float(f) => match *ty {
            Type::FLOAT4 => out.put_f32(*f),
            Type::FLOAT8 => out.put_f64(f64::from(*f)),
            _ => return Err(wrong()),
        },
        Value::Double(d) => match *ty {
            Type::FLOAT8 => out.put_f64(*d),
            Type::FLOAT4 => {
                let narrow = *d as f32;
                if f64::from(narrow) != *d && !d.is_nan() {
                    return Err(Box::new(unfit(
                        property,
                        d.to_string(),
                        "real",
                        "does not fit an f32 without loss: make the column double precision",
                    )));
                }
                out.put_f32(narrow);
            }
            _ => return Err(wrong()),
        },
        Value::Decimal(d) if *ty == Type::NUMERIC => {
            return d.to_sql(ty, out);
        }
        Value::String(s) => encode_string(s, ty, property, out).ok_or_else(wrong)??,
        Value::Data(bytes) if *ty == Type::BYTEA => out.put_slice(bytes),
        Value::Date(date) => match *ty {
            Type::TIMESTAMPTZ | Type::TIMESTAMP => out.put_i64(micros_since_2000(date, property)?),
            Type::DATE => {
                if date.num_seconds_from_midnight() != 0 || date.nanosecond() != 0 {
                    return Err(Box::new(unfit(
                        property,
                        date.to_rfc3339(),
                        "date",
                        "a date column holds whole days: only midnight UTC fits",
                    )));
                }
                let days = (date.date_naive() - epoch_2000().date_naive()).num_days();
                out.put_i32(
                    i32::try_from(days)
                        .map_err(|_| unfit(property, date.to_rfc3339(), "date", "out of range"))?,
                );
            }
            _ => return Err(wrong()),
        },
        Value::Uuid(u) if *ty == Type::UUID => out.put_slice(u.as_bytes()),
        Value::Link(key) => return encode(&key.to_value(), ty, property, out),
        Value::List(_) => {
            return Err(Box::new(ValueError::WrongKind {
                property: property.to_owned(),
                expected: format!(
                    "a single value for a column of type {} (lists live in their subtable)",
                    ty.name()
                ),
                got: "list".into(),
            }))
        }
        _ => return Err(wrong()),
    }
    Ok(IsNull::No)
}

/// Strings go into every type whose binary format is its text, plus `jsonb` (a version byte
/// first) and `uuid` (parsed). `None`: this column type does not take strings.
fn encode_string(
    s: &str,
    ty: &Type,
    property: &str,
    out: &mut BytesMut,
) -> Option<Result<(), BoxError>> {
    let textual = matches!(
        *ty,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON | Type::UNKNOWN
    ) || matches!(ty.kind(), Kind::Enum(_))
        || ty.name() == "citext";
    if textual {
        out.put_slice(s.as_bytes());
        return Some(Ok(()));
    }
    match *ty {
        Type::JSONB => {
            out.put_u8(1);
            out.put_slice(s.as_bytes());
            Some(Ok(()))
        }
        Type::UUID => Some(match Uuid::parse_str(s) {
            Ok(u) => {
                out.put_slice(u.as_bytes());
                Ok(())
            }
            Err(e) => Err(Box::new(unfit(
                property,
                s.to_owned(),
                "uuid",
                &format!("not a uuid ({e})"),
            ))),
        }),
        Type::TS_VECTOR => Some(Err(Box::new(unfit(
            property,
            s.to_owned(),
            "tsvector",
            "tsvector has no text form in the binary protocol: bind it as text and cast \
             (`$1::text::tsvector`)",
        )))),
        _ => None,
    }
}

fn out_of_range(value: i64, width: IntWidth, property: &str) -> ValueError {
    let (min, max) = width.range();
    ValueError::OutOfRange {
        property: property.to_owned(),
        value: value.to_string(),
        ty: ScalarType::Int(width).rust_type().to_owned(),
        min,
        max,
    }
}

fn unfit(property: &str, text: String, pg: &str, reason: &str) -> ValueError {
    ValueError::Unparsable {
        property: property.to_owned(),
        text,
        ty: pg.to_owned(),
        reason: reason.to_owned(),
    }
}

/// PostgreSQL's timestamp epoch.
fn epoch_2000() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
        .single()
        .expect("2000-01-01 is a valid UTC time")
}

fn micros_since_2000(date: &DateTime<Utc>, property: &str) -> Result<i64, ValueError> {
    let since = date.signed_duration_since(epoch_2000());
    let micros = since
        .num_microseconds()
        .ok_or_else(|| unfit(property, date.to_rfc3339(), "timestamp", "out of range"))?;
    // PostgreSQL keeps microseconds; a finer value would be cut silently.
    if !date.nanosecond().is_multiple_of(1_000) {
        return Err(unfit(
            property,
            date.to_rfc3339(),
            "timestamp",
            "PostgreSQL keeps microseconds; this date has nanoseconds",
        ));
    }
    Ok(micros)
}

/// A column's raw binary value and its type, as a row hands it out; NULL is `None`.
#[derive(Debug, Clone)]
pub struct RawColumn<'a> {
    /// The column's type.
    pub ty: Type,
    /// The binary value.
    pub bytes: Option<&'a [u8]>,
}

impl<'a> FromSql<'a> for RawColumn<'a> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(RawColumn {
            ty: ty.clone(),
            bytes: Some(raw),
        })
    }

    fn from_sql_null(ty: &Type) -> Result<Self, BoxError> {
        Ok(RawColumn {
            ty: ty.clone(),
            bytes: None,
        })
    }

    // Raw bytes of any type: `decode` decides what they mean.
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Read a column's binary value of type `pg` into a value of a property of type `ty`. NULL
/// reads as [`Value::Null`] (the caller decides whether the property may be NULL).
pub fn decode(
    ty: ScalarType,
    pg: &Type,
    raw: Option<&[u8]>,
    property: &str,
) -> Result<Value, ValueError> {
    let Some(raw) = raw else {
        return Ok(Value::Null);
    };
    if let Kind::Domain(base) = pg.kind() {
        return decode(ty, base, Some(raw), property);
    }
    let wrong = || ValueError::WrongKind {
        property: property.to_owned(),
        expected: ty.realm_name().to_owned(),
        got: format!("a column of type {}", pg.name()),
    };
    let bad = |reason: &str| {
        unfit(
            property,
            format!("{} bytes of {}", raw.len(), pg.name()),
            pg.name(),
            reason,
        )
    };
    let fixed = |n: usize| -> Result<&[u8], ValueError> {
        if raw.len() == n {
            Ok(raw)
        } else {
            Err(bad(&format!("expected {n} bytes")))
        }
    };
    match ty {
        ScalarType::Bool if *pg == Type::BOOL => Ok(Value::Bool(fixed(1)?[0] != 0)),
        ScalarType::Int(_) => {
            let i = match *pg {
                Type::INT2 => i64::from(i16::from_be_bytes(fixed(2)?.try_into().expect("2 bytes"))),
                Type::INT4 => i64::from(i32::from_be_bytes(fixed(4)?.try_into().expect("4 bytes"))),
                Type::INT8 => i64::from_be_bytes(fixed(8)?.try_into().expect("8 bytes")),
                _ => return Err(wrong()),
            };
            pgrealm_schema::value::check_scalar(ty, Value::Int(i), property)
        }
        ScalarType::Float => match *pg {
            Type::FLOAT4 => Ok(Value::Float(f32::from_be_bytes(
                fixed(4)?.try_into().expect("4 bytes"),
            ))),
            Type::FLOAT8 => {
                let wide = f64::from_be_bytes(fixed(8)?.try_into().expect("8 bytes"));
                let narrow = wide as f32;
                if f64::from(narrow) != wide && !wide.is_nan() {
                    return Err(unfit(
                        property,
                        wide.to_string(),
                        "f32 from double precision",
                        "does not fit an f32 without loss: make the property f64",
                    ));
                }
                Ok(Value::Float(narrow))
            }
            _ => Err(wrong()),
        },
        ScalarType::Double => match *pg {
            Type::FLOAT8 => Ok(Value::Double(f64::from_be_bytes(
                fixed(8)?.try_into().expect("8 bytes"),
            ))),
            Type::FLOAT4 => Ok(Value::Double(f64::from(f32::from_be_bytes(
                fixed(4)?.try_into().expect("4 bytes"),
            )))),
            _ => Err(wrong()),
        },
        ScalarType::Decimal if *pg == Type::NUMERIC => {
            // Binary numeric is spelled out exactly as the server's text, then read by the one
            // exact decimal reader, so both paths refuse the same values for the same reasons.
            let text = numeric::to_text(raw).map_err(|reason| bad(&reason))?;
            parse_text(ScalarType::Decimal, "numeric", &text, property)
        }
        ScalarType::String => decode_string(pg, raw, property).ok_or_else(wrong)?,
        ScalarType::Data if *pg == Type::BYTEA => Ok(Value::Data(raw.to_vec())),
        ScalarType::Date => {
            let date = match *pg {
                Type::TIMESTAMPTZ | Type::TIMESTAMP => {
                    let micros = i64::from_be_bytes(fixed(8)?.try_into().expect("8 bytes"));
                    if micros == i64::MAX || micros == i64::MIN {
                        return Err(unfit(
                            property,
                            infinity(micros > 0).into(),
                            pg.name(),
                            "an infinite timestamp has no realm date equivalent",
                        ));
                    }
                    epoch_2000().checked_add_signed(Duration::microseconds(micros))
                }
                Type::DATE => {
                    let days = i32::from_be_bytes(fixed(4)?.try_into().expect("4 bytes"));
                    if days == i32::MAX || days == i32::MIN {
                        return Err(unfit(
                            property,
                            infinity(days > 0).into(),
                            "date",
                            "an infinite date has no realm date equivalent",
                        ));
                    }
                    NaiveDate::from_ymd_opt(2000, 1, 1)
                        .and_then(|d| d.checked_add_signed(Duration::days(i64::from(days))))
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                        .map(|d| d.and_utc())
                }
                _ => return Err(wrong()),
            };
            date.map(Value::Date)
                .ok_or_else(|| bad("beyond the dates chrono represents"))
        }
        ScalarType::Uuid if *pg == Type::UUID => Ok(Value::Uuid(Uuid::from_bytes(
            fixed(16)?.try_into().expect("16 bytes"),
        ))),
        _ => Err(wrong()),
    }
}

fn infinity(positive: bool) -> &'static str {
    if positive {
        "infinity"
    } else {
        "-infinity"
    }
}

/// `None`: strings are not read from this column type.
fn decode_string(pg: &Type, raw: &[u8], property: &str) -> Option<Result<Value, ValueError>> {
    let utf8 = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(|s| Value::String(s.to_owned()))
            .map_err(|e| {
                unfit(
                    property,
                    String::from_utf8_lossy(bytes).into_owned(),
                    pg.name(),
                    &e.to_string(),
                )
            })
    };
    let textual = matches!(
        *pg,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON | Type::UNKNOWN
    ) || matches!(pg.kind(), Kind::Enum(_))
        || pg.name() == "citext";
    if textual {
        return Some(utf8(raw));
    }
    match *pg {
        Type::JSONB => Some(match raw.split_first() {
            Some((1, rest)) => utf8(rest),
            _ => Err(unfit(
                property,
                String::from_utf8_lossy(raw).into_owned(),
                "jsonb",
                "unknown jsonb binary version",
            )),
        }),
        // The text PostgreSQL itself prints for a uuid: lowercase, hyphenated.
        Type::UUID => Some(
            <[u8; 16]>::try_from(raw)
                .map(|b| Value::String(Uuid::from_bytes(b).hyphenated().to_string()))
                .map_err(|_| {
                    unfit(
                        property,
                        format!("{} bytes", raw.len()),
                        "uuid",
                        "expected 16 bytes",
                    )
                }),
        ),
        Type::TS_VECTOR => Some(Err(unfit(
            property,
            format!("{} bytes of tsvector", raw.len()),
            "tsvector",
            "select tsvector columns as text (`column::text`)",
        ))),
        _ => None,
    }
}
