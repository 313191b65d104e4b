//! The byte encoding of what the store keeps in redb: object records, primary keys inside table
//! keys, and logged changesets.
//!
//! A format of our own rather than a serde format: it is compact, fast, exact for every value
//! (NaN, -0.0, decimals, nanoseconds), and it changes only together with
//! [`FORMAT_VERSION`](super::FORMAT_VERSION). Schema definitions inside `AddClass` /
//! `AddProperty` are JSON: they hold no floats and are rare.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use pgrealm_schema::{Object, PrimaryKey, Value};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::changeset::Instruction;

/// A record that does not decode: the file is damaged or was written by other software.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable {what} in the realm store: {reason}")]
pub struct CodecError {
    /// What was being decoded.
    pub what: &'static str,
    /// Why it failed.
    pub reason: String,
}

#[derive(Default)]
pub(crate) struct Encoder {
    pub(crate) buf: Vec<u8>,
}

impl Encoder {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn signed(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }

    fn bytes(&mut self, v: &[u8]) {
        self.varint(v.len() as u64);
        self.buf.extend_from_slice(v);
    }

    fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }

    fn key(&mut self, key: &PrimaryKey) {
        let start = self.buf.len();
        self.buf.push(0);
        key_into(key, &mut self.buf);
        let len = self.buf.len() - start - 1;
        // Keys nested in values are length-prefixed (one byte; keys longer than that use the
        // long form) so the decoder knows where they end.
        if len < 0xFF {
            self.buf[start] = len as u8;
        } else {
            let encoded = self.buf.split_off(start + 1);
            self.buf[start] = 0xFF;
            self.bytes(&encoded);
        }
    }

    pub(crate) fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.u8(0),
            Value::Bool(b) => {
                self.u8(1);
                self.u8(u8::from(*b));
            }
            Value::Int(i) => {
                self.u8(2);
                self.signed(*i);
            }
            Value::Float(f) => {
                self.u8(3);
                self.buf.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Value::Double(d) => {
                self.u8(4);
                self.buf.extend_from_slice(&d.to_bits().to_le_bytes());
            }
            Value::Decimal(d) => {
                self.u8(5);
                self.buf.extend_from_slice(&d.serialize());
            }
            Value::String(s) => {
                self.u8(6);
                self.str(s);
            }
            Value::Data(b) => {
                self.u8(7);
                self.bytes(b);
            }
            Value::Date(t) => {
                self.u8(8);
                self.signed(t.timestamp());
                self.varint(t.timestamp_subsec_nanos().into());
            }
            Value::Uuid(u) => {
                self.u8(9);
                self.buf.extend_from_slice(u.as_bytes());
            }
            Value::Link(k) => {
                self.u8(10);
                self.key(k);
            }
            Value::List(items) => {
                self.u8(11);
                self.varint(items.len() as u64);
                for item in items {
                    self.value(item);
                }
            }
        }
    }

    fn values(&mut self, values: &BTreeMap<String, Value>) {
        self.varint(values.len() as u64);
        for (name, value) in values {
            self.str(name);
            self.value(value);
        }
    }

    fn json<T: serde::Serialize>(&mut self, v: &T) {
        let json = serde_json::to_vec(v).expect("schema definitions serialize to JSON");
        self.bytes(&json);
    }

    pub(crate) fn instruction(&mut self, ins: &Instruction) {
        match ins {
            Instruction::AddClass { class } => {
                self.u8(0);
                self.json(class);
            }
            Instruction::AddProperty { class, property } => {
                self.u8(1);
                self.str(class);
                self.json(property);
            }
            Instruction::Create { class, key, values } => {
                self.u8(2);
                self.str(class);
                self.key(key);
                self.values(values);
            }
            Instruction::Set {
                class,
                key,
                property,
                old,
                new,
            } => {
                self.u8(3);
                self.str(class);
                self.key(key);
                self.str(property);
                self.value(old);
                self.value(new);
            }
            Instruction::Delete { class, key } => {
                self.u8(4);
                self.str(class);
                self.key(key);
            }
            Instruction::ListSet {
                class,
                key,
                property,
                index,
                old,
                new,
            } => {
                self.u8(5);
                self.str(class);
                self.key(key);
                self.str(property);
                self.varint(*index as u64);
                self.value(old);
                self.value(new);
            }
            Instruction::ListInsert {
                class,
                key,
                property,
                index,
                value,
            } => {
                self.u8(6);
                self.str(class);
                self.key(key);
                self.str(property);
                self.varint(*index as u64);
                self.value(value);
            }
            Instruction::ListErase {
                class,
                key,
                property,
                index,
                old,
            } => {
                self.u8(7);
                self.str(class);
                self.key(key);
                self.str(property);
                self.varint(*index as u64);
                self.value(old);
            }
            Instruction::ListClear {
                class,
                key,
                property,
            } => {
                self.u8(8);
                self.str(class);
                self.key(key);
                self.str(property);
            }
        }
    }
}

/// Append a primary key's bytes, ordered so that integer keys sort numerically.
pub(crate) fn key_into(key: &PrimaryKey, out: &mut Vec<u8>) {
    match key {
        PrimaryKey::Int(i) => {
            out.push(0);
            out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
        }
        PrimaryKey::String(s) => {
            out.push(1);
            out.extend_from_slice(s.as_bytes());
        }
        PrimaryKey::Uuid(u) => {
            out.push(2);
            out.extend_from_slice(u.as_bytes());
        }
    }
}

/// How many bytes [`key_into`] writes for `key`.
pub(crate) fn key_len(key: &PrimaryKey) -> usize {
    match key {
        PrimaryKey::Int(_) => 9,
        PrimaryKey::String(s) => 1 + s.len(),
        PrimaryKey::Uuid(_) => 17,
    }
}

/// Read a primary key written by [`key_into`], spanning all of `bytes`.
pub(crate) fn key_from(bytes: &[u8]) -> Result<PrimaryKey, CodecError> {
    let bad = |reason: &str| CodecError {
        what: "primary key",
        reason: reason.to_owned(),
    };
    match bytes.split_first() {
        Some((0, rest)) => {
            let raw: [u8; 8] = rest.try_into().map_err(|_| bad("int key is not 8 bytes"))?;
            Ok(PrimaryKey::Int(
                (u64::from_be_bytes(raw) ^ (1 << 63)) as i64,
            ))
        }
        Some((1, rest)) => std::str::from_utf8(rest)
            .map(|s| PrimaryKey::String(s.to_owned()))
            .map_err(|_| bad("string key is not UTF-8")),
        Some((2, rest)) => Uuid::from_slice(rest)
            .map(PrimaryKey::Uuid)
            .map_err(|_| bad("uuid key is not 16 bytes")),
        _ => Err(bad("unknown key tag")),
    }
}

pub(crate) struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(data: &'a [u8], what: &'static str) -> Self {
        Decoder { data, pos: 0, what }
    }

    fn err(&self, reason: impl Into<String>) -> CodecError {
        CodecError {
            what: self.what,
            reason: format!("{} at byte {}", reason.into(), self.pos),
        }
    }

    pub(crate) fn finished(&self) -> bool {
        self.pos == self.data.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.data.len() - self.pos < n {
            return Err(self.err("record ends early"));
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            out |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(self.err("varint too long"))
    }

    pub(crate) fn len(&mut self) -> Result<usize, CodecError> {
        let n = self.varint()?;
        // A length can never exceed what is left, which also bounds allocations on bad input.
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.data.len() - self.pos)
            .ok_or_else(|| self.err("length beyond the record"))
    }

    fn signed(&mut self) -> Result<i64, CodecError> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.len()?;
        self.take(n)
    }

    pub(crate) fn str(&mut self) -> Result<String, CodecError> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| self.err("string is not UTF-8"))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn key(&mut self) -> Result<PrimaryKey, CodecError> {
        let n = match self.u8()? {
            0xFF => self.len()?,
            n => n.into(),
        };
        key_from(self.take(n)?)
    }

    pub(crate) fn value(&mut self) -> Result<Value, CodecError> {
        Ok(match self.u8()? {
            0 => Value::Null,
            1 => Value::Bool(self.u8()? != 0),
            2 => Value::Int(self.signed()?),
            3 => Value::Float(f32::from_bits(u32::from_le_bytes(self.array()?))),
            4 => Value::Double(f64::from_bits(u64::from_le_bytes(self.array()?))),
            5 => Value::Decimal(Decimal::deserialize(self.array()?)),
            6 => Value::String(self.str()?),
            7 => Value::Data(self.bytes()?.to_vec()),
            8 => {
                let secs = self.signed()?;
                let nanos = u32::try_from(self.varint()?).map_err(|_| self.err("bad nanos"))?;
                Value::Date(
                    DateTime::<Utc>::from_timestamp(secs, nanos)
                        .ok_or_else(|| self.err("date out of range"))?,
                )
            }
            9 => Value::Uuid(Uuid::from_bytes(self.array()?)),
            10 => Value::Link(self.key()?),
            11 => {
                let n = self.len()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value()?);
                }
                Value::List(items)
            }
            tag => return Err(self.err(format!("unknown value tag {tag}"))),
        })
    }

    fn values(&mut self) -> Result<BTreeMap<String, Value>, CodecError> {
        let n = self.len()?;
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let name = self.str()?;
            out.insert(name, self.value()?);
        }
        Ok(out)
    }

    fn json<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, CodecError> {
        let b = self.bytes()?;
        serde_json::from_slice(b).map_err(|e| self.err(e.to_string()))
    }

    pub(crate) fn instruction(&mut self) -> Result<Instruction, CodecError> {
        Ok(match self.u8()? {
            0 => Instruction::AddClass {
                class: self.json()?,
            },
            1 => Instruction::AddProperty {
                class: self.str()?,
                property: self.json()?,
            },
            2 => Instruction::Create {
                class: self.str()?,
                key: self.key()?,
                values: self.values()?,
            },
            3 => Instruction::Set {
                class: self.str()?,
                key: self.key()?,
                property: self.str()?,
                old: self.value()?,
                new: self.value()?,
            },
            4 => Instruction::Delete {
                class: self.str()?,
                key: self.key()?,
            },
            5 => Instruction::ListSet {
                class: self.str()?,
                key: self.key()?,
                property: self.str()?,
                index: self.len_index()?,
                old: self.value()?,
                new: self.value()?,
            },
            6 => Instruction::ListInsert {
                class: self.str()?,
                key: self.key()?,
                property: self.str()?,
                index: self.len_index()?,
                value: self.value()?,
            },
            7 => Instruction::ListErase {
                class: self.str()?,
                key: self.key()?,
                property: self.str()?,
                index: self.len_index()?,
                old: self.value()?,
            },
            8 => Instruction::ListClear {
                class: self.str()?,
                key: self.key()?,
                property: self.str()?,
            },
            tag => return Err(self.err(format!("unknown instruction tag {tag}"))),
        })
    }

    fn len_index(&mut self) -> Result<usize, CodecError> {
        let v = self.varint()?;
        usize::try_from(v).map_err(|_| self.err("index too large"))
    }
}

/// An object record: its property values (the class is in the table key), written into a
/// buffer the caller reuses (cleared first), so a commit of many objects does not allocate one
/// record at a time.
pub(crate) fn encode_object_into(values: &BTreeMap<String, Value>, buf: &mut Vec<u8>) {
    buf.clear();
    let mut e = Encoder {
        buf: std::mem::take(buf),
    };
    e.values(values);
    *buf = e.buf;
}

/// An object record written value by value, for a caller that has no map of them: `count`
/// values, each pushed with its property's name, in name order (what [`encode_object_into`]
/// writes for a map holding them).
pub(crate) struct RecordWriter {
    e: Encoder,
}

impl RecordWriter {
    pub(crate) fn new(capacity: usize, count: usize) -> Self {
        let mut e = Encoder {
            buf: Vec::with_capacity(capacity),
        };
        e.varint(count as u64);
        RecordWriter { e }
    }

    pub(crate) fn push(&mut self, name: &str, value: &Value) {
        self.e.str(name);
        self.e.value(value);
    }

    /// [`push`](Self::push) of a `Value::String`, without making one.
    pub(crate) fn push_str(&mut self, name: &str, value: &str) {
        self.e.str(name);
        self.e.u8(6);
        self.e.str(value);
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.e.buf
    }
}

/// Read an object record of `class`.
pub(crate) fn decode_object(class: &str, bytes: &[u8]) -> Result<Object, CodecError> {
    let mut d = Decoder::new(bytes, "object");
    let values = d.values()?;
    if !d.finished() {
        return Err(d.err("trailing bytes"));
    }
    Ok(Object {
        class: class.to_owned(),
        values,
    })
}

/// A logged changeset being written: instructions are encoded as they are produced, so a
/// commit never holds them all as values, and a create reuses its object record's bytes (the
/// values of a `Create` are encoded exactly as an object record).
///
/// The record is: commit time (µs since the epoch), origin, instruction count, instructions.
#[derive(Default)]
pub(crate) struct LogWriter {
    body: Encoder,
    count: u64,
}

impl LogWriter {
    pub(crate) fn new() -> Self {
        LogWriter {
            body: Encoder { buf: Vec::new() },
            count: 0,
        }
    }

    /// How many instructions were written.
    pub(crate) fn len(&self) -> u64 {
        self.count
    }

    /// How many bytes the instructions take.
    pub(crate) fn bytes(&self) -> usize {
        self.body.buf.len()
    }

    pub(crate) fn push(&mut self, ins: &Instruction) {
        self.body.instruction(ins);
        self.count += 1;
    }

    /// `Create { class, key, values }` where `record` is the values as [`encode_object_into`]
    /// wrote them.
    pub(crate) fn create(&mut self, class: &str, key: &PrimaryKey, record: &[u8]) {
        self.body.u8(2);
        self.body.str(class);
        self.body.key(key);
        self.body.buf.extend_from_slice(record);
        self.count += 1;
    }

    /// `other`'s instructions after these.
    pub(crate) fn append(&mut self, other: LogWriter) {
        if self.count == 0 {
            *self = other;
            return;
        }
        self.body.buf.extend_from_slice(&other.body.buf);
        self.count += other.count;
    }

    /// `Delete { class, key }`.
    pub(crate) fn delete(&mut self, class: &str, key: &PrimaryKey) {
        self.body.u8(4);
        self.body.str(class);
        self.body.key(key);
        self.count += 1;
    }

    /// The whole record.
    pub(crate) fn finish(self, committed_at: DateTime<Utc>, origin: &str) -> Vec<u8> {
        let mut e = Encoder {
            buf: Vec::with_capacity(24 + origin.len() + self.body.buf.len()),
        };
        e.signed(committed_at.timestamp_micros());
        e.str(origin);
        e.varint(self.count);
        e.buf.extend_from_slice(&self.body.buf);
        e.buf
    }
}

/// A logged changeset made of `instructions` (see [`LogWriter`]).
#[cfg(test)]
pub(crate) fn encode_log(
    committed_at: DateTime<Utc>,
    origin: &str,
    instructions: &[Instruction],
) -> Vec<u8> {
    let mut log = LogWriter::new();
    for ins in instructions {
        log.push(ins);
    }
    log.finish(committed_at, origin)
}

/// Read a logged changeset: (commit time, origin, instructions).
pub(crate) fn decode_log(
    bytes: &[u8],
) -> Result<(DateTime<Utc>, String, Vec<Instruction>), CodecError> {
    let mut d = Decoder::new(bytes, "changeset");
    let (at, origin) = log_header(&mut d)?;
    let n = d.len()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(d.instruction()?);
    }
    if !d.finished() {
        return Err(d.err("trailing bytes"));
    }
    Ok((at, origin, out))
}

/// A log record's commit time and origin, without decoding its instructions.
pub(crate) fn decode_log_header(bytes: &[u8]) -> Result<(DateTime<Utc>, String), CodecError> {
    log_header(&mut Decoder::new(bytes, "changeset"))
}

fn log_header(d: &mut Decoder<'_>) -> Result<(DateTime<Utc>, String), CodecError> {
    let micros = d.signed()?;
    let at = DateTime::<Utc>::from_timestamp_micros(micros)
        .ok_or_else(|| d.err("commit time out of range"))?;
    Ok((at, d.str()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(v: Value) {
        let mut e = Encoder { buf: Vec::new() };
        e.value(&v);
        let back = Decoder::new(&e.buf, "test").value().unwrap();
        assert!(back.same_as(&v), "{v:?} -> {back:?}");
    }

    /// A record written value by value, in name order, is the record of the map of them.
    #[test]
    fn records_written_value_by_value_are_those_of_the_map() {
        let values: BTreeMap<String, Value> = [
            ("id", Value::Int(7)),
            ("name", Value::String("seven".into())),
            ("notes", Value::Null),
            ("Zone", Value::Bool(true)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let mut record = RecordWriter::new(0, values.len());
        for (name, value) in &values {
            record.push(name, value);
        }
        let record = record.finish();
        let mut expected = Vec::new();
        encode_object_into(&values, &mut expected);
        assert_eq!(record, expected);
        assert_eq!(decode_object("Bus", &record).unwrap().values, values);
    }

    #[test]
    fn values_roundtrip_exactly() {
        roundtrip(Value::Null);
        roundtrip(Value::Bool(true));
        for i in [0, 1, -1, i64::MIN, i64::MAX, 300, -300] {
            roundtrip(Value::Int(i));
        }
        roundtrip(Value::Double(f64::NAN));
        roundtrip(Value::Double(-0.0));
        roundtrip(Value::Float(1.5));
        roundtrip(Value::Decimal("-123.4500".parse().unwrap()));
        roundtrip(Value::String("héllo".into()));
        roundtrip(Value::Data(vec![0, 255, 7]));
        roundtrip(Value::Date(
            DateTime::<Utc>::from_timestamp(-1_000_000, 123_456_789).unwrap(),
        ));
        roundtrip(Value::Uuid(Uuid::from_u128(42)));
        roundtrip(Value::Link(PrimaryKey::String("x".repeat(400))));
        roundtrip(Value::List(vec![
            Value::Link(PrimaryKey::Int(-5)),
            Value::Link(PrimaryKey::Uuid(Uuid::from_u128(7))),
        ]));
    }

    #[test]
    fn int_keys_sort_numerically() {
        let enc = |i: i64| {
            let mut v = Vec::new();
            key_into(&PrimaryKey::Int(i), &mut v);
            v
        };
        assert!(enc(-2) < enc(-1) && enc(-1) < enc(0) && enc(0) < enc(1));
        assert_eq!(key_from(&enc(-9)).unwrap(), PrimaryKey::Int(-9));
    }

    #[test]
    fn push_str_writes_what_push_of_a_string_does() {
        let mut by_value = RecordWriter::new(0, 2);
        by_value.push("name", &Value::String("héllo".into()));
        by_value.push("other", &Value::String(String::new()));
        let mut by_str = RecordWriter::new(0, 2);
        by_str.push_str("name", "héllo");
        by_str.push_str("other", "");
        assert_eq!(by_value.finish(), by_str.finish());
    }

    #[test]
    fn key_len_is_what_key_into_writes() {
        for key in [
            PrimaryKey::Int(-3),
            PrimaryKey::String("bus 7".into()),
            PrimaryKey::String(String::new()),
            PrimaryKey::Uuid(Uuid::from_u128(9)),
        ] {
            let mut v = Vec::new();
            key_into(&key, &mut v);
            assert_eq!(key_len(&key), v.len(), "{key}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&[11u8, 0xFF, 0xFF, 0xFF][..], &[6, 5, b'a'], &[42], &[]] {
            assert!(Decoder::new(bytes, "test").value().is_err());
        }
    }

    /// The shortcuts of [`LogWriter`] write exactly what encoding the instructions would.
    #[test]
    fn log_writer_shortcuts_match_the_instructions() {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 5_000).unwrap();
        let key = PrimaryKey::String("k".repeat(300));
        let values: BTreeMap<String, Value> = [
            ("id".to_owned(), Value::String("k".repeat(300))),
            ("n".to_owned(), Value::List(vec![Value::Int(3)])),
        ]
        .into();
        let instructions = vec![
            Instruction::Create {
                class: "C".into(),
                key: key.clone(),
                values: values.clone(),
            },
            Instruction::Delete {
                class: "C".into(),
                key: PrimaryKey::Int(-1),
            },
        ];
        let mut log = LogWriter::new();
        let mut record = Vec::new();
        encode_object_into(&values, &mut record);
        log.create("C", &key, &record);
        log.delete("C", &PrimaryKey::Int(-1));
        assert_eq!(log.len(), 2);
        let bytes = log.finish(at, "app");
        assert_eq!(bytes, encode_log(at, "app", &instructions));
        assert_eq!(
            decode_log(&bytes).unwrap(),
            (at, "app".to_owned(), instructions)
        );
        assert_eq!(decode_log_header(&bytes).unwrap(), (at, "app".to_owned()));
    }
}
