//! Routes and their lists (the transit schema's `route_schedules`) as PostgreSQL and as the
//! server's realms hold them, for the remote tests that change them; a transaction applied and
//! waited for through a marker route.

use std::collections::BTreeMap;

use pgrealm_runtime::testing::{PgCluster, TestDb};
use pgrealm_runtime::RealmPath;
use pgrealm_schema::{PrimaryKey, Value};

use super::{wait_for, RemoteServer};

/// Run `sql` as one transaction, with a marker route inserted last in it, and wait until the
/// marker is in its realm: the whole transaction is applied then (a store commit is atomic).
pub async fn apply(db: &TestDb, server: &RemoteServer, marker: &str, sql: &str) {
    PgCluster::shared()
        .batch_execute(
            &db.name,
            &format!(
                "BEGIN; {sql}; INSERT INTO route (id, name, user_id) \
                 VALUES ('{marker}', 'marker', 'u0'); COMMIT;"
            ),
        )
        .unwrap();
    let store = server.store.clone();
    let key = PrimaryKey::String(marker.to_owned());
    wait_for(marker, move || {
        store
            .realm(&RealmPath::parse("/u0/myRealm").unwrap())
            .unwrap()?
            .object("Route", &key)
            .unwrap()
    })
    .await;
}

/// Realm path → route id → its schedules, as PostgreSQL holds them (in `idx` order).
pub async fn lists_in_postgresql(db: &TestDb) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let client = db.connect().await.unwrap();
    let mut entries: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in client
        .query(
            "SELECT oid, target FROM route_schedules ORDER BY oid, idx",
            &[],
        )
        .await
        .unwrap()
    {
        entries.entry(row.get(0)).or_default().push(row.get(1));
    }
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for row in client
        .query("SELECT id, user_id FROM route", &[])
        .await
        .unwrap()
    {
        let (id, user): (String, String) = (row.get(0), row.get(1));
        let list = entries.remove(&id).unwrap_or_default();
        out.entry(format!("/{user}/myRealm"))
            .or_default()
            .insert(id, list);
    }
    out
}

/// Realm path → route id → its schedules, as the server's realms hold them.
pub async fn lists_in_realms(
    server: &RemoteServer,
) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let store = server.store.clone();
    tokio::task::spawn_blocking(move || {
        let snapshot = store.snapshot().unwrap();
        let mut out = BTreeMap::new();
        for info in snapshot.realms().unwrap() {
            let view = snapshot.realm(&info.path).unwrap().unwrap();
            let mut routes = BTreeMap::new();
            for route in view.objects("Route").unwrap() {
                let Some(Value::String(id)) = route.get("id") else {
                    panic!("a route without an id: {route:?}");
                };
                let list = match route.get("schedules") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::List(items)) => items
                        .iter()
                        .map(|item| match item {
                            Value::Link(PrimaryKey::String(s)) => s.clone(),
                            other => panic!("route {id}: a schedule that is not a link: {other:?}"),
                        })
                        .collect(),
                    Some(other) => panic!("route {id}: schedules {other:?}"),
                };
                routes.insert(id.clone(), list);
            }
            if !routes.is_empty() {
                out.insert(info.path.to_string(), routes);
            }
        }
        out
    })
    .await
    .unwrap()
}

pub async fn assert_lists_match_postgresql(db: &TestDb, server: &RemoteServer, after: &str) {
    let expected = lists_in_postgresql(db).await;
    let actual = lists_in_realms(server).await;
    if actual != expected {
        // The first difference, rather than two maps of 2,000 routes.
        for (realm, routes) in &expected {
            for (id, list) in routes {
                let found = actual.get(realm).and_then(|r| r.get(id));
                assert_eq!(found, Some(list), "after {after}: route {id} in {realm}");
            }
        }
        assert_eq!(actual, expected, "after {after}");
    }
}
