//! PostgreSQL text-format values (as pgoutput and COPY send them) into realm values.
//!
//! The replication stream and the initial COPY hand us every column as text, spelled by the
//! column type's output function. This module owns reading that text back, exactly: a value that
//! does not fit its property (an integer beyond the property's width, a numeric with more digits
//! than a realm decimal holds, an infinite timestamp) is an error with a reason, never a rounded
//! or truncated value. It expects the server's default output settings: `DateStyle = ISO`
//! (pgoutput and COPY use the session's, which is ISO unless someone changed it) and
//! `bytea_output = hex` (the older `escape` format is read too).
//!
//! Conversions that are not one-to-one, and why:
//! - `timestamp without time zone` holds no zone; its wall-clock time is read as UTC, which is
//!   what storing a UTC `DateTime` into it writes.
//! - `date` is read as midnight UTC of that day.
//! - a `real` column read into an `f64` property is widened from the `f32` it holds, as the
//!   binary protocol would, rather than re-parsed as a (different) `f64`.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::types::{normalize_postgres_type, ScalarType};
use crate::value::{PrimaryKey, Value, ValueError};

/// A column's PostgreSQL type, spelled once as `format_type()` does (see
/// [`normalize_postgres_type`]), so that reading a value does not normalise the name again:
/// build it once per column, then call [`parse_pg_text`] for every value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgType {
    /// The normalised spelling, e.g. `character varying(64)`.
    normalized: String,
    /// The length of the name without its modifier (`character varying`).
    base_len: usize,
}

impl PgType {
    /// Normalise `pg_type` (`int8`, `varchar(64)`, `numeric(38,10)`, `mood`, …).
    pub fn new(pg_type: &str) -> Self {
        let normalized = normalize_postgres_type(pg_type);
        let base_len = normalized
            .split('(')
            .next()
            .unwrap_or_default()
            .trim_end()
            .len();
        PgType {
            normalized,
            base_len,
        }
    }

    /// The normalised spelling, modifier included.
    pub fn as_str(&self) -> &str {
        &self.normalized
    }

    /// The name without its modifier (`numeric` for `numeric(38,10)`).
    pub fn base(&self) -> &str {
        self.normalized[..self.base_len].trim_start()
    }
}

/// Read the text PostgreSQL prints for a column of type `pg_type` (as `format_type()` spells it,
/// e.g. `bigint`, `character varying(64)`, `numeric(38,10)`, or a user-defined type such as
/// `mood`) into a value of the property's type. `property` names the property in errors.
///
/// This normalises `pg_type` on every call; a caller reading many values of one column builds a
/// [`PgType`] once and calls [`parse_pg_text`].
///
/// ```
/// use pgrealm_schema::pgtext::parse_text;
/// use pgrealm_schema::{IntWidth, ScalarType, Value, ValueError};
///
/// let v = parse_text(ScalarType::Int(IntWidth::I64), "integer", "-42", "Bus.id").unwrap();
/// assert_eq!(v, Value::Int(-42));
/// let too_big = parse_text(ScalarType::Int(IntWidth::I16), "bigint", "70000", "Bus.seats");
/// assert!(matches!(too_big, Err(ValueError::OutOfRange { .. })));
/// ```
pub fn parse_text(
    ty: ScalarType,
    pg_type: &str,
    text: &str,
    property: &str,
) -> Result<Value, ValueError> {
    parse_pg_text(ty, &PgType::new(pg_type), text, property)
}

/// [`parse_text`] for a column type normalised once ([`PgType`]). Nothing is formatted or
/// allocated besides the value itself unless the text is refused.
///
/// ```
/// use pgrealm_schema::pgtext::{parse_pg_text, PgType};
/// use pgrealm_schema::{IntWidth, ScalarType, Value};
///
/// let column = PgType::new("int8");
/// let v = parse_pg_text(ScalarType::Int(IntWidth::I64), &column, "7", "Bus.id").unwrap();
/// assert_eq!(v, Value::Int(7));
/// ```
pub fn parse_pg_text(
    ty: ScalarType,
    pg_type: &PgType,
    text: &str,
    property: &str,
) -> Result<Value, ValueError> {
    let pg = pg_type.as_str();
    let base = pg_type.base();
    let fail = |reason: String| ValueError::Unparsable {
        property: property.to_owned(),
        text: excerpt(text),
        ty: format!("{} from {pg}", ty.rust_type()),
        reason,
    };
    match ty {
        ScalarType::Bool => match text {
            "t" | "true" => Ok(Value::Bool(true)),
            "f" | "false" => Ok(Value::Bool(false)),
            _ => Err(fail("a boolean is `t` or `f`".into())),
        },
        ScalarType::Int(width) => {
            let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(fail("not an integer".into()));
            }
            let (min, max) = width.range();
            let out_of_range = || ValueError::OutOfRange {
                property: property.to_owned(),
                value: excerpt(text),
                ty: ty.rust_type().to_owned(),
                min,
                max,
            };
            // All digits, so the only way parsing fails is overflow.
            let value: i128 = text.parse().map_err(|_| out_of_range())?;
            if value < i128::from(min) || value > i128::from(max) {
                return Err(out_of_range());
            }
            Ok(Value::Int(value as i64))
        }
        ScalarType::Float | ScalarType::Double if base == "numeric" => Err(fail(
            "numeric is exact and a float is not: read it into a Decimal property".into(),
        )),
        ScalarType::Float => {
            let wide = parse_float(text).ok_or_else(|| fail("not a number".into()))?;
            if base != "double precision" {
                // The shortest text of an f32 names that f32: parse it as one.
                return Ok(Value::Float(
                    parse_f32(text, wide).ok_or_else(|| fail("not a number".into()))?,
                ));
            }
            // A double that an f32 cannot hold exactly is refused, never rounded.
            let narrow = wide as f32;
            if f64::from(narrow) != wide && !wide.is_nan() {
                return Err(fail(
                    "does not fit an f32 without loss: make the property f64".into(),
                ));
            }
            Ok(Value::Float(narrow))
        }
        ScalarType::Double => {
            let value = parse_float(text).ok_or_else(|| fail("not a number".into()))?;
            if base == "real" {
                // The shortest text of an f32 names that f32, not the nearest f64.
                let narrow = parse_f32(text, value).ok_or_else(|| fail("not a number".into()))?;
                return Ok(Value::Double(narrow.into()));
            }
            Ok(Value::Double(value))
        }
        ScalarType::Decimal => parse_decimal(text).map(Value::Decimal).map_err(fail),
        ScalarType::String => Ok(Value::String(text.to_owned())),
        ScalarType::Data => parse_bytea(text).map(Value::Data).map_err(fail),
        ScalarType::Date => parse_timestamp(text).map(Value::Date).map_err(fail),
        ScalarType::Uuid => Uuid::parse_str(text)
            .map(Value::Uuid)
            .map_err(|e| fail(format!("not a uuid ({e})"))),
    }
}

/// Read a primary key (or a link's target key, or a list subtable's `oid`/`target`) from text.
pub fn parse_key_text(
    ty: ScalarType,
    pg_type: &str,
    text: &str,
    property: &str,
) -> Result<PrimaryKey, ValueError> {
    parse_key_pg_text(ty, &PgType::new(pg_type), text, property)
}

/// [`parse_key_text`] for a column type normalised once ([`PgType`]).
pub fn parse_key_pg_text(
    ty: ScalarType,
    pg_type: &PgType,
    text: &str,
    property: &str,
) -> Result<PrimaryKey, ValueError> {
    let value = parse_pg_text(ty, pg_type, text, property)?;
    PrimaryKey::from_value(&value).ok_or_else(|| ValueError::WrongKind {
        property: property.to_owned(),
        expected: "an int, string or uuid primary key".into(),
        got: value.kind().into(),
    })
}

/// At most a few hundred characters of the offending text: enough to recognise it, without
/// carrying a megabyte of bytea around in an error.
fn excerpt(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `real` / `double precision` output, including PostgreSQL's spelling of the special values.
fn parse_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ if text
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') =>
        {
            None
        }
        _ => text.parse().ok(),
    }
}

/// The f32 a `real` column's text names; `special` is the text already read by [`parse_float`].
fn parse_f32(text: &str, special: f64) -> Option<f32> {
    if special.is_nan() || special.is_infinite() {
        return Some(special as f32);
    }
    text.parse().ok()
}

/// `numeric` output (`-123.4500`), read digit by digit into a Decimal; never through f64.
fn parse_decimal(text: &str) -> Result<Decimal, String> {
    match text {
        "NaN" => return Err("numeric NaN has no realm decimal equivalent".into()),
        "Infinity" | "-Infinity" => {
            return Err("an infinite numeric has no realm decimal equivalent".into())
        }
        _ => {}
    }
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int_part, frac_part) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int_part.is_empty() && frac_part.is_empty()
        || !all_digits(int_part)
        || !all_digits(frac_part)
    {
        return Err("not a number".into());
    }
    // Trailing zeros of the fraction are kept (they are the value's scale) unless the scale
    // would exceed what a Decimal holds; dropping them then changes no value.
    let mut frac = frac_part;
    while frac.len() > Decimal::MAX_SCALE as usize && frac.ends_with('0') {
        frac = &frac[..frac.len() - 1];
    }
    if frac.len() > Decimal::MAX_SCALE as usize {
        return Err(format!(
            "{} digits after the decimal point; a realm decimal holds at most {}",
            frac.len(),
            Decimal::MAX_SCALE
        ));
    }
    let digits = format!("{int_part}{frac}");
    let significant = digits.trim_start_matches('0');
    let too_many = || {
        format!(
            "{} significant digits; a realm decimal holds at most 28 (29 below \
             79228162514264337593543950335)",
            significant.len()
        )
    };
    if significant.len() > 29 {
        return Err(too_many());
    }
    let mantissa: i128 = if significant.is_empty() {
        0
    } else {
        significant.parse().map_err(|_| too_many())?
    };
    let mantissa = if negative { -mantissa } else { mantissa };
    Decimal::try_from_i128_with_scale(mantissa, frac.len() as u32).map_err(|_| too_many())
}

/// `bytea` output: hex (`\x0a0b`, the default) or the older escape format.
fn parse_bytea(text: &str) -> Result<Vec<u8>, String> {
    if let Some(hex) = text.strip_prefix("\\x") {
        if hex.len() % 2 != 0 {
            return Err("hex bytea has an odd number of digits".into());
        }
        return hex
            .as_bytes()
            .chunks(2)
            .map(|pair| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|s| u8::from_str_radix(s, 16).ok())
                    .ok_or_else(|| "hex bytea holds a character that is not a hex digit".into())
            })
            .collect();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
        } else if bytes.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let octal = bytes
                .get(i + 1..i + 4)
                .and_then(|o| std::str::from_utf8(o).ok())
                .and_then(|o| u8::from_str_radix(o, 8).ok())
                .ok_or(
                    "escape-format bytea has a backslash not followed by \\ or 3 octal digits",
                )?;
            out.push(octal);
            i += 4;
        }
    }
    Ok(out)
}

const ISO_HINT: &str = "expected PostgreSQL's ISO output (DateStyle = ISO), such as \
     2024-01-02 03:04:05.123456+00, 2024-01-02 03:04:05 or 2024-01-02";

/// `timestamptz`, `timestamp` or `date` output with `DateStyle = ISO`: `2024-01-02
/// 03:04:05.123456+05:30`, `+05` or `+05:53:28` offsets, an optional ` BC` suffix, no offset
/// meaning UTC, no time meaning midnight.
fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, String> {
    if text == "infinity" || text == "-infinity" {
        return Err(format!(
            "{text} has no realm date equivalent; store a real date, or make the column \
             reject infinite values"
        ));
    }
    let (text, bc) = match text.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (text, false),
    };
    let (date, time) = match text.split_once([' ', 'T']) {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };

    let mut parts = date.splitn(3, '-');
    let mut field = |min_len: usize| {
        parts
            .next()
            .filter(|p| p.len() >= min_len && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u32>().ok())
    };
    let (Some(year), Some(month), Some(day)) = (field(4), field(2), field(2)) else {
        return Err(ISO_HINT.into());
    };
    // Year 1 BC is year 0 of the proleptic Gregorian calendar chrono counts in.
    let year = i32::try_from(year).map_err(|_| "year out of range".to_string())?;
    let year = if bc { 1 - year } else { year };
    if year < NaiveDate::MIN.year() || year > NaiveDate::MAX.year() {
        return Err(format!(
            "the year is outside the range a realm date holds ({} BC to {} AD)",
            1 - NaiveDate::MIN.year(),
            NaiveDate::MAX.year()
        ));
    }
    let date = NaiveDate::from_ymd_opt(year, month, day)
        .ok_or_else(|| format!("not a valid date ({ISO_HINT})"))?;

    let (clock, offset) = match time {
        None => (NaiveTime::MIN, 0),
        Some(time) => {
            let split = time.find(['+', '-']).unwrap_or(time.len());
            let (clock, offset) = time.split_at(split);
            (parse_clock(clock)?, parse_offset(offset)?)
        }
    };
    let offset = FixedOffset::east_opt(offset).ok_or("time zone offset out of range")?;
    offset
        .from_local_datetime(&NaiveDateTime::new(date, clock))
        .single()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| "outside the range a realm date holds".into())
}

/// `HH:MM:SS[.ffffff]`.
fn parse_clock(clock: &str) -> Result<NaiveTime, String> {
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let fields: Vec<&str> = hms.split(':').collect();
    let number = |s: &str| {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    let [Some(h), Some(m), Some(s)] = [0, 1, 2].map(|i| fields.get(i).and_then(|f| number(f)))
    else {
        return Err(ISO_HINT.into());
    };
    if fields.len() != 3 || fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ISO_HINT.into());
    }
    let nanos = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<u32>().map_err(|_| ISO_HINT.to_string())?
            * 10u32.pow(9 - fraction.len() as u32)
    };
    NaiveTime::from_hms_nano_opt(h, m, s, nanos).ok_or_else(|| ISO_HINT.into())
}

/// `+HH`, `+HH:MM` or `+HH:MM:SS` (or empty: UTC), in seconds east of UTC.
fn parse_offset(offset: &str) -> Result<i32, String> {
    if offset.is_empty() {
        return Ok(0);
    }
    let (sign, rest) = offset.split_at(1);
    let mut seconds = 0;
    let mut fields = 0;
    for (i, part) in rest.split(':').enumerate() {
        if i > 2 || part.len() != 2 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ISO_HINT.into());
        }
        let n: i32 = part.parse().map_err(|_| ISO_HINT.to_string())?;
        seconds += n * [3600, 60, 1][i];
        fields += 1;
    }
    if fields == 0 {
        return Err(ISO_HINT.into());
    }
    Ok(if sign == "-" { -seconds } else { seconds })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::IntWidth;
    use chrono::Timelike;
    use proptest::prelude::*;

    fn parse(ty: ScalarType, pg: &str, text: &str) -> Result<Value, ValueError> {
        parse_text(ty, pg, text, "T.p")
    }
    fn date(text: &str) -> DateTime<Utc> {
        match parse(ScalarType::Date, "timestamp with time zone", text) {
            Ok(Value::Date(d)) => d,
            other => panic!("{text}: {other:?}"),
        }
    }
    fn reason(result: Result<Value, ValueError>) -> String {
        match result {
            Err(ValueError::Unparsable { reason, .. }) => reason,
            other => panic!("expected Unparsable, got {other:?}"),
        }
    }

    #[test]
    fn a_column_type_is_normalised_once_and_reads_the_same() {
        let numeric = PgType::new(" DECIMAL(38,10)");
        assert_eq!(numeric.as_str(), "numeric(38,10)");
        assert_eq!(numeric.base(), "numeric");
        let varchar = PgType::new("varchar (64)");
        assert_eq!(varchar.base(), "character varying");
        assert_eq!(
            PgType::new("timestamptz").base(),
            "timestamp with time zone"
        );
        assert_eq!(PgType::new("").base(), "");
        // Same values, same refusals, same messages as the per-call spelling.
        let cases = [
            (ScalarType::Double, "float4", "0.1"),
            (ScalarType::Float, "float8", "0.1"),
            (ScalarType::Double, "decimal(5,2)", "1.5"),
            (ScalarType::Int(IntWidth::I16), "int8", "70000"),
            (ScalarType::Decimal, "numeric(38,10)", "NaN"),
            (ScalarType::Uuid, "uuid", "nope"),
            (ScalarType::String, "varchar(64)", "bus"),
        ];
        for (ty, pg, text) in cases {
            assert_eq!(
                parse_pg_text(ty, &PgType::new(pg), text, "T.p"),
                parse(ty, pg, text),
                "{pg} {text}"
            );
        }
        let err = parse_pg_text(ScalarType::Uuid, &PgType::new("UUID"), "nope", "T.p")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot read \"nope\" as Uuid from uuid for `T.p`"),
            "{err}"
        );
        assert_eq!(
            parse_key_pg_text(
                ScalarType::Int(IntWidth::I64),
                &PgType::new("int4"),
                "9",
                "T.p"
            ),
            Ok(PrimaryKey::Int(9))
        );
    }

    #[test]
    fn booleans_and_integers() {
        assert_eq!(
            parse(ScalarType::Bool, "boolean", "t"),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            parse(ScalarType::Bool, "boolean", "f"),
            Ok(Value::Bool(false))
        );
        assert!(parse(ScalarType::Bool, "boolean", "yes").is_err());
        let i64t = ScalarType::Int(IntWidth::I64);
        assert_eq!(
            parse(i64t, "bigint", "-9223372036854775808"),
            Ok(Value::Int(i64::MIN))
        );
        assert_eq!(
            parse(i64t, "int8", "9223372036854775807"),
            Ok(Value::Int(i64::MAX))
        );
        assert!(matches!(
            parse(i64t, "numeric", "9223372036854775808"),
            Err(ValueError::OutOfRange { .. })
        ));
        assert!(matches!(
            parse(i64t, "numeric", &"9".repeat(60)),
            Err(ValueError::OutOfRange { .. })
        ));
        let err = parse(ScalarType::Int(IntWidth::I16), "bigint", "70000").unwrap_err();
        assert_eq!(
            err.to_string(),
            "value 70000 is out of range for `T.p` (i16: -32768..=32767)"
        );
        assert!(matches!(
            parse(i64t, "bigint", "1.5"),
            Err(ValueError::Unparsable { .. })
        ));
        assert!(parse(i64t, "bigint", "").is_err());
        assert!(parse(i64t, "bigint", "-").is_err());
    }

    #[test]
    fn floats_with_special_values() {
        let double = |t: &str| parse(ScalarType::Double, "double precision", t);
        assert!(matches!(double("NaN"), Ok(Value::Double(f)) if f.is_nan()));
        assert_eq!(double("Infinity"), Ok(Value::Double(f64::INFINITY)));
        assert_eq!(double("-Infinity"), Ok(Value::Double(f64::NEG_INFINITY)));
        assert_eq!(double("1e-300"), Ok(Value::Double(1e-300)));
        assert_eq!(double("-0"), Ok(Value::Double(-0.0)));
        assert!(double("abc").is_err());
        // A real column's text widens from the f32 it names.
        assert_eq!(
            parse(ScalarType::Double, "real", "0.1"),
            Ok(Value::Double(f64::from(0.1f32)))
        );
        assert_eq!(
            parse(ScalarType::Float, "real", "3.4028235e+38"),
            Ok(Value::Float(f32::MAX))
        );
        assert!(matches!(
            parse(ScalarType::Float, "real", "NaN"),
            Ok(Value::Float(f)) if f.is_nan()
        ));
        assert!(reason(parse(ScalarType::Float, "double precision", "0.1")).contains("f32"));
        assert!(reason(parse(ScalarType::Double, "numeric", "0.1")).contains("Decimal"));
    }

    #[test]
    fn numerics_are_exact_or_refused() {
        let dec = |t: &str| parse(ScalarType::Decimal, "numeric(38,10)", t);
        let d = |s: &str| Value::Decimal(s.parse().unwrap());
        assert_eq!(dec("123.4500000000"), Ok(d("123.4500000000")));
        assert_eq!(dec("-0.0000000001"), Ok(d("-0.0000000001")));
        // 28 significant digits with scale 10.
        let max = "123456789012345678.9012345678";
        assert_eq!(
            dec(max),
            Ok(Value::Decimal(Decimal::from_str_exact(max).unwrap()))
        );
        match dec("1.50") {
            Ok(Value::Decimal(v)) => assert_eq!(v.scale(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            dec("79228162514264337593543950335"),
            Ok(Value::Decimal(Decimal::MAX))
        );
        assert!(reason(dec("79228162514264337593543950336")).contains("significant digits"));
        assert!(reason(dec("1234567890123456789012345678901.5")).contains("32 significant"));
        assert!(reason(dec("0.00000000000000000000000000001")).contains("29 digits after"));
        // Trailing zeros beyond the scale limit change nothing and are dropped.
        assert_eq!(dec(&format!("1.{}", "0".repeat(40))), Ok(d("1")));
        assert!(reason(dec("NaN")).contains("NaN"));
        assert!(reason(dec("Infinity")).contains("infinite"));
        assert!(dec("1e5").is_err());
        assert!(dec(".").is_err());
        assert_eq!(dec(".5"), Ok(d("0.5")));
        assert_eq!(dec("0.0"), Ok(d("0.0")));
    }

    #[test]
    fn text_likes_bytea_and_uuids() {
        for pg in [
            "text",
            "character varying(64)",
            "jsonb",
            "mood",
            "character(3)",
        ] {
            assert_eq!(
                parse(ScalarType::String, pg, "héllo 🚌 "),
                Ok(Value::String("héllo 🚌 ".into()))
            );
        }
        assert_eq!(
            parse(ScalarType::Data, "bytea", "\\x0a0bff"),
            Ok(Value::Data(vec![10, 11, 255]))
        );
        assert_eq!(
            parse(ScalarType::Data, "bytea", "\\x"),
            Ok(Value::Data(vec![]))
        );
        // bytea_output = 'escape', as PostgreSQL 15 prints '\x0a5cff41'.
        assert_eq!(
            parse(ScalarType::Data, "bytea", "\\012\\\\\\377A"),
            Ok(Value::Data(vec![10, b'\\', 255, b'A']))
        );
        assert_eq!(
            parse(ScalarType::Data, "bytea", "a\\\\b\\000\\377"),
            Ok(Value::Data(vec![b'a', b'\\', b'b', 0, 255]))
        );
        assert!(parse(ScalarType::Data, "bytea", "\\x0").is_err());
        assert!(parse(ScalarType::Data, "bytea", "\\xzz").is_err());
        let id = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        assert_eq!(
            parse(ScalarType::Uuid, "uuid", id),
            Ok(Value::Uuid(Uuid::parse_str(id).unwrap()))
        );
        assert!(parse(ScalarType::Uuid, "uuid", "nope").is_err());
        assert_eq!(
            parse_key_text(ScalarType::String, "text", "r1", "T.p"),
            Ok(PrimaryKey::String("r1".into()))
        );
    }

    #[test]
    fn timestamps_as_postgres_prints_them() {
        let t = date("2024-01-02 03:04:05.123456+05:30");
        assert_eq!(t.to_rfc3339(), "2024-01-01T21:34:05.123456+00:00");
        assert_eq!(date("2024-01-02 03:04:05+05").hour(), 22);
        assert_eq!(date("2024-01-02 03:04:05-08").hour(), 11);
        // Local mean time offsets carry seconds.
        assert_eq!(
            date("1850-01-01 00:00:00+00:53:28").to_rfc3339(),
            "1849-12-31T23:06:32+00:00"
        );
        let caesar = date("0044-03-15 12:00:00+00 BC");
        assert_eq!((caesar.year(), caesar.month(), caesar.day()), (-43, 3, 15));
        assert_eq!(date("1969-12-31 23:59:59.999999+00").timestamp_micros(), -1);
        assert_eq!(date("12345-06-07 00:00:00+00").year(), 12345);
        // Printed by PostgreSQL 15 with TimeZone = 'Asia/Kolkata' (local mean time before 1854).
        assert_eq!(
            date("0044-03-15 17:53:28+05:53:28 BC"),
            date("0044-03-15 12:00:00+00 BC")
        );
        assert!(reason(parse(
            ScalarType::Date,
            "timestamptz",
            "294276-12-31 23:59:59.999999+00"
        ))
        .contains("outside the range a realm date holds (262144 BC to 262142 AD)"));
        assert!(reason(parse(ScalarType::Date, "timestamptz", "infinity")).contains("infinity"));
        assert!(reason(parse(ScalarType::Date, "timestamptz", "-infinity")).contains("infinity"));
        assert!(reason(parse(
            ScalarType::Date,
            "timestamptz",
            "Tue Jan 02 03:04:05 2024 PST"
        ))
        .contains("DateStyle = ISO"));
        assert!(parse(ScalarType::Date, "timestamptz", "2024-13-01 00:00:00+00").is_err());
        assert!(parse(ScalarType::Date, "timestamptz", "2024-01-01 00:00+00").is_err());
    }

    #[test]
    fn timestamps_without_zone_and_dates_are_utc() {
        let plain = parse(
            ScalarType::Date,
            "timestamp without time zone",
            "2024-01-02 03:04:05.5",
        );
        assert_eq!(
            plain,
            Ok(Value::Date(
                Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()
                    + chrono::Duration::milliseconds(500)
            ))
        );
        assert_eq!(
            parse(ScalarType::Date, "date", "1900-02-28"),
            Ok(Value::Date(
                Utc.with_ymd_and_hms(1900, 2, 28, 0, 0, 0).unwrap()
            ))
        );
        assert_eq!(
            parse(ScalarType::Date, "date", "0001-01-01 BC"),
            Ok(Value::Date(Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap()))
        );
    }

    /// `numeric` output: Decimal's Display writes the same digits and scale PostgreSQL does.
    fn pg_numeric(d: Decimal) -> String {
        let s = d.to_string();
        // PostgreSQL has no negative zero.
        match s.strip_prefix('-') {
            Some(rest) if d.is_zero() => rest.to_string(),
            _ => s,
        }
    }

    /// `timestamptz` output with DateStyle ISO in a zone `offset` seconds east of UTC.
    fn pg_timestamptz(t: DateTime<Utc>, offset: i32) -> String {
        let local = t.with_timezone(&FixedOffset::east_opt(offset).unwrap());
        let (bc, year) = if local.year() <= 0 {
            (" BC", 1 - local.year())
        } else {
            ("", local.year())
        };
        let mut out = format!(
            "{year:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            local.month(),
            local.day(),
            local.hour(),
            local.minute(),
            local.second()
        );
        let micros = local.nanosecond() / 1000;
        if micros != 0 {
            let fraction = format!("{micros:06}");
            out.push('.');
            out.push_str(fraction.trim_end_matches('0'));
        }
        let sign = if offset < 0 { '-' } else { '+' };
        let a = offset.abs();
        out.push_str(&format!("{sign}{:02}", a / 3600));
        if a % 3600 != 0 {
            out.push_str(&format!(":{:02}", a % 3600 / 60));
        }
        if a % 60 != 0 {
            out.push_str(&format!(":{:02}", a % 60));
        }
        out.push_str(bc);
        out
    }

    proptest! {
        #[test]
        fn decimals_round_trip_through_numeric_text(
            mantissa in -(2i128.pow(96) - 1)..(2i128.pow(96)),
            scale in 0u32..=28,
        ) {
            let d = Decimal::from_i128_with_scale(mantissa, scale);
            let text = pg_numeric(d);
            let back = parse_text(ScalarType::Decimal, "numeric", &text, "T.p");
            prop_assert_eq!(&back, &Ok(Value::Decimal(d)), "{}", text);
            if let Ok(Value::Decimal(b)) = back {
                prop_assert_eq!(b.scale(), d.scale());
            }
        }

        #[test]
        fn dates_round_trip_through_timestamptz_text(
            // 4713 BC to 294276 AD is PostgreSQL's range; chrono stops at 262143.
            micros in -210_866_760_000_000_000i64..8_210_266_876_799_999_999i64,
            // Offsets up to ±15:59:59, as PostgreSQL allows.
            offset in -57_599i32..=57_599,
        ) {
            let t = DateTime::<Utc>::from_timestamp_micros(micros).unwrap();
            let text = pg_timestamptz(t, offset);
            let back = parse_text(ScalarType::Date, "timestamp with time zone", &text, "T.p");
            prop_assert_eq!(back, Ok(Value::Date(t)), "{}", text);
        }
    }
}
