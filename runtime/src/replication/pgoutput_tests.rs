//! Byte-level tests of the pgoutput decoder: each message kind built by hand the way
//! PostgreSQL 15's `proto.c` writes it, and every truncation of each one.

use super::*;

/// Builds message bytes field by field, in network byte order.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn new(tag: u8) -> Self {
        Msg(vec![tag])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn str(mut self, v: &str) -> Self {
        self.0.extend_from_slice(v.as_bytes());
        self.0.push(0);
        self
    }
    fn text(self, v: &str) -> Self {
        let mut m = self.u8(b't').i32(v.len() as i32);
        m.0.extend_from_slice(v.as_bytes());
        m
    }
    fn bytes(self) -> Bytes {
        Bytes::from(self.0)
    }
}

fn text(v: &str) -> ColumnValue {
    ColumnValue::Text(Bytes::copy_from_slice(v.as_bytes()))
}

fn samples() -> Vec<(Bytes, PgOutputMessage)> {
    vec![
        (
            Msg::new(b'B').i64(0x1_0000_0010).i64(7).i32(-5).bytes(),
            PgOutputMessage::Begin(Begin {
                final_lsn: Lsn(0x1_0000_0010),
                commit_time: 7,
                xid: u32::MAX - 4,
            }),
        ),
        (
            Msg::new(b'C').u8(0).i64(100).i64(120).i64(9).bytes(),
            PgOutputMessage::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(100),
                end_lsn: Lsn(120),
                commit_time: 9,
            }),
        ),
        (
            Msg::new(b'O').i64(55).str("pgrealm").bytes(),
            PgOutputMessage::Origin(Origin {
                origin_lsn: Lsn(55),
                name: "pgrealm".into(),
            }),
        ),
        (
            Msg::new(b'R')
                .i32(16384)
                .str("public")
                .str("bus")
                .u8(b'd')
                .i16(2)
                .u8(1)
                .str("id")
                .i32(20)
                .i32(-1)
                .u8(0)
                .str("name")
                .i32(1043)
                .i32(36)
                .bytes(),
            PgOutputMessage::Relation(Relation {
                id: 16384,
                namespace: "public".into(),
                name: "bus".into(),
                replica_identity: ReplicaIdentity::Default,
                columns: vec![
                    RelationColumn {
                        is_key: true,
                        name: "id".into(),
                        type_oid: 20,
                        type_modifier: -1,
                    },
                    RelationColumn {
                        is_key: false,
                        name: "name".into(),
                        type_oid: 1043,
                        type_modifier: 36,
                    },
                ],
            }),
        ),
        (
            Msg::new(b'Y').i32(16500).str("public").str("mood").bytes(),
            PgOutputMessage::Type(TypeInfo {
                id: 16500,
                namespace: "public".into(),
                name: "mood".into(),
            }),
        ),
        (
            Msg::new(b'I')
                .i32(16384)
                .u8(b'N')
                .i16(3)
                .text("1")
                .u8(b'n')
                .u8(b'b')
                .i32(2)
                .u8(0xff)
                .u8(0)
                .bytes(),
            PgOutputMessage::Insert(Insert {
                relation_id: 16384,
                new: vec![
                    text("1"),
                    ColumnValue::Null,
                    ColumnValue::Binary(Bytes::from_static(&[0xff, 0])),
                ],
            }),
        ),
        (
            Msg::new(b'U')
                .i32(16384)
                .u8(b'N')
                .i16(2)
                .text("1")
                .u8(b'u')
                .bytes(),
            PgOutputMessage::Update(Update {
                relation_id: 16384,
                old: None,
                new: vec![text("1"), ColumnValue::UnchangedToast],
            }),
        ),
        (
            Msg::new(b'U')
                .i32(16384)
                .u8(b'K')
                .i16(2)
                .text("1")
                .u8(b'n')
                .u8(b'N')
                .i16(2)
                .text("2")
                .text("héllo")
                .bytes(),
            PgOutputMessage::Update(Update {
                relation_id: 16384,
                old: Some(OldTuple::Key(vec![text("1"), ColumnValue::Null])),
                new: vec![text("2"), text("héllo")],
            }),
        ),
        (
            Msg::new(b'U')
                .i32(1)
                .u8(b'O')
                .i16(1)
                .text("a")
                .u8(b'N')
                .i16(1)
                .text("b")
                .bytes(),
            PgOutputMessage::Update(Update {
                relation_id: 1,
                old: Some(OldTuple::Full(vec![text("a")])),
                new: vec![text("b")],
            }),
        ),
        (
            Msg::new(b'D')
                .i32(16384)
                .u8(b'K')
                .i16(2)
                .text("7")
                .u8(b'n')
                .bytes(),
            PgOutputMessage::Delete(Delete {
                relation_id: 16384,
                old: OldTuple::Key(vec![text("7"), ColumnValue::Null]),
            }),
        ),
        (
            Msg::new(b'D').i32(3).u8(b'O').i16(1).text("").bytes(),
            PgOutputMessage::Delete(Delete {
                relation_id: 3,
                old: OldTuple::Full(vec![text("")]),
            }),
        ),
        (
            Msg::new(b'T').i32(2).u8(3).i32(10).i32(11).bytes(),
            PgOutputMessage::Truncate(Truncate {
                cascade: true,
                restart_identity: true,
                relation_ids: vec![10, 11],
            }),
        ),
        (
            Msg::new(b'T').i32(1).u8(0).i32(10).bytes(),
            PgOutputMessage::Truncate(Truncate {
                cascade: false,
                restart_identity: false,
                relation_ids: vec![10],
            }),
        ),
        (
            Msg::new(b'M')
                .u8(1)
                .i64(77)
                .str("pgrealm")
                .i32(3)
                .u8(b'a')
                .u8(b'b')
                .u8(b'c')
                .bytes(),
            PgOutputMessage::Message(LogicalMessage {
                transactional: true,
                lsn: Lsn(77),
                prefix: "pgrealm".into(),
                content: Bytes::from_static(b"abc"),
            }),
        ),
    ]
}

#[test]
fn every_message_kind_decodes() {
    for (bytes, expected) in samples() {
        assert_eq!(decode(&bytes), Ok(expected), "bytes {bytes:?}");
    }
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    for (bytes, _) in samples() {
        for len in 0..bytes.len() {
            let cut = bytes.slice(..len);
            assert!(
                decode(&cut).is_err(),
                "a {len}-byte prefix of {bytes:?} decoded"
            );
        }
    }
}

#[test]
fn corrupting_any_byte_never_panics() {
    // Deterministic "fuzz": every byte of every sample replaced by a few interesting values.
    for (bytes, _) in samples() {
        for at in 0..bytes.len() {
            for value in [0u8, 1, 0x7f, 0x80, 0xff, b'K', b'N', b't'] {
                let mut corrupt = bytes.to_vec();
                corrupt[at] = value;
                let _ = decode(&Bytes::from(corrupt));
            }
        }
    }
}

#[test]
fn errors_name_the_message_and_field() {
    let err = decode(&Msg::new(b'B').i64(1).bytes()).unwrap_err();
    assert_eq!(
        err,
        DecodeError::Truncated {
            message: "Begin",
            field: "commit time",
            needed: 8,
            available: 0
        }
    );
    assert!(err.to_string().contains("Begin message is truncated"));

    let err = decode(&Msg::new(b'I').i32(1).u8(b'X').bytes()).unwrap_err();
    assert!(
        matches!(err, DecodeError::UnexpectedByte { found: 'X', .. }),
        "{err}"
    );

    let err = decode(&Msg::new(b'I').i32(1).u8(b'N').i16(-1).bytes()).unwrap_err();
    assert!(
        matches!(err, DecodeError::Negative { value: -1, .. }),
        "{err}"
    );

    let err = decode(&Msg::new(b'C').u8(0).i64(1).i64(2).i64(3).u8(9).bytes()).unwrap_err();
    assert_eq!(
        err,
        DecodeError::TrailingBytes {
            message: "Commit",
            extra: 1
        }
    );

    let err = decode(&Msg::new(b'S').bytes()).unwrap_err();
    assert!(err.to_string().contains("protocol version 1"), "{err}");

    assert_eq!(decode(&Bytes::new()), Err(DecodeError::Empty));

    let mut bad_utf8 = Msg::new(b'O').i64(1);
    bad_utf8.0.extend_from_slice(&[0xc3, 0x28, 0]);
    assert!(matches!(
        decode(&bad_utf8.bytes()),
        Err(DecodeError::NotUtf8 { .. })
    ));
}

#[test]
fn a_huge_declared_count_does_not_allocate_it() {
    // 2^31-1 relations announced, none present: an error, quickly, without a giant allocation.
    let err = decode(&Msg::new(b'T').i32(i32::MAX).u8(0).bytes()).unwrap_err();
    assert!(matches!(err, DecodeError::Truncated { .. }));
    let err = decode(&Msg::new(b'I').i32(1).u8(b'N').i16(i16::MAX).bytes()).unwrap_err();
    assert!(matches!(err, DecodeError::Truncated { .. }));
}

#[test]
fn text_values_share_the_input_buffer() {
    let bytes = Msg::new(b'I').i32(1).u8(b'N').i16(1).text("shared").bytes();
    let PgOutputMessage::Insert(insert) = decode(&bytes).unwrap() else {
        panic!("not an insert")
    };
    let ColumnValue::Text(value) = &insert.new[0] else {
        panic!("not text")
    };
    assert_eq!(value.as_ptr(), bytes[bytes.len() - 6..].as_ptr());
    assert_eq!(insert.new[0].as_text(), Some("shared"));
    assert_eq!(ColumnValue::Null.as_text(), None);
}
