//! The pgoutput decoder (logical replication protocol version 1).
//!
//! Owns the byte-level format of the messages the `pgoutput` plugin sends inside `XLogData`:
//! Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate and Message. It is
//! pure (no I/O, no allocation beyond the decoded message; tuple values share the input
//! `Bytes`), and it never panics: malformed or truncated input is a [`DecodeError`] naming the
//! message and the field that was cut short.
//!
//! It must never interpret column values: text stays text (conversion to realm values belongs to
//! `pgrealm_schema::pgtext`), so a value that cannot convert is rejected by the apply step with
//! the raw text in hand.

use bytes::Bytes;

use super::Lsn;

/// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's timestamp epoch.
pub type PgTimestamp = i64;

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage {
    /// Start of a transaction.
    Begin(Begin),
    /// End of a transaction.
    Commit(Commit),
    /// The replication origin of the transaction being sent (right after its Begin).
    Origin(Origin),
    /// The shape of a table; sent before the first change of that table in a session and again
    /// after the table changes.
    Relation(Relation),
    /// The name of a non-built-in type used by a following Relation.
    Type(TypeInfo),
    /// A row inserted.
    Insert(Insert),
    /// A row updated.
    Update(Update),
    /// A row deleted.
    Delete(Delete),
    /// Tables truncated.
    Truncate(Truncate),
    /// A `pg_logical_emit_message` message.
    Message(LogicalMessage),
}

/// pgoutput Begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit time.
    pub commit_time: PgTimestamp,
    /// Transaction id.
    pub xid: u32,
}

/// pgoutput Commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Flags (currently always 0).
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end of the commit record: the position to confirm once the transaction is durable.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_time: PgTimestamp,
}

/// pgoutput Origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The commit LSN on the origin server.
    pub origin_lsn: Lsn,
    /// The replication origin's name.
    pub name: String,
}

/// A table's replica identity setting (`pg_class.relreplident`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// The primary key (`d`).
    Default,
    /// Nothing (`n`): updates and deletes carry no old values.
    Nothing,
    /// All columns (`f`).
    Full,
    /// A chosen unique index (`i`).
    Index,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Whether the column is part of the replica identity key (flag bit 1).
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// Type oid.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

/// pgoutput Relation: the shape of a published table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The table's oid, which changes refer to.
    pub id: u32,
    /// Schema name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// Columns in attribute order (dropped and generated columns are not sent).
    pub columns: Vec<RelationColumn>,
}

impl Relation {
    /// The position of the column named `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// pgoutput Type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// Type oid.
    pub id: u32,
    /// Schema name.
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// One column value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnValue {
    /// SQL NULL.
    Null,
    /// A TOASTed value that did not change: the receiver keeps the value it has.
    UnchangedToast,
    /// A value in PostgreSQL's text output format (UTF-8 in a UTF8 database).
    Text(Bytes),
    /// A value in the type's binary format (only when the stream asked for `binary`).
    Binary(Bytes),
}

impl ColumnValue {
    /// The text of a [`ColumnValue::Text`], `None` for anything else or non-UTF-8 bytes.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            ColumnValue::Text(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }
}

/// The column values of one row, in the order of the relation's columns.
pub type TupleData = Vec<ColumnValue>;

/// pgoutput Insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// The table's oid.
    pub relation_id: u32,
    /// The new row.
    pub new: TupleData,
}

/// What an Update or Delete carries about the old row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// Only the replica identity key columns (`K`); other columns are NULL.
    Key(TupleData),
    /// The whole old row (`O`, replica identity FULL).
    Full(TupleData),
}

impl OldTuple {
    /// The column values, whichever kind.
    pub fn values(&self) -> &TupleData {
        match self {
            OldTuple::Key(values) | OldTuple::Full(values) => values,
        }
    }
}

/// pgoutput Update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The table's oid.
    pub relation_id: u32,
    /// The old key (sent when the key changed, or always with REPLICA IDENTITY FULL).
    pub old: Option<OldTuple>,
    /// The new row; unchanged TOASTed columns are [`ColumnValue::UnchangedToast`].
    pub new: TupleData,
}

/// pgoutput Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The table's oid.
    pub relation_id: u32,
    /// The old key or row.
    pub old: OldTuple,
}

/// pgoutput Truncate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// `TRUNCATE … CASCADE`.
    pub cascade: bool,
    /// `TRUNCATE … RESTART IDENTITY`.
    pub restart_identity: bool,
    /// The truncated tables' oids.
    pub relation_ids: Vec<u32>,
}

/// pgoutput Message (`pg_logical_emit_message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Emitted inside a transaction (delivered at its commit).
    pub transactional: bool,
    /// The message's LSN.
    pub lsn: Lsn,
    /// The application's prefix.
    pub prefix: String,
    /// The content.
    pub content: Bytes,
}

/// A pgoutput message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message ended before a field.
    #[error(
        "pgoutput {message} message is truncated: {field} needs {needed} more bytes, {available} left; \
         the stream is corrupt or not pgoutput protocol version 1"
    )]
    Truncated {
        /// The message kind.
        message: &'static str,
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// A string without its terminating NUL.
    #[error("pgoutput {message} message: {field} is not NUL-terminated; the stream is corrupt")]
    UnterminatedString {
        /// The message kind.
        message: &'static str,
        /// The field being read.
        field: &'static str,
    },
    /// A string that is not UTF-8.
    #[error("pgoutput {message} message: {field} is not UTF-8; connect with client_encoding UTF8")]
    NotUtf8 {
        /// The message kind.
        message: &'static str,
        /// The field being read.
        field: &'static str,
    },
    /// An unknown byte where a marker was expected.
    #[error(
        "pgoutput {message} message: unexpected {field} byte {found:?}; expected one of {expected}"
    )]
    UnexpectedByte {
        /// The message kind.
        message: &'static str,
        /// The field being read.
        field: &'static str,
        /// The byte found.
        found: char,
        /// What was allowed.
        expected: &'static str,
    },
    /// A negative count or length.
    #[error("pgoutput {message} message: {field} is negative ({value}); the stream is corrupt")]
    Negative {
        /// The message kind.
        message: &'static str,
        /// The field being read.
        field: &'static str,
        /// The value read.
        value: i64,
    },
    /// Bytes left over after a complete message.
    #[error("pgoutput {message} message has {extra} trailing bytes; the stream is corrupt")]
    TrailingBytes {
        /// The message kind.
        message: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
    /// An empty payload.
    #[error("empty pgoutput message")]
    Empty,
    /// A message kind protocol version 1 does not have (streaming and two-phase messages need
    /// versions 2 and 3, which pgrealm does not request).
    #[error("unknown pgoutput message type {0:?}; pgrealm speaks protocol version 1 only")]
    UnknownMessage(char),
}

/// Decode one pgoutput message (the payload of one `XLogData`).
pub fn decode(data: &Bytes) -> Result<PgOutputMessage, DecodeError> {
    let (&tag, _) = data.split_first().ok_or(DecodeError::Empty)?;
    let message = message_name(tag).ok_or(DecodeError::UnknownMessage(char::from(tag)))?;
    let mut r = Reader {
        data,
        pos: 1,
        message,
    };
    let decoded = match tag {
        b'B' => PgOutputMessage::Begin(Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_time: r.i64("commit time")?,
            xid: r.u32("xid")?,
        }),
        b'C' => PgOutputMessage::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_time: r.i64("commit time")?,
        }),
        b'O' => PgOutputMessage::Origin(Origin {
            origin_lsn: r.lsn("origin LSN")?,
            name: r.string("origin name")?,
        }),
        b'R' => PgOutputMessage::Relation(r.relation()?),
        b'Y' => PgOutputMessage::Type(TypeInfo {
            id: r.u32("type oid")?,
            namespace: r.string("namespace")?,
            name: r.string("type name")?,
        }),
        b'I' => {
            let relation_id = r.u32("relation id")?;
            r.expect_marker("tuple marker", b"N", "'N'")?;
            PgOutputMessage::Insert(Insert {
                relation_id,
                new: r.tuple()?,
            })
        }
        b'U' => {
            let relation_id = r.u32("relation id")?;
            let old = match r.expect_marker("tuple marker", b"KON", "'K', 'O' or 'N'")? {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                _ => None,
            };
            if old.is_some() {
                r.expect_marker("new tuple marker", b"N", "'N'")?;
            }
            PgOutputMessage::Update(Update {
                relation_id,
                old,
                new: r.tuple()?,
            })
        }
        b'D' => {
            let relation_id = r.u32("relation id")?;
            let old = match r.expect_marker("tuple marker", b"KO", "'K' or 'O'")? {
                b'K' => OldTuple::Key(r.tuple()?),
                _ => OldTuple::Full(r.tuple()?),
            };
            PgOutputMessage::Delete(Delete { relation_id, old })
        }
        b'T' => {
            let count = r.count32("relation count")?;
            let options = r.u8("options")?;
            let mut relation_ids = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                relation_ids.push(r.u32("relation id")?);
            }
            PgOutputMessage::Truncate(Truncate {
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relation_ids,
            })
        }
        b'M' => {
            let flags = r.u8("flags")?;
            let lsn = r.lsn("LSN")?;
            let prefix = r.string("prefix")?;
            let len = r.count32("content length")?;
            PgOutputMessage::Message(LogicalMessage {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.bytes("content", len)?,
            })
        }
        _ => return Err(DecodeError::UnknownMessage(char::from(tag))),
    };
    r.finish()?;
    Ok(decoded)
}

fn message_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        _ => return None,
    })
}

/// A cursor over one message; every read checks the length first.
struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    message: &'static str,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, field: &'static str, needed: usize) -> Result<&[u8], DecodeError> {
        let available = self.remaining();
        if available < needed {
            return Err(DecodeError::Truncated {
                message: self.message,
                field,
                needed,
                available,
            });
        }
        let slice = &self.data[self.pos..self.pos + needed];
        self.pos += needed;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(field)?)))
    }

    fn count32(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let value = self.i32(field)?;
        usize::try_from(value).map_err(|_| DecodeError::Negative {
            message: self.message,
            field,
            value: i64::from(value),
        })
    }

    fn count16(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let value = self.i16(field)?;
        usize::try_from(value).map_err(|_| DecodeError::Negative {
            message: self.message,
            field,
            value: i64::from(value),
        })
    }

    fn bytes(&mut self, field: &'static str, len: usize) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(field, len)?;
        Ok(self.data.slice(start..start + len))
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString {
                message: self.message,
                field,
            })?;
        let text = std::str::from_utf8(&rest[..end]).map_err(|_| DecodeError::NotUtf8 {
            message: self.message,
            field,
        })?;
        let text = text.to_owned();
        self.pos += end + 1;
        Ok(text)
    }

    /// Read a marker byte that must be one of `allowed`.
    fn expect_marker(
        &mut self,
        field: &'static str,
        allowed: &[u8],
        expected: &'static str,
    ) -> Result<u8, DecodeError> {
        let byte = self.u8(field)?;
        if allowed.contains(&byte) {
            Ok(byte)
        } else {
            Err(DecodeError::UnexpectedByte {
                message: self.message,
                field,
                found: char::from(byte),
                expected,
            })
        }
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let id = self.u32("relation id")?;
        let namespace = self.string("namespace")?;
        let name = self.string("relation name")?;
        let replica_identity =
            match self.expect_marker("replica identity", b"dnfi", "d, n, f, i")? {
                b'd' => ReplicaIdentity::Default,
                b'n' => ReplicaIdentity::Nothing,
                b'f' => ReplicaIdentity::Full,
                _ => ReplicaIdentity::Index,
            };
        let count = self.count16("column count")?;
        // Each column takes at least 10 bytes; never trust the count for the allocation.
        let mut columns = Vec::with_capacity(count.min(self.remaining() / 10));
        for _ in 0..count {
            let flags = self.u8("column flags")?;
            columns.push(RelationColumn {
                is_key: flags & 1 != 0,
                name: self.string("column name")?,
                type_oid: self.u32("column type oid")?,
                type_modifier: self.i32("column type modifier")?,
            });
        }
        Ok(Relation {
            id,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        let count = self.count16("tuple column count")?;
        let mut values = Vec::with_capacity(count.min(self.remaining()));
        for _ in 0..count {
            let value = match self.expect_marker("column kind", b"nutb", "n, u, t, b")? {
                b'n' => ColumnValue::Null,
                b'u' => ColumnValue::UnchangedToast,
                kind => {
                    let len = self.count32("column value length")?;
                    let bytes = self.bytes("column value", len)?;
                    if kind == b't' {
                        ColumnValue::Text(bytes)
                    } else {
                        ColumnValue::Binary(bytes)
                    }
                }
            };
            values.push(value);
        }
        Ok(values)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes {
                message: self.message,
                extra,
            }),
        }
    }
}

#[cfg(test)]
#[path = "pgoutput_tests.rs"]
mod tests;
