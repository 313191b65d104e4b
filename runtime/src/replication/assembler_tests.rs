//! The assembler's rules on hand-made replication events.

use bytes::Bytes;
use pgwire_replication::ReplicationEvent;

use super::*;
use crate::replication::pgoutput::ColumnValue;

fn begin(final_lsn: u64) -> ReplicationEvent {
    ReplicationEvent::Begin {
        final_lsn: Lsn(final_lsn),
        xid: 7,
        commit_time_micros: 1,
    }
}

fn commit(lsn: u64, end_lsn: u64) -> ReplicationEvent {
    ReplicationEvent::Commit {
        lsn: Lsn(lsn),
        end_lsn: Lsn(end_lsn),
        commit_time_micros: 1,
    }
}

fn keepalive(wal_end: u64) -> ReplicationEvent {
    ReplicationEvent::KeepAlive {
        wal_end: Lsn(wal_end),
        reply_requested: false,
        server_time_micros: 0,
    }
}

fn xlog(bytes: Vec<u8>) -> ReplicationEvent {
    ReplicationEvent::XLogData {
        wal_start: Lsn(1),
        wal_end: Lsn(0),
        server_time_micros: 0,
        data: Bytes::from(bytes),
    }
}

/// Relation 1 `public.t (id int4 key)`.
fn relation() -> ReplicationEvent {
    let mut b = vec![b'R'];
    b.extend(1u32.to_be_bytes());
    b.extend(b"public\0t\0d");
    b.extend(1i16.to_be_bytes());
    b.push(1);
    b.extend(b"id\0");
    b.extend(23u32.to_be_bytes());
    b.extend((-1i32).to_be_bytes());
    xlog(b)
}

fn insert(id: &str) -> ReplicationEvent {
    let mut b = vec![b'I'];
    b.extend(1u32.to_be_bytes());
    b.push(b'N');
    b.extend(1i16.to_be_bytes());
    b.push(b't');
    b.extend((id.len() as i32).to_be_bytes());
    b.extend(id.as_bytes());
    xlog(b)
}

fn origin(name: &str) -> ReplicationEvent {
    let mut b = vec![b'O'];
    b.extend(5u64.to_be_bytes());
    b.extend(name.as_bytes());
    b.push(0);
    xlog(b)
}

fn feed(a: &mut Assembler, events: Vec<ReplicationEvent>) -> Vec<StreamEvent> {
    for event in events {
        a.handle(event).unwrap();
    }
    std::iter::from_fn(|| a.pop()).collect()
}

#[test]
fn a_transaction_comes_out_as_begin_changes_commit_with_its_origin() {
    let mut a = Assembler::new(Lsn::ZERO, Lsn::ZERO);
    let out = feed(
        &mut a,
        vec![
            begin(100),
            origin("pgrealm"),
            relation(),
            insert("1"),
            insert("2"),
            commit(100, 120),
        ],
    );
    assert_eq!(out.len(), 4, "{out:?}");
    let StreamEvent::Begin(b) = &out[0] else {
        panic!()
    };
    assert_eq!(b.final_lsn, Lsn(100));
    assert_eq!(b.origin.as_ref().unwrap().name, "pgrealm");
    let StreamEvent::Change(Change::Insert { relation, new }) = &out[2] else {
        panic!()
    };
    assert_eq!(relation.name, "t");
    assert_eq!(new[0], ColumnValue::Text(Bytes::from_static(b"2")));
    assert_eq!(
        out[3],
        StreamEvent::Commit(TransactionCommit {
            commit_lsn: Lsn(100),
            end_lsn: Lsn(120),
            commit_time: 1
        })
    );
    assert_eq!(
        a.confirmed(),
        Lsn::ZERO,
        "nothing is confirmed until the consumer says so"
    );
}

#[test]
fn transactions_the_consumer_holds_are_skipped_by_lsn() {
    // The consumer holds everything up to end LSN 220.
    let mut a = Assembler::new(Lsn(220), Lsn(120));
    let out = feed(
        &mut a,
        vec![
            begin(200),
            relation(),
            insert("skipped"),
            commit(200, 220),
            begin(300),
            insert("new"),
            commit(300, 320),
        ],
    );
    let StreamEvent::Begin(b) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(b.final_lsn, Lsn(300));
    assert_eq!(out.len(), 3);
    assert!(
        a.relations().relation(1).is_some(),
        "relations of skipped transactions still count"
    );
}

#[test]
fn keepalives_are_confirmed_only_when_idle_and_everything_delivered_is_confirmed() {
    let mut a = Assembler::new(Lsn::ZERO, Lsn(10));
    feed(&mut a, vec![keepalive(50)]);
    assert_eq!(
        a.confirmed(),
        Lsn(50),
        "idle, nothing delivered: follow the WAL"
    );

    feed(
        &mut a,
        vec![begin(100), relation(), insert("1"), keepalive(110)],
    );
    assert_eq!(a.confirmed(), Lsn(50), "mid-transaction keepalive");
    feed(&mut a, vec![commit(100, 120), keepalive(200)]);
    assert_eq!(
        a.confirmed(),
        Lsn(50),
        "the delivered commit is not confirmed yet"
    );

    a.confirm(Lsn(120));
    assert_eq!(
        a.confirmed(),
        Lsn(200),
        "confirming the last delivered commit releases the keepalive seen after it"
    );
    feed(&mut a, vec![keepalive(300)]);
    assert_eq!(a.confirmed(), Lsn(300));

    // A keepalive seen before a Begin must not be released by a confirm after that Begin.
    feed(
        &mut a,
        vec![begin(400), insert("2"), commit(400, 420), keepalive(500)],
    );
    feed(&mut a, vec![begin(600)]);
    a.confirm(Lsn(420));
    assert_eq!(a.confirmed(), Lsn(420));
    a.confirm(Lsn(100));
    assert_eq!(a.confirmed(), Lsn(420), "monotonic");
}

#[test]
fn protocol_violations_are_errors() {
    let mut a = Assembler::new(Lsn::ZERO, Lsn::ZERO);
    a.handle(relation()).unwrap();
    let err = a.handle(insert("1")).unwrap_err();
    assert!(err.to_string().contains("outside a transaction"), "{err}");
    let mut a = Assembler::new(Lsn::ZERO, Lsn::ZERO);
    a.handle(begin(1)).unwrap();
    let err = a.handle(insert("1")).unwrap_err();
    assert!(err.to_string().contains("before its Relation"), "{err}");
    let err = a.handle(begin(2)).unwrap_err();
    assert!(err.to_string().contains("Begin inside"), "{err}");
    let mut a = Assembler::new(Lsn::ZERO, Lsn::ZERO);
    let err = a.handle(commit(1, 2)).unwrap_err();
    assert!(err.to_string().contains("Commit outside"), "{err}");
    let err = a.handle(xlog(vec![b'I', 0])).unwrap_err();
    assert!(matches!(err, ReplicationError::Decode { .. }), "{err}");
}

#[test]
fn messages_keep_their_place() {
    let mut a = Assembler::new(Lsn::ZERO, Lsn::ZERO);
    let message = |transactional| ReplicationEvent::Message {
        transactional,
        lsn: Lsn(5),
        prefix: "pgrealm".into(),
        content: Bytes::from_static(b"m"),
    };
    let out = feed(
        &mut a,
        vec![message(false), begin(10), message(true), commit(10, 20)],
    );
    assert!(matches!(&out[0], StreamEvent::Message(m) if !m.transactional));
    assert!(matches!(&out[1], StreamEvent::Begin(_)));
    assert!(matches!(&out[2], StreamEvent::Message(m) if m.transactional));
    assert!(matches!(&out[3], StreamEvent::Commit(_)));
}
