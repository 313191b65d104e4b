//! The realm store's API: typed and dynamic writes and reads, the changesets commits produce,
//! metadata, the locator, schema growth, retention, and the errors for bad input and bad files.

mod store_support;

use pgrealm_runtime::{
    Instruction, RealmPath, Store, StoreError, StoreOptions, FORMAT_VERSION, STORE_FILE,
};
use pgrealm_schema::{Object, PrimaryKey, Property, Value};
use store_support::{bus, schema, Bus};

fn path(s: &str) -> RealmPath {
    RealmPath::parse(s).unwrap()
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, schema(), StoreOptions::default()).unwrap()
}

#[test]
fn typed_put_get_delete_with_versions_and_changesets() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let realm = path("/transit");

    let mut tx = store.begin_write("app");
    tx.realm(&realm).put(&bus(5, "5A")).unwrap();
    let mut other = bus(6, "6B");
    other.tags = vec!["night".into()];
    tx.realm(&realm).put(&other).unwrap();
    assert_eq!(tx.commit().unwrap().version_of(&realm), Some(1));

    let view = store.realm(&realm).unwrap().unwrap();
    assert_eq!(view.version(), 1);
    assert_eq!(view.get::<Bus>(5).unwrap(), Some(bus(5, "5A")));
    assert_eq!(
        view.all::<Bus>().unwrap(),
        vec![bus(5, "5A"), other.clone()]
    );
    assert_eq!(view.get::<Bus>(7).unwrap(), None);

    // The first changeset gives the realm its class, then creates both objects.
    let first = &store.changes(&realm, 0, 10).unwrap()[0];
    assert_eq!(first.origin, "app");
    assert!(
        matches!(&first.instructions[0], Instruction::AddClass { class } if class.name == "Bus")
    );
    assert!(
        matches!(&first.instructions[1], Instruction::Create { key: PrimaryKey::Int(5), values, .. }
        if values["name"] == Value::String("5A".into()) && values["seats"] == Value::Null)
    );
    assert_eq!(first.instructions.len(), 3);

    // An update records only what changed, with old and new values; lists become list edits.
    let mut renamed = other.clone();
    renamed.name = "6C".into();
    renamed.tags.push("express".into());
    let mut tx = store.begin_write("postgres");
    tx.realm(&realm).put(&renamed).unwrap();
    assert_eq!(tx.commit().unwrap().version_of(&realm), Some(2));
    let second = &store.changes(&realm, 1, 10).unwrap()[0];
    assert_eq!(second.origin, "postgres");
    assert_eq!(
        second.instructions,
        vec![
            Instruction::Set {
                class: "Bus".into(),
                key: PrimaryKey::Int(6),
                property: "name".into(),
                old: Value::String("6B".into()),
                new: Value::String("6C".into()),
            },
            Instruction::ListInsert {
                class: "Bus".into(),
                key: PrimaryKey::Int(6),
                property: "tags".into(),
                index: 1,
                value: Value::String("express".into()),
            },
        ]
    );

    // Deleting records a delete; deleting what is not there changes nothing.
    let mut tx = store.begin_write("app");
    tx.realm(&realm).delete::<Bus>(5).unwrap();
    tx.realm(&realm).delete::<Bus>(99).unwrap();
    assert_eq!(tx.commit().unwrap().version_of(&realm), Some(3));
    let third = &store.changes(&realm, 2, 10).unwrap()[0];
    assert_eq!(
        third.instructions,
        vec![Instruction::Delete {
            class: "Bus".into(),
            key: PrimaryKey::Int(5)
        }]
    );
    assert_eq!(
        store.realm(&realm).unwrap().unwrap().get::<Bus>(5).unwrap(),
        None
    );
}

#[test]
fn a_commit_that_changes_nothing_creates_no_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let realm = path("/a");
    let mut tx = store.begin_write("app");
    tx.realm(&realm).put(&bus(1, "x")).unwrap();
    tx.commit().unwrap();

    let mut tx = store.begin_write("app");
    tx.realm(&realm).put(&bus(1, "x")).unwrap();
    tx.realm(&path("/b")).delete::<Bus>(1).unwrap();
    let info = tx.commit().unwrap();
    assert!(info.is_empty(), "{info:?}");
    assert_eq!(store.realm(&realm).unwrap().unwrap().version(), 1);
    assert!(store.realm(&path("/b")).unwrap().is_none());
    assert!(store.begin_write("app").commit().unwrap().is_empty());

    // Changesets hold the net change: a bus created and deleted in one commit is nothing.
    let mut tx = store.begin_write("app");
    tx.realm(&realm).put(&bus(2, "y")).unwrap();
    tx.realm(&realm).delete::<Bus>(2).unwrap();
    tx.realm(&path("/c")).put(&bus(3, "z")).unwrap();
    tx.realm(&path("/c")).delete::<Bus>(3).unwrap();
    assert!(tx.commit().unwrap().is_empty());
    assert!(store.realm(&path("/c")).unwrap().is_none());

    // A partial object changes only what it names.
    let mut tx = store.begin_write("app");
    tx.put_object(
        &realm,
        Object::new("Bus")
            .with("id", Value::Int(1))
            .with("seats", Value::Int(30)),
    )
    .unwrap();
    tx.commit().unwrap();
    let b = store
        .realm(&realm)
        .unwrap()
        .unwrap()
        .get::<Bus>(1)
        .unwrap()
        .unwrap();
    assert_eq!((b.name.as_str(), b.seats), ("x", Some(30)));
}

#[test]
fn commits_are_atomic_across_realms_and_carry_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut tx = store.begin_write("postgres");
    for i in 0..3 {
        tx.realm(&path(&format!("/r{i}")))
            .put(&bus(i, "b"))
            .unwrap();
    }
    tx.set_metadata("postgres/lsn", 42u64.to_be_bytes().to_vec());
    let info = tx.commit().unwrap();
    assert_eq!(info.versions.len(), 3);
    assert_eq!(
        store.metadata("postgres/lsn").unwrap(),
        Some(42u64.to_be_bytes().to_vec())
    );
    assert_eq!(store.metadata("other").unwrap(), None);

    // A failing operation fails the whole commit: nothing of it is applied.
    let mut tx = store.begin_write("app");
    tx.realm(&path("/r0")).put(&bus(100, "ok")).unwrap();
    tx.put_object(&path("/r1"), Object::new("Bus").with("id", Value::Int(101)))
        .unwrap();
    tx.set_metadata("postgres/lsn", vec![9]);
    let err = tx.commit().unwrap_err().to_string();
    assert!(
        err.contains("Bus.name") && err.contains("required"),
        "{err}"
    );
    assert_eq!(
        store
            .realm(&path("/r0"))
            .unwrap()
            .unwrap()
            .get::<Bus>(100)
            .unwrap(),
        None
    );
    assert_eq!(
        store.metadata("postgres/lsn").unwrap(),
        Some(42u64.to_be_bytes().to_vec())
    );

    // Metadata alone is stored durably without a version.
    let mut tx = store.begin_write("postgres");
    tx.set_metadata("postgres/lsn", vec![7]);
    assert!(tx.commit().unwrap().is_empty());
    assert_eq!(store.metadata("postgres/lsn").unwrap(), Some(vec![7]));
}

/// Two writers read the same checkpoint and both commit expecting it: the first commits, the
/// second is refused with an error naming the key and both values, and writes nothing — its
/// objects and its metadata stay as they were. Expecting "no value" works the same way.
#[test]
fn a_commit_that_expects_metadata_another_commit_changed_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let realm = path("/r");

    let mut first = store.begin_write("postgres");
    first.expect_metadata("postgres/s/lsn", None);
    first.realm(&realm).put(&bus(1, "one")).unwrap();
    first.set_metadata("postgres/s/lsn", b"0/10".to_vec());
    first.commit().unwrap();

    let mut late = store.begin_write("postgres");
    late.expect_metadata("postgres/s/lsn", None);
    late.realm(&realm).put(&bus(2, "two")).unwrap();
    late.set_metadata("postgres/s/lsn", b"0/20".to_vec());
    match late.commit() {
        Err(e @ StoreError::MetadataChanged { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("\"postgres/s/lsn\" holds \"0/10\"")
                    && message.contains("expected nothing")
                    && message.contains("nothing of this commit was written"),
                "{message}"
            );
        }
        other => panic!("a commit expecting a changed value gave {other:?}"),
    }
    assert_eq!(
        store.metadata("postgres/s/lsn").unwrap(),
        Some(b"0/10".to_vec())
    );
    let view = store.realm(&realm).unwrap().unwrap();
    assert_eq!(view.version(), 1);
    assert_eq!(view.get::<Bus>(2).unwrap(), None);

    let mut next = store.begin_write("postgres");
    next.expect_metadata("postgres/s/lsn", Some(b"0/10".to_vec()));
    next.realm(&realm).put(&bus(2, "two")).unwrap();
    next.set_metadata("postgres/s/lsn", b"0/20".to_vec());
    assert_eq!(next.commit().unwrap().version_of(&realm), Some(2));
    assert_eq!(
        store.metadata("postgres/s/lsn").unwrap(),
        Some(b"0/20".to_vec())
    );
}

/// A streamed write checks what it expects against its open transaction: a batch expecting a
/// value the store does not hold aborts the stream, and nothing of its earlier batches is
/// committed.
#[test]
fn a_streamed_write_that_expects_other_metadata_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let realm = path("/r");
    let mut tx = store.begin_write("postgres");
    tx.set_metadata("postgres/s/lsn", b"0/10".to_vec());
    tx.commit().unwrap();

    let mut batch = store.begin_write("postgres");
    batch.realm(&realm).put(&bus(1, "one")).unwrap();
    let streaming = store
        .begin_streaming("postgres")
        .unwrap()
        .apply(&mut batch)
        .unwrap();
    batch.realm(&realm).put(&bus(2, "two")).unwrap();
    batch.expect_metadata("postgres/s/lsn", Some(b"0/5".to_vec()));
    batch.set_metadata("postgres/s/lsn", b"0/20".to_vec());
    let err = streaming.apply(&mut batch).unwrap_err();
    assert!(matches!(err, StoreError::MetadataChanged { .. }), "{err:?}");
    assert!(store.realm(&realm).unwrap().is_none());
    assert_eq!(
        store.metadata("postgres/s/lsn").unwrap(),
        Some(b"0/10".to_vec())
    );

    // Expecting what it holds, the same stream commits.
    let mut batch = store.begin_write("postgres");
    batch.realm(&realm).put(&bus(1, "one")).unwrap();
    batch.expect_metadata("postgres/s/lsn", Some(b"0/10".to_vec()));
    batch.set_metadata("postgres/s/lsn", b"0/20".to_vec());
    let info = store
        .begin_streaming("postgres")
        .unwrap()
        .apply(&mut batch)
        .unwrap()
        .commit()
        .unwrap();
    assert_eq!(info.version_of(&realm), Some(1));
    assert_eq!(
        store.metadata("postgres/s/lsn").unwrap(),
        Some(b"0/20".to_vec())
    );
}

#[test]
fn the_locator_follows_objects_between_realms() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, b) = (path("/u1/r"), path("/u2/r"));
    let mut tx = store.begin_write("postgres");
    tx.realm(&a).put(&bus(7, "seven")).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        store.locate("Bus", &PrimaryKey::Int(7)).unwrap(),
        vec![a.clone()]
    );
    let snap = store.snapshot().unwrap();
    assert_eq!(
        snap.locate_table("bus", &PrimaryKey::Int(7)).unwrap(),
        vec![a.clone()]
    );

    // The routing column changed: the row moves.
    let mut tx = store.begin_write("postgres");
    tx.realm(&a).delete::<Bus>(7).unwrap();
    tx.realm(&b).put(&bus(7, "seven")).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        store.locate("Bus", &PrimaryKey::Int(7)).unwrap(),
        vec![b.clone()]
    );
    // The snapshot taken before still sees the old place.
    assert_eq!(snap.locate("Bus", &PrimaryKey::Int(7)).unwrap(), vec![a]);
    assert!(store.locate("Bus", &PrimaryKey::Int(8)).unwrap().is_empty());
    let err = snap
        .locate_table("nope", &PrimaryKey::Int(7))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`nope`") && err.contains("bus, route"),
        "{err}"
    );
}

#[test]
fn links_may_point_at_objects_that_arrive_later() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let realm = path("/t");
    let mut b = bus(1, "one");
    b.route = Some("R1".into());
    let mut tx = store.begin_write("app");
    tx.realm(&realm).put(&b).unwrap();
    tx.commit().unwrap();
    let mut tx = store.begin_write("app");
    tx.put_object(
        &realm,
        Object::new("Route")
            .with("id", Value::String("R1".into()))
            .with("name", Value::String("Ring".into()))
            .with("buses", Value::List(vec![Value::Link(PrimaryKey::Int(1))])),
    )
    .unwrap();
    let info = tx.commit().unwrap();
    let changes = store.changes(&realm, 1, 10).unwrap();
    assert_eq!(info.version_of(&realm), Some(2));
    // The realm gains the Route class in the changeset that first uses it.
    assert!(
        matches!(&changes[0].instructions[0], Instruction::AddClass { class } if class.name == "Route")
    );
    let view = store.realm(&realm).unwrap().unwrap();
    assert_eq!(
        view.get::<Bus>(1).unwrap().unwrap().route.as_deref(),
        Some("R1")
    );
    let names: Vec<_> = view
        .schema()
        .unwrap()
        .classes
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["Bus", "Route"]);
}

#[test]
fn unknown_classes_properties_and_bad_values_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let realm = path("/t");
    let mut tx = store.begin_write("app");
    let err = tx
        .put_object(&realm, Object::new("Train").with("id", Value::Int(1)))
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownClass { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("`Train`") && msg.contains("Bus, Route"),
        "{msg}"
    );
    let msg = tx
        .delete_object(&realm, "Train", PrimaryKey::Int(1))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("`Train`"), "{msg}");

    let msg = tx
        .put_object(
            &realm,
            Object::new("Bus")
                .with("id", Value::Int(1))
                .with("colour", Value::Null),
        )
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no property `colour`"), "{msg}");
    let msg = tx
        .put_object(
            &realm,
            Object::new("Bus")
                .with("id", Value::Int(1))
                .with("seats", Value::Int(1 << 20)),
        )
        .unwrap_err()
        .to_string();
    assert!(msg.contains("out of range") && msg.contains("/t"), "{msg}");
    let msg = tx
        .put_object(
            &realm,
            Object::new("Bus").with("name", Value::String("x".into())),
        )
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no primary key"), "{msg}");
    let msg = store
        .realm(&realm)
        .unwrap()
        .map(|v| v.objects("Train").unwrap_err().to_string());
    assert!(msg.is_none(), "the realm was never written");

    let msg = RealmPath::parse("/a/../b").unwrap_err().to_string();
    assert!(msg.contains("`..`"), "{msg}");
    let msg = RealmPath::parse("relative").unwrap_err().to_string();
    assert!(msg.contains("absolute"), "{msg}");
    let msg = RealmPath::parse("/a b").unwrap_err().to_string();
    assert!(
        msg.contains("' '") && msg.contains("letters, digits"),
        "{msg}"
    );
    let err: StoreError = RealmPath::parse("/~/x").unwrap_err().into();
    assert!(err.to_string().contains("user id"), "{err}");
}

#[test]
fn a_newer_class_definition_is_recorded_as_add_property() {
    let dir = tempfile::tempdir().unwrap();
    let realm = path("/t");
    let mut old = schema();
    old.classes[0].properties.retain(|p| p.name != "seats");
    {
        let store = Store::open(dir.path(), old, StoreOptions::default()).unwrap();
        let mut tx = store.begin_write("app");
        tx.put_object(
            &realm,
            Object::new("Bus")
                .with("id", Value::Int(1))
                .with("name", Value::String("a".into())),
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let store = open(dir.path());
    // Objects written before the property existed read it as NULL.
    let view = store.realm(&realm).unwrap().unwrap();
    assert_eq!(
        view.object("Bus", &PrimaryKey::Int(1))
            .unwrap()
            .unwrap()
            .get("seats"),
        Some(&Value::Null)
    );
    let mut tx = store.begin_write("app");
    tx.realm(&realm).put(&bus(2, "b")).unwrap();
    tx.commit().unwrap();
    let changes = store.changes(&realm, 1, 10).unwrap();
    assert!(matches!(&changes[0].instructions[0],
        Instruction::AddProperty { class, property: Property { name, .. } } if class == "Bus" && name == "seats"));
    assert!(matches!(
        &changes[0].instructions[1],
        Instruction::Create { .. }
    ));
}

#[test]
fn retention_is_bounded_and_asking_for_pruned_versions_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        log_retention: 3,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), schema(), options).unwrap();
    let realm = path("/t");
    for i in 0..10 {
        let mut tx = store.begin_write("app");
        tx.realm(&realm).put(&bus(i, "x")).unwrap();
        tx.commit().unwrap();
    }
    let view = store.realm(&realm).unwrap().unwrap();
    assert_eq!((view.version(), view.oldest_version()), (10, 8));
    let versions: Vec<_> = store
        .changes(&realm, 7, 10)
        .unwrap()
        .iter()
        .map(|c| c.version)
        .collect();
    assert_eq!(versions, [8, 9, 10]);
    assert!(store.changes(&realm, 10, 10).unwrap().is_empty());
    let err = store.changes(&realm, 6, 10).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Pruned {
                asked: 7,
                oldest: 8,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("resynchronize"), "{err}");
}

#[test]
fn a_file_in_use_or_from_a_newer_pgrealm_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let err = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(STORE_FILE) && msg.contains("another pgrealm"),
        "{msg}"
    );
    drop(store);

    // Stamp a future format version straight into the file.
    {
        let db = redb::Database::create(dir.path().join(STORE_FILE)).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut meta = tx
                .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
                .unwrap();
            meta.insert("format_version", FORMAT_VERSION + 1).unwrap();
        }
        tx.commit().unwrap();
    }
    let err = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerFormat { found, .. } if found == FORMAT_VERSION + 1),
        "{err}"
    );
    assert!(err.to_string().contains("at least as new"), "{err}");
}

#[test]
fn changesets_serialize_for_the_http_api() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let realm = path("/t");
    let mut tx = store.begin_write("app");
    tx.realm(&realm).put(&bus(1, "x")).unwrap();
    tx.commit().unwrap();
    let c = &store.changes(&realm, 0, 1).unwrap()[0];
    let json = serde_json::to_value(c).unwrap();
    assert_eq!(json["realm"], "/t");
    assert_eq!(json["instructions"][1]["op"], "create");
    let back: pgrealm_runtime::Changeset = serde_json::from_value(json).unwrap();
    assert_eq!(&back, c);
}

#[test]
fn move_object_carries_unnamed_properties_between_realms() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, b) = (path("/u1/r"), path("/u2/r"));
    let mut seven = bus(7, "seven");
    seven.seats = Some(30);
    seven.tags = vec!["x".into()];
    let mut tx = store.begin_write("postgres");
    tx.realm(&a).put(&seven).unwrap();
    tx.commit().unwrap();

    // The routing column changed and the row arrived without its unchanged (TOASTed) values.
    let mut tx = store.begin_write("postgres");
    let partial = Object::new("Bus")
        .with("id", Value::Int(7))
        .with("name", Value::String("renamed".into()));
    tx.move_object(&a, &b, partial).unwrap();
    let info = tx.commit().unwrap();
    assert_eq!(
        (info.version_of(&a), info.version_of(&b)),
        (Some(2), Some(1))
    );

    let moved = store
        .realm(&b)
        .unwrap()
        .unwrap()
        .get::<Bus>(7)
        .unwrap()
        .unwrap();
    assert_eq!(moved.name, "renamed");
    assert_eq!((moved.seats, moved.tags), (Some(30), vec!["x".to_owned()]));
    assert_eq!(
        store.realm(&a).unwrap().unwrap().get::<Bus>(7).unwrap(),
        None
    );
    assert_eq!(
        store.locate("Bus", &PrimaryKey::Int(7)).unwrap(),
        vec![b.clone()]
    );
    let removed = &store.changes(&a, 1, 10).unwrap()[0].instructions;
    assert!(
        matches!(&removed[..], [Instruction::Delete { .. }]),
        "{removed:?}"
    );

    // Moving what the source does not hold is a put into the target.
    let mut tx = store.begin_write("postgres");
    let nine = Object::new("Bus")
        .with("id", Value::Int(9))
        .with("name", Value::String("nine".into()));
    tx.move_object(&a, &b, nine).unwrap();
    tx.commit().unwrap();
    assert_eq!(store.locate("Bus", &PrimaryKey::Int(9)).unwrap(), vec![b]);
}

#[test]
fn update_object_changes_only_objects_that_are_there() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let realm = path("/t");
    let seats = |n| {
        Object::new("Bus")
            .with("id", Value::Int(1))
            .with("seats", Value::Int(n))
    };
    // Not there: nothing happens, not even the realm.
    let mut tx = store.begin_write("postgres");
    tx.update_object(&realm, seats(10)).unwrap();
    assert!(tx.commit().unwrap().is_empty());
    assert!(store.realm(&realm).unwrap().is_none());

    let mut tx = store.begin_write("app");
    tx.realm(&realm).put(&bus(1, "one")).unwrap();
    tx.commit().unwrap();
    let mut tx = store.begin_write("postgres");
    tx.update_object(&realm, seats(20)).unwrap();
    assert_eq!(tx.commit().unwrap().version_of(&realm), Some(2));
    let b = store
        .realm(&realm)
        .unwrap()
        .unwrap()
        .get::<Bus>(1)
        .unwrap()
        .unwrap();
    assert_eq!((b.name.as_str(), b.seats), ("one", Some(20)));

    // Deleted earlier in the same transaction: the update is skipped.
    let mut tx = store.begin_write("postgres");
    tx.realm(&realm).delete::<Bus>(1).unwrap();
    tx.update_object(&realm, seats(30)).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        store.realm(&realm).unwrap().unwrap().get::<Bus>(1).unwrap(),
        None
    );
}

/// A commit tells creates from updates without looking up keys past the last one the realm
/// holds: keys below, at and past that last key, in one commit, each get the right instruction.
#[test]
fn keys_around_the_last_one_are_created_or_updated_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let realm = path("/serial");
    let mut tx = store.begin_write("app");
    for id in 1..=5 {
        tx.realm(&realm).put(&bus(id, "old")).unwrap();
    }
    // Another realm's higher keys must not count as this realm's.
    tx.realm(&path("/other")).put(&bus(100, "x")).unwrap();
    tx.commit().unwrap();

    let mut tx = store.begin_write("app");
    for id in [3, 5, 6, 0, -7, 4] {
        tx.realm(&realm).put(&bus(id, "new")).unwrap();
    }
    tx.realm(&realm).put(&bus(100, "new")).unwrap();
    tx.commit().unwrap();

    let changes = store.changes(&realm, 1, 10).unwrap();
    let summary: Vec<(String, String)> = changes[0]
        .instructions
        .iter()
        .map(|i| {
            let op = match i {
                Instruction::Create { .. } => "create",
                Instruction::Set { .. } => "set",
                other => panic!("unexpected {other:?}"),
            };
            (op.to_owned(), i.key().unwrap().to_string())
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("set", "3"),
        ("set", "5"),
        ("create", "6"),
        ("create", "0"),
        ("create", "-7"),
        ("set", "4"),
        ("create", "100"),
    ]
    .iter()
    .map(|(op, key)| (op.to_string(), key.to_string()))
    .collect();
    assert_eq!(summary, expected);
    let view = store.realm(&realm).unwrap().unwrap();
    let ids: Vec<i64> = view.all::<Bus>().unwrap().iter().map(|b| b.id).collect();
    assert_eq!(ids, [-7, 0, 1, 2, 3, 4, 5, 6, 100]);
    assert_eq!(view.get::<Bus>(5).unwrap().unwrap().name, "new");
    assert_eq!(view.get::<Bus>(1).unwrap().unwrap().name, "old");
}
