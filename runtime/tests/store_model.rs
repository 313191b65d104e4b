//! The store against a simple in-memory model over random operation sequences: contents,
//! versions (one per commit that changes a realm, none otherwise), the locator, and replicas
//! rebuilt from the changesets alone. proptest prints the failing sequence and its seed.

mod store_support;

use std::collections::BTreeMap;

use pgrealm_runtime::{apply, RealmObjects, RealmPath, Store, StoreOptions};
use pgrealm_schema::{Object, PrimaryKey, Value};
use proptest::prelude::*;
use store_support::schema;

#[derive(Debug, Clone)]
enum Op {
    /// Put bus `id` into realm `realm` with the properties given (`None`: not given).
    Put {
        realm: usize,
        id: i64,
        name: Option<String>,
        seats: Option<Option<i16>>,
        tags: Option<Vec<String>>,
    },
    Delete {
        realm: usize,
        id: i64,
    },
    /// Move bus `id` from realm `from` to realm `to`, renaming it on the way if `name` is given.
    Move {
        from: usize,
        to: usize,
        id: i64,
        name: Option<String>,
    },
    Commit,
}

const REALMS: usize = 3;

fn realm_path(i: usize) -> RealmPath {
    RealmPath::parse(&format!("/r{i}")).unwrap()
}

fn op() -> impl Strategy<Value = Op> {
    let name = proptest::option::of(prop_oneof![Just("a".to_owned()), Just("b".to_owned())]);
    let seats = proptest::option::weighted(0.7, proptest::option::weighted(0.8, 0i16..3));
    let tags = proptest::option::of(proptest::collection::vec(
        prop_oneof![
            Just("x".to_owned()),
            Just("y".to_owned()),
            Just("z".to_owned())
        ],
        0..5,
    ));
    prop_oneof![
        6 => (0..REALMS, 0i64..5, name, seats, tags).prop_map(|(realm, id, name, seats, tags)| {
            Op::Put { realm, id, name, seats, tags }
        }),
        2 => (0..REALMS, 0i64..5).prop_map(|(realm, id)| Op::Delete { realm, id }),
        2 => (0..REALMS, 0..REALMS, 0i64..5, proptest::option::of(Just("m".to_owned())))
            .prop_map(|(from, to, id, name)| Op::Move { from, to, id, name }),
        2 => Just(Op::Commit),
    ]
}

/// The model: per realm, bus id → every property value.
type Model = Vec<BTreeMap<i64, BTreeMap<String, Value>>>;

/// Apply one transaction's operations to the model; `None` when the store must refuse the commit
/// (a new bus without its required name).
fn model_commit(model: &Model, ops: &[Op]) -> Option<Model> {
    let mut next = model.clone();
    for op in ops {
        match op {
            Op::Put {
                realm,
                id,
                name,
                seats,
                tags,
            } => {
                let objects = &mut next[*realm];
                let object = match objects.get_mut(id) {
                    Some(o) => o,
                    None => {
                        let mut o = BTreeMap::new();
                        o.insert("id".to_owned(), Value::Int(*id));
                        o.insert("name".to_owned(), Value::String(name.clone()?));
                        o.insert("seats".to_owned(), Value::Null);
                        o.insert("route".to_owned(), Value::Null);
                        o.insert("tags".to_owned(), Value::List(Vec::new()));
                        objects.entry(*id).or_insert(o)
                    }
                };
                if let Some(n) = name {
                    object.insert("name".into(), Value::String(n.clone()));
                }
                if let Some(s) = seats {
                    object.insert(
                        "seats".into(),
                        s.map_or(Value::Null, |s| Value::Int(s.into())),
                    );
                }
                if let Some(t) = tags {
                    let items = t.iter().map(|t| Value::String(t.clone())).collect();
                    object.insert("tags".into(), Value::List(items));
                }
            }
            Op::Delete { realm, id } => {
                next[*realm].remove(id);
            }
            Op::Move { from, to, id, name } => {
                let mut values = next[*from].remove(id);
                if let (Some(v), Some(n)) = (&mut values, name) {
                    v.insert("name".into(), Value::String(n.clone()));
                }
                match (next[*to].get_mut(id), values) {
                    (Some(existing), Some(values)) => existing.extend(values),
                    (Some(existing), None) => {
                        if let Some(n) = name {
                            existing.insert("name".into(), Value::String(n.clone()));
                        }
                    }
                    (None, Some(values)) => {
                        next[*to].insert(*id, values);
                    }
                    (None, None) => {
                        let mut o = BTreeMap::new();
                        o.insert("id".to_owned(), Value::Int(*id));
                        o.insert("name".to_owned(), Value::String(name.clone()?));
                        o.insert("seats".to_owned(), Value::Null);
                        o.insert("route".to_owned(), Value::Null);
                        o.insert("tags".to_owned(), Value::List(Vec::new()));
                        next[*to].insert(*id, o);
                    }
                }
            }
            Op::Commit => unreachable!("transactions hold no commit"),
        }
    }
    Some(next)
}

fn store_object(op: &Op) -> Object {
    let Op::Put {
        id,
        name,
        seats,
        tags,
        ..
    } = op
    else {
        unreachable!()
    };
    let mut o = Object::new("Bus").with("id", Value::Int(*id));
    if let Some(n) = name {
        o = o.with("name", Value::String(n.clone()));
    }
    if let Some(s) = seats {
        o = o.with("seats", s.map_or(Value::Null, |s| Value::Int(s.into())));
    }
    if let Some(t) = tags {
        o = o.with(
            "tags",
            Value::List(t.iter().map(|t| Value::String(t.clone())).collect()),
        );
    }
    o
}

fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), schema(), StoreOptions::default()).unwrap();
    let mut model: Model = vec![BTreeMap::new(); REALMS];
    let mut versions = [0u64; REALMS];
    let mut replicas: Vec<(u64, RealmObjects)> = vec![(0, RealmObjects::new()); REALMS];
    let mut pending: Vec<Op> = Vec::new();
    let mut ops = ops;
    ops.push(Op::Commit);
    for op in ops {
        if !matches!(op, Op::Commit) {
            pending.push(op);
            continue;
        }
        let mut tx = store.begin_write("app");
        for op in &pending {
            match op {
                Op::Put { realm, .. } => tx
                    .put_object(&realm_path(*realm), store_object(op))
                    .unwrap(),
                Op::Delete { realm, id } => tx
                    .delete_object(&realm_path(*realm), "Bus", PrimaryKey::Int(*id))
                    .unwrap(),
                Op::Move { from, to, id, name } => {
                    let mut o = Object::new("Bus").with("id", Value::Int(*id));
                    if let Some(n) = name {
                        o = o.with("name", Value::String(n.clone()));
                    }
                    tx.move_object(&realm_path(*from), &realm_path(*to), o)
                        .unwrap()
                }
                Op::Commit => unreachable!(),
            }
        }
        let result = tx.commit();
        match model_commit(&model, &pending) {
            None => prop_assert!(result.is_err(), "the store accepted a bus without a name"),
            Some(next) => {
                let info = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                for (i, version) in versions.iter_mut().enumerate() {
                    if next[i] != model[i] {
                        *version += 1;
                    }
                    prop_assert_eq!(
                        info.version_of(&realm_path(i)),
                        Some(*version).filter(|_| next[i] != model[i])
                    );
                }
                model = next;
            }
        }
        pending.clear();

        // Contents and versions.
        let snapshot = store.snapshot().unwrap();
        for (i, expected) in model.iter().enumerate() {
            let view = snapshot.realm(&realm_path(i)).unwrap();
            prop_assert_eq!(view.as_ref().map_or(0, |v| v.version()), versions[i]);
            let objects = view.map(|v| v.objects("Bus").unwrap()).unwrap_or_default();
            let got: BTreeMap<i64, BTreeMap<String, Value>> = objects
                .into_iter()
                .map(|o| match o.values["id"] {
                    Value::Int(id) => (id, o.values),
                    _ => unreachable!(),
                })
                .collect();
            prop_assert_eq!(&got, expected);

            // A replica fed only changesets ends up equal.
            let (seen, replica) = &mut replicas[i];
            for c in snapshot.changes(&realm_path(i), *seen, usize::MAX).unwrap() {
                prop_assert_eq!(c.version, *seen + 1);
                apply(replica, &c.instructions).map_err(TestCaseError::fail)?;
                *seen = c.version;
            }
            let replica_values: BTreeMap<i64, BTreeMap<String, Value>> = replica
                .iter()
                .map(|((_, key), o)| match key {
                    PrimaryKey::Int(id) => (*id, o.values.clone()),
                    _ => unreachable!(),
                })
                .collect();
            prop_assert_eq!(&replica_values, expected);
        }
        // The locator knows every realm holding each bus.
        for id in 0..5 {
            let expected: Vec<_> = (0..REALMS)
                .filter(|i| model[*i].contains_key(&id))
                .map(realm_path)
                .collect();
            prop_assert_eq!(
                snapshot.locate("Bus", &PrimaryKey::Int(id)).unwrap(),
                expected
            );
        }
    }
    Ok(())
}

proptest! {
    // Each case opens a store and fsyncs per commit: few, short sequences keep the suite fast.
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn the_store_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        check(ops)?;
    }
}
