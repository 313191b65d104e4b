//! Remote mode: the store API over a remote object server's admin endpoints, and the sync engine
//! running both directions against it (`realm.url`), on the real PostgreSQL of the test harness.
//!
//! The object server runs in this process but on a runtime and thread of its own, as a server in
//! another process would (see `remote_support`).

mod remote_support;

use std::time::{Duration, Instant};

use pgrealm_runtime::client::Client;
use pgrealm_runtime::sync::engine;
use pgrealm_runtime::sync::pg_to_realm::checkpoint_key;
use pgrealm_runtime::testing::PgCluster;
use pgrealm_runtime::{Instruction, RealmPath, Store, StoreError, Subscription};
use pgrealm_schema::{Object, PrimaryKey, Value};
use remote_support::{wait_for, RemoteServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn route(store: &Store, realm: &RealmPath, id: &str) -> Option<Object> {
    store
        .realm(realm)
        .unwrap()
        .and_then(|v| v.object("Route", &PrimaryKey::String(id.into())).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_api_works_over_a_remote_server() {
    let server = RemoteServer::start();
    let schema = transit::Schema::schema().clone();
    let token = server.keys.admin_token().to_owned();
    let base = server.base.clone();
    let remote = tokio::task::spawn_blocking(move || Store::connect_remote(&base, &token, schema))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(remote.remote_url(), Some(server.base.as_str()));
    let (a, b) = (
        RealmPath::parse("/a").unwrap(),
        RealmPath::parse("/b").unwrap(),
    );

    // A feed subscribed before anything exists sees realms created later.
    let mut feed = remote.subscribe(Subscription::new(regex::Regex::new("^/(a|b)$").unwrap()));

    // One commit across two realms, with metadata, lands atomically on the server.
    let (r, a2, b2) = (remote.clone(), a.clone(), b.clone());
    let info = tokio::task::spawn_blocking(move || {
        let mut tx = r.begin_write("postgres");
        tx.put_object(
            &a2,
            Object::new("Route")
                .with("id", Value::String("r1".into()))
                .with("name", Value::String("Loop".into())),
        )?;
        tx.put_object(
            &b2,
            Object::new("Bus")
                .with("id", Value::Int(7))
                .with("name", Value::String("Seven".into())),
        )?;
        tx.set_metadata("postgres/test/lsn", b"0/16B3748".to_vec());
        tx.commit()
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(info.version_of(&a), Some(1));
    assert_eq!(info.version_of(&b), Some(1));
    assert_eq!(
        server.store.metadata("postgres/test/lsn").unwrap(),
        Some(b"0/16B3748".to_vec())
    );
    assert_eq!(
        route(&server.store, &a, "r1").unwrap().get("name"),
        Some(&Value::String("Loop".into()))
    );

    // A commit expecting metadata the server holds otherwise is refused there with the store's
    // own error, plainly or streamed, and writes nothing.
    let r = remote.clone();
    let refusals = tokio::task::spawn_blocking(move || {
        let stale = |tx: &mut pgrealm_runtime::WriteTx| {
            tx.put_object(
                &RealmPath::parse("/c").unwrap(),
                Object::new("Bus")
                    .with("id", Value::Int(8))
                    .with("name", Value::String("Eight".into())),
            )
            .unwrap();
            tx.expect_metadata("postgres/test/lsn", Some(b"0/1".to_vec()));
            tx.set_metadata("postgres/test/lsn", b"0/2".to_vec());
        };
        let mut tx = r.begin_write("postgres");
        stale(&mut tx);
        let plain = tx.commit().unwrap_err();
        let mut batch = r.begin_write("postgres");
        stale(&mut batch);
        let streamed = r
            .begin_streaming("postgres")
            .unwrap()
            .apply(&mut batch)
            .and_then(|s| s.commit())
            .unwrap_err();
        [plain, streamed]
    })
    .await
    .unwrap();
    for e in &refusals {
        assert!(matches!(e, StoreError::MetadataChanged { .. }), "{e:?}");
        assert!(
            e.to_string().contains(
                "\"postgres/test/lsn\" holds \"0/16B3748\", but this commit expected \"0/1\""
            ),
            "{e}"
        );
    }
    assert!(server
        .store
        .realm(&RealmPath::parse("/c").unwrap())
        .unwrap()
        .is_none());
    assert_eq!(
        server.store.metadata("postgres/test/lsn").unwrap(),
        Some(b"0/16B3748".to_vec())
    );

    // Reads through the remote store answer as the server's store does.
    let (r, a2, b2) = (remote.clone(), a.clone(), b.clone());
    tokio::task::spawn_blocking(move || {
        let snapshot = r.snapshot().unwrap();
        let realms: Vec<_> = snapshot
            .realms()
            .unwrap()
            .into_iter()
            .map(|i| (i.path.to_string(), i.version))
            .collect();
        assert_eq!(realms, vec![("/a".to_owned(), 1), ("/b".to_owned(), 1)]);
        assert_eq!(
            r.locate("Bus", &PrimaryKey::Int(7)).unwrap(),
            vec![b2.clone()]
        );
        assert!(r.locate("Bus", &PrimaryKey::Int(8)).unwrap().is_empty());
        let view = r.realm(&b2).unwrap().unwrap();
        assert_eq!(view.version(), 1);
        let bus = view.object("Bus", &PrimaryKey::Int(7)).unwrap().unwrap();
        // Every property of the compiled class is present, as with the embedded store.
        assert_eq!(bus.get("route"), Some(&Value::Null));
        assert_eq!(view.count("Bus").unwrap(), 1);
        assert_eq!(view.objects("Route").unwrap().len(), 0);
        assert!(view.schema().unwrap().class("Bus").is_some());
        assert!(r
            .realm(&RealmPath::parse("/none").unwrap())
            .unwrap()
            .is_none());
        assert_eq!(r.metadata("absent").unwrap(), None);
        let changes = r.changes(&a2, 0, 10).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].origin, "postgres");

        // Update-if-present, move and delete are rebuilt on the server with their meaning.
        let mut tx = r.begin_write("postgres");
        tx.update_object(
            &a2,
            Object::new("Bus")
                .with("id", Value::Int(99))
                .with("name", Value::String("x".into())),
        )
        .unwrap();
        tx.move_object(
            &b2,
            &a2,
            Object::new("Bus")
                .with("id", Value::Int(7))
                .with("name", Value::String("Moved".into())),
        )
        .unwrap();
        tx.delete_object(&a2, "Route", PrimaryKey::String("r1".into()))
            .unwrap();
        tx.commit().unwrap();
        assert_eq!(
            r.locate("Bus", &PrimaryKey::Int(7)).unwrap(),
            vec![a2.clone()]
        );
        assert!(r.locate("Bus", &PrimaryKey::Int(99)).unwrap().is_empty());
        assert!(r
            .locate("Route", &PrimaryKey::String("r1".into()))
            .unwrap()
            .is_empty());
    })
    .await
    .unwrap();

    // The feed delivers every realm's changesets in order, then the later ones.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let cs = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .unwrap()
            .unwrap();
        seen.push((cs.realm.to_string(), cs.version, cs.origin.clone()));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("/a".into(), 1, "postgres".into()),
            ("/a".into(), 2, "postgres".into()),
            ("/b".into(), 1, "postgres".into()),
            ("/b".into(), 2, "postgres".into()),
        ]
    );
    assert_eq!(feed.positions().get(&a), Some(&2));

    // A feed resumed from positions only delivers what follows them.
    let mut resumed = remote.subscribe(
        Subscription::all()
            .resume_from(a.clone(), 2)
            .resume_from(b.clone(), 2),
    );
    let mut tx = server.store.begin_write("app");
    tx.put_object(
        &b,
        Object::new("Bus")
            .with("id", Value::Int(8))
            .with("name", Value::String("Eight".into())),
    )
    .unwrap();
    tokio::task::spawn_blocking(move || tx.commit())
        .await
        .unwrap()
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), resumed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (next.realm.as_str(), next.version, next.origin.as_str()),
        ("/b", 3, "app")
    );
    assert!(
        matches!(&next.instructions[..], [Instruction::Create { .. }]),
        "{:?}",
        next.instructions
    );

    // A feed that skips an origin gets its changesets without instructions from the server.
    let mut skipping = remote.subscribe(
        Subscription::all()
            .resume_from(a.clone(), 0)
            .resume_from(b.clone(), 1)
            .headers_only_from("postgres"),
    );
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let next = tokio::time::timeout(Duration::from_secs(10), skipping.next())
            .await
            .unwrap()
            .unwrap();
        seen.push((
            next.realm.to_string(),
            next.version,
            next.origin.clone(),
            next.instructions.len(),
        ));
    }
    seen.sort();
    let postgres_empty = seen
        .iter()
        .all(|(_, _, origin, n)| (origin == "postgres") == (*n == 0));
    assert!(postgres_empty, "{seen:?}");
    assert_eq!(
        seen.iter()
            .map(|(_, _, o, _)| o.as_str())
            .collect::<Vec<_>>(),
        ["postgres", "postgres", "postgres", "app"]
    );

    // A value the schema refuses fails at the call, before anything is sent.
    let mut tx = remote.begin_write("postgres");
    let err = tx
        .put_object(
            &a,
            Object::new("Bus").with("id", Value::String("not an int".into())),
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Value { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locate_many_answers_each_key_in_order_in_one_read_and_bounds_its_keys() {
    let server = RemoteServer::start();
    let admin = server.keys.admin_token().to_owned();
    let (a, b, c) = (
        RealmPath::parse("/a").unwrap(),
        RealmPath::parse("/b").unwrap(),
        RealmPath::parse("/c").unwrap(),
    );
    let bus = |id: i64| {
        Object::new("Bus")
            .with("id", Value::Int(id))
            .with("name", Value::String(format!("bus {id}")))
    };
    // Bus 1 in /a, bus 2 in /a and /b, bus 3 nowhere (yet); route r1 in /b.
    let mut tx = server.store.begin_write("app");
    tx.put_object(&a, bus(1)).unwrap();
    tx.put_object(&a, bus(2)).unwrap();
    tx.put_object(&b, bus(2)).unwrap();
    tx.put_object(
        &b,
        Object::new("Route")
            .with("id", Value::String("r1".into()))
            .with("name", Value::String("Loop".into())),
    )
    .unwrap();
    tokio::task::spawn_blocking(move || tx.commit())
        .await
        .unwrap()
        .unwrap();
    let reads = || {
        server
            .metrics
            .admin_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    };

    let (base, token) = (server.base.clone(), admin.clone());
    let schema = transit::Schema::schema().clone();
    let remote = tokio::task::spawn_blocking(move || Store::connect_remote(&base, &token, schema))
        .await
        .unwrap()
        .unwrap();
    let keys: Vec<PrimaryKey> = [1, 3, 2, 1].into_iter().map(PrimaryKey::Int).collect();
    let expected = vec![
        vec![a.clone()],
        vec![],
        vec![a.clone(), b.clone()],
        vec![a.clone()],
    ];
    let before = reads();
    let (r, k, local) = (remote.clone(), keys.clone(), server.store.clone());
    let (found, found_locally, routes, empty) = tokio::task::spawn_blocking(move || {
        let found = r.snapshot().unwrap().locate_many("Bus", &k).unwrap();
        let found_locally = local.snapshot().unwrap().locate_many("Bus", &k).unwrap();
        let routes = r
            .snapshot()
            .unwrap()
            .locate_many("Route", &[PrimaryKey::String("r1".into())])
            .unwrap();
        let empty = r.snapshot().unwrap().locate_many("Bus", &[]).unwrap();
        (found, found_locally, routes, empty)
    })
    .await
    .unwrap();
    assert_eq!(found, expected, "present, absent, in two realms, repeated");
    assert_eq!(
        found_locally, expected,
        "the embedded store answers the same"
    );
    assert_eq!(routes, vec![vec![b.clone()]]);
    assert!(empty.is_empty());
    assert_eq!(
        reads() - before,
        2,
        "one request per call, none for no keys"
    );

    // More keys than one request takes: the store sends them in several, answers in order.
    let many: Vec<PrimaryKey> = (0..25_000).map(PrimaryKey::Int).collect();
    let before = reads();
    let r = remote.clone();
    let found = tokio::task::spawn_blocking(move || {
        r.snapshot().unwrap().locate_many("Bus", &many).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        reads() - before,
        3,
        "25,000 keys in 3 requests of at most 10,000"
    );
    assert_eq!(found.len(), 25_000);
    assert_eq!(found[1], vec![a.clone()]);
    assert_eq!(found[2], vec![a.clone(), b.clone()]);
    assert!(found[3].is_empty() && found[24_999].is_empty());

    // A stream answers as of its own batches, the same way.
    let (r, k) = (remote.clone(), keys.clone());
    let (in_stream, unknown) = tokio::task::spawn_blocking(move || {
        let mut batch = r.begin_write("postgres");
        batch.put_object(&c, bus(3)).unwrap();
        let stream = r
            .begin_streaming("postgres")
            .unwrap()
            .apply(&mut batch)
            .unwrap();
        let found = stream.locate_many("Bus", &k).unwrap();
        let unknown = stream.locate_many("Nope", &k).unwrap_err();
        drop(stream);
        (found, unknown)
    })
    .await
    .unwrap();
    assert_eq!(
        in_stream,
        vec![
            vec![a.clone()],
            vec![RealmPath::parse("/c").unwrap()],
            vec![a.clone(), b.clone()],
            vec![a.clone()],
        ]
    );
    assert!(
        matches!(unknown, StoreError::UnknownClass { .. }),
        "{unknown}"
    );

    // Raw requests: the answer's form, a bad key named by its index, too many keys, no class.
    let read = |body: String| {
        let server = &server;
        let admin = admin.clone();
        async move {
            server
                .raw("POST", "/v1/admin/read", Some(&admin), "", &body)
                .await
        }
    };
    let (status, text) = read(r#"{"locate_many":{"class":"Bus","keys":[2,3]}}"#.into()).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with(r#"{"realms":[["/a","/b"],[]]}"#), "{text}");
    let (status, text) = read(r#"{"locate_many":{"class":"Bus","keys":[1,"two"]}}"#.into()).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("keys[1]"), "{text}");
    let too_many = (0..10_001)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let (status, text) = read(format!(
        r#"{{"locate_many":{{"class":"Bus","keys":[{too_many}]}}}}"#
    ))
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("at most 10000 keys") && text.contains("10001"),
        "{text}"
    );
    let (status, text) = read(r#"{"locate_many":{"class":"Nope","keys":[1]}}"#.into()).await;
    assert_eq!(status, 404, "{text}");
    // The same bounds in a stream's reads, which stays open after a refused read.
    let id = server.open_stream().await;
    let target = format!("/v1/admin/streams/{id}/read");
    let body = format!(r#"{{"locate_many":{{"class":"Bus","keys":[{too_many}]}}}}"#);
    let (status, text) = server.raw("POST", &target, Some(&admin), "", &body).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("at most 10000 keys"), "{text}");
    let body = r#"{"locate_many":{"class":"Bus","keys":[1,"two"]}}"#;
    let (status, text) = server.raw("POST", &target, Some(&admin), "", body).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("keys[1]"), "{text}");
    let body = r#"{"locate_many":{"class":"Bus","keys":[2,3]}}"#;
    let (status, text) = server.raw("POST", &target, Some(&admin), "", body).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with(r#"{"realms":[["/a","/b"],[]]}"#), "{text}");
    let (status, text) = server.abort_stream(&id).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        server
            .metrics
            .render()
            .contains("pgrealm_admin_reads_total"),
        "the counter is exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_with_a_wrong_token_or_to_nothing_says_what_to_do() {
    let server = RemoteServer::start();
    let schema = transit::Schema::schema().clone();
    let base = server.base.clone();
    let s = schema.clone();
    let err = tokio::task::spawn_blocking(move || {
        Store::connect_remote(&base, "wrong-token-wrong-token", s)
    })
    .await
    .unwrap()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("refused the admin token") && err.contains("realm.admin_token_file"),
        "{err}"
    );

    let user = server
        .keys
        .issue("alice", 3600, chrono::Utc::now().timestamp())
        .unwrap();
    let (base, s) = (server.base.clone(), schema.clone());
    let err = tokio::task::spawn_blocking(move || Store::connect_remote(&base, &user, s))
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("needs the server's admin token, not a user token"),
        "{err}"
    );

    // Nothing listens there any more.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let s = schema.clone();
    let err = tokio::task::spawn_blocking(move || {
        Store::connect_remote(&format!("http://{closed}"), "x".repeat(32).as_str(), s)
    })
    .await
    .unwrap()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cannot reach it") && err.contains("realm.url"),
        "{err}"
    );

    let err = tokio::task::spawn_blocking(move || {
        Store::connect_remote("https://example.invalid", "x", schema)
    })
    .await
    .unwrap()
    .unwrap_err()
    .to_string();
    assert!(err.contains("realm.url must be http://host:port"), "{err}");

    let err = tokio::task::spawn_blocking(|| {
        Store::connect_remote(
            "http://admin:hunter2@127.0.0.1:1",
            "x",
            transit::Schema::schema().clone(),
        )
    })
    .await
    .unwrap()
    .unwrap_err()
    .to_string();
    assert!(err.contains("must not hold credentials"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");

    // A schema with other classes is refused by name.
    let other = pgrealm_schema::Schema::new(vec![transit::Schema::schema().classes[0].clone()]);
    let (base, token) = (server.base.clone(), server.keys.admin_token().to_owned());
    let err = tokio::task::spawn_blocking(move || Store::connect_remote(&base, &token, other))
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(err.contains("different schema"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoints_refuse_users_and_strangers() {
    let server = RemoteServer::start();
    let admin = server.keys.admin_token().to_owned();
    let user = server
        .keys
        .issue("alice", 3600, chrono::Utc::now().timestamp())
        .unwrap();
    let forged = format!("{}x", &user[..user.len() - 1]);
    let commit = r#"{"origin":"postgres","ops":[{"put":{"realm":"/alice/r","class":"Bus","object":{"id":1,"name":"x"}}}]}"#;
    let ws = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let batch =
        r#"{"ops":[{"put":{"realm":"/alice/r","class":"Bus","object":{"id":1,"name":"x"}}}]}"#;
    let cases: [(&str, &str, &str, &str); 9] = [
        ("POST", "/v1/admin/read", "", r#"{"realms":{}}"#),
        ("POST", "/v1/admin/commit", "", commit),
        ("GET", "/v1/admin/feed", ws, ""),
        // Streamed writes: checked before the stream id is even looked up.
        ("POST", "/v1/admin/streams", "", r#"{"origin":"postgres"}"#),
        ("POST", "/v1/admin/streams/abc/ops", "", batch),
        (
            "POST",
            "/v1/admin/streams/abc/read",
            "",
            r#"{"metadata":{"key":"k"}}"#,
        ),
        ("POST", "/v1/admin/streams/abc/commit", "", "{}"),
        ("DELETE", "/v1/admin/streams/abc", "", ""),
        (
            "POST",
            "/v1/admin/streams/release",
            "",
            r#"{"owner":"slot"}"#,
        ),
    ];
    for (method, target, extra, body) in cases {
        let (status, text) = server.raw(method, target, None, extra, body).await;
        assert_eq!(status, 401, "{method} {target} without a token: {text}");
        let (status, text) = server
            .raw(method, target, Some("garbage"), extra, body)
            .await;
        assert_eq!(
            status, 401,
            "{method} {target} with a malformed token: {text}"
        );
        let (status, text) = server.raw(method, target, Some(&forged), extra, body).await;
        assert_eq!(status, 401, "{method} {target} with a forged token: {text}");
        let (status, text) = server.raw(method, target, Some(&user), extra, body).await;
        assert_eq!(status, 403, "{method} {target} as a user: {text}");
        assert!(text.contains("admin token"), "{text}");
    }
    // Nothing was written by the refused commits.
    assert!(server
        .store
        .snapshot()
        .unwrap()
        .realms()
        .unwrap()
        .is_empty());
    // No refused request opened a stream: the admin's opens at once (and is aborted).
    let id = server.open_stream().await;
    let (status, text) = server.abort_stream(&id).await;
    assert_eq!(status, 200, "{text}");

    // The admin gets through; a bad op names its index and writes nothing.
    let (status, text) = server
        .raw(
            "POST",
            "/v1/admin/read",
            Some(&admin),
            "",
            r#"{"realms":{}}"#,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let bad = r#"{"origin":"postgres","ops":[{"put":{"realm":"/a","class":"Bus","object":{"id":1}}},{"put":{"realm":"/a","class":"Nope","object":{}}}]}"#;
    let (status, text) = server
        .raw("POST", "/v1/admin/commit", Some(&admin), "", bad)
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("ops[1]"), "{text}");
    assert!(server
        .store
        .snapshot()
        .unwrap()
        .realms()
        .unwrap()
        .is_empty());
    let (status, text) = server
        .raw("GET", "/v1/admin/feed", Some(&admin), ws, "")
        .await;
    assert_eq!(status, 101, "{text}");
}

async fn pg_query(db_url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let client = pgrealm_runtime::testing::connect(db_url).await.unwrap();
    client.query(sql, &[]).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_engine_syncs_both_ways_through_a_remote_server_and_resumes_from_its_checkpoint() {
    let db = PgCluster::shared().fresh_database().unwrap();
    PgCluster::shared()
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    let server = RemoteServer::start();
    let data = tempfile::tempdir().unwrap();
    let config = server.config(&db.url, data.path(), &server.token_file);
    let realm = RealmPath::parse("/myRealm").unwrap();

    let running = engine::start(transit::Schema::schema(), &config)
        .await
        .unwrap();
    assert!(running.keys.is_none(), "remote mode has no keys of its own");
    assert_eq!(running.addr, server.addr);
    // The engine serves its own health and counters, and nothing of the realms.
    let local = running.listen_addr;
    assert_ne!(local, server.addr);
    let get = |target: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(local).await.unwrap();
        stream
            .write_all(
                format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    let metrics = get("/metrics").await;
    assert!(
        metrics.starts_with("HTTP/1.1 200") && metrics.contains("pgrealm_"),
        "{metrics}"
    );
    let realms = get("/v1/realms").await;
    assert!(
        realms.starts_with("HTTP/1.1 404") && realms.contains("remote object server"),
        "{realms}"
    );
    // No embedded store was created next to the engine.
    assert!(!data.path().join(pgrealm_runtime::STORE_FILE).exists());

    // PostgreSQL → the remote realm.
    PgCluster::shared()
        .batch_execute(
            &db.name,
            "INSERT INTO route (id, name) VALUES ('r1', 'Loop')",
        )
        .unwrap();
    let (store, r) = (server.store.clone(), realm.clone());
    wait_for("route r1 in the remote realm", move || {
        route(&store, &r, "r1")
    })
    .await;

    // An object written through the client → PostgreSQL.
    let client = Client::new(
        &server.base,
        server.keys.admin_token(),
        transit::Schema::schema().clone(),
    );
    client
        .realm("/myRealm")
        .write(|tx| {
            tx.put(&transit::Bus {
                id: 1,
                name: "One".into(),
                route: None,
            });
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = pg_query(&db.url, "SELECT name FROM bus WHERE id = 1").await;
        if rows.len() == 1 {
            assert_eq!(rows[0].get::<_, String>(0), "One");
            break;
        }
        assert!(Instant::now() < deadline, "bus 1 never reached PostgreSQL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await.unwrap();

    // The checkpoint lives in the remote server's metadata.
    let key = checkpoint_key(&config.postgres.slot);
    let stopped_at = server
        .store
        .metadata(&key)
        .unwrap()
        .expect("a checkpoint on the server");

    // Changes made while the engine is down arrive after a restart, from that checkpoint.
    PgCluster::shared()
        .batch_execute(
            &db.name,
            "INSERT INTO route (id, name) VALUES ('r2', 'Express'); UPDATE route SET name = 'Loop 2' WHERE id = 'r1'",
        )
        .unwrap();
    let running = engine::start(transit::Schema::schema(), &config)
        .await
        .unwrap();
    let (store, r) = (server.store.clone(), realm.clone());
    wait_for("route r2 and the update after the restart", move || {
        let r1 = route(&store, &r, "r1")?;
        (route(&store, &r, "r2").is_some()
            && r1.get("name") == Some(&Value::String("Loop 2".into())))
        .then_some(())
    })
    .await;
    running.stop().await.unwrap();
    let resumed_at = server.store.metadata(&key).unwrap().unwrap();
    assert_ne!(resumed_at, stopped_at, "the checkpoint moved on");

    // Nothing was applied twice: each route was created once in the realm's whole log, and the
    // bus written through the API went to PostgreSQL once (and came back as nothing).
    let log = server.store.changes(&realm, 0, 10_000).unwrap();
    let creates = |id: &str| {
        log.iter()
            .flat_map(|cs| &cs.instructions)
            .filter(|i| matches!(i, Instruction::Create { class, key, .. } if class == "Route" && *key == PrimaryKey::String(id.into())))
            .count()
    };
    assert_eq!((creates("r1"), creates("r2")), (1, 1), "{log:#?}");
    let renames = log
        .iter()
        .flat_map(|cs| &cs.instructions)
        .filter(|i| matches!(i, Instruction::Set { property, new, .. } if property == "name" && *new == Value::String("Loop 2".into())))
        .count();
    assert_eq!(renames, 1, "{log:#?}");
    let buses = pg_query(&db.url, "SELECT count(*) FROM bus").await;
    assert_eq!(buses[0].get::<_, i64>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_refuses_to_start_with_a_wrong_admin_token() {
    let db = PgCluster::shared().fresh_database().unwrap();
    PgCluster::shared()
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    let server = RemoteServer::start();
    let data = tempfile::tempdir().unwrap();
    let wrong = data.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-admin-token-at-all").unwrap();
    let config = server.config(&db.url, data.path(), &wrong);
    let err = engine::start(transit::Schema::schema(), &config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&server.base) && err.contains("refused the admin token"),
        "{err}"
    );
    // Nothing was set up in PostgreSQL.
    let slots = pg_query(
        &db.url,
        "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
    )
    .await;
    assert_eq!(slots[0].get::<_, i64>(0), 0);
}

/// `Store::release_stream` aborts the open stream of an owner and says whether there was one;
/// a server from before that endpoint (the rest of its admin API there) reads as "nothing
/// released", so an engine still starts against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_a_stream_by_owner_and_a_server_without_release() {
    let server = RemoteServer::start();
    let schema = transit::Schema::schema().clone();
    let (base, token) = (server.base.clone(), server.keys.admin_token().to_owned());
    let released = tokio::task::spawn_blocking(move || {
        let remote = Store::connect_remote(&base, &token, schema).unwrap();
        let nothing = remote.release_stream("slot one").unwrap();
        let stream = remote.begin_streaming_as("postgres", "slot one").unwrap();
        // Its engine dies without a word.
        std::mem::forget(stream);
        let other = remote.release_stream("slot two").unwrap();
        let mine = remote.release_stream("slot one").unwrap();
        // The write lock is free again: an ordinary commit goes through at once.
        let mut tx = remote.begin_write("postgres");
        tx.set_metadata("k", b"v".to_vec());
        tx.commit().unwrap();
        (nothing, other, mine)
    })
    .await
    .unwrap();
    assert_eq!(released, (false, false, true));

    // An older server: its admin reads work, the release endpoint is unknown to it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let schema_json = serde_json::json!({ "schema": transit::Schema::schema() }).to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let schema_json = schema_json.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                // As a server of the stop before release: its `/v1/admin/streams/{id}` takes
                // DELETE only, so a POST to `/v1/admin/streams/release` is a bare 405.
                let (status, body) = if head.starts_with("POST /v1/admin/read ") {
                    ("200 OK", schema_json)
                } else {
                    ("405 Method Not Allowed", String::new())
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    let schema = transit::Schema::schema().clone();
    let released = tokio::task::spawn_blocking(move || {
        let older =
            Store::connect_remote(&format!("http://{addr}"), "x".repeat(32).as_str(), schema)
                .unwrap();
        older.release_stream("slot one")
    })
    .await
    .unwrap();
    assert!(matches!(released, Ok(false)), "{released:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_server_without_the_admin_api_is_named_as_such() {
    // What a server from before the admin endpoints answers to any unknown route.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                let body = r#"{"error":{"code":"not_found","message":"no such endpoint; the API lives under /v1/realms/<realm path>/-/<action>"}}"#;
                let answer = format!(
                    "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    let schema = transit::Schema::schema().clone();
    let err = tokio::task::spawn_blocking(move || {
        Store::connect_remote(&format!("http://{addr}"), "x".repeat(32).as_str(), schema)
    })
    .await
    .unwrap()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no admin sync API") && err.contains("upgrade the server"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_feed_and_reads_survive_a_server_restart() {
    let mut server = RemoteServer::start();
    let remote = server.connect().await;
    fn commit(store: &Store, id: i64) {
        let mut tx = store.begin_write("app");
        tx.put_object(
            &RealmPath::parse("/r").unwrap(),
            Object::new("Bus")
                .with("id", Value::Int(id))
                .with("name", Value::String(format!("bus {id}"))),
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let mut feed = remote.subscribe(Subscription::all());
    commit(&server.store, 1);
    let first = tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.version, 1);

    server.restart();
    commit(&server.store, 2);
    // The feed reports the interruption, reconnects from version 1 and goes on: version 2 next,
    // nothing delivered twice.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut interruptions = 0;
    let next = loop {
        match tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .unwrap()
        {
            Ok(cs) => break cs,
            Err(StoreError::Remote { .. } | StoreError::RemoteUnreachable { .. }) => {
                interruptions += 1
            }
            Err(e) => panic!("unexpected feed error: {e}"),
        }
        assert!(Instant::now() < deadline, "the feed never came back");
    };
    assert_eq!((next.realm.as_str(), next.version), ("/r", 2));
    assert!(interruptions >= 1, "the interruption was not reported");

    // Reads and commits go on over new connections.
    let r = remote.clone();
    let version = tokio::task::spawn_blocking(move || {
        commit(&r, 3);
        r.realm(&RealmPath::parse("/r").unwrap())
            .unwrap()
            .unwrap()
            .version()
    })
    .await
    .unwrap();
    assert_eq!(version, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_engine_waits_out_an_object_server_outage_and_applies_each_change_once() {
    let db = PgCluster::shared().fresh_database().unwrap();
    PgCluster::shared()
        .batch_execute(&db.name, transit::Schema::DDL)
        .unwrap();
    let mut server = RemoteServer::start();
    let data = tempfile::tempdir().unwrap();
    let mut config = server.config(&db.url, data.path(), &server.token_file);
    // Slots are cluster-wide and the other engine test of this file runs beside this one.
    config.postgres.slot = "pgrealm_outage".into();
    let realm = RealmPath::parse("/myRealm").unwrap();
    let running = engine::start(transit::Schema::schema(), &config)
        .await
        .unwrap();
    PgCluster::shared()
        .batch_execute(
            &db.name,
            "INSERT INTO route (id, name) VALUES ('r1', 'Loop')",
        )
        .unwrap();
    let (store, r) = (server.store.clone(), realm.clone());
    wait_for("route r1 in the remote realm", move || {
        route(&store, &r, "r1")
    })
    .await;

    // The server goes away; PostgreSQL changes go on meanwhile. The engine's commits fail while
    // it is down and the engine retries instead of stopping.
    let outage = {
        let db_name = db.name.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            PgCluster::shared()
                .batch_execute(
                    &db_name,
                    "INSERT INTO route (id, name) VALUES ('r2', 'Express'); \
                     UPDATE route SET name = 'Loop 2' WHERE id = 'r1'",
                )
                .unwrap();
        })
    };
    tokio::task::block_in_place(|| server.restart_after(Duration::from_millis(1500)));
    outage.join().unwrap();
    let (store, r) = (server.store.clone(), realm.clone());
    wait_for("the changes made during the outage", move || {
        let r1 = route(&store, &r, "r1")?;
        (route(&store, &r, "r2").is_some()
            && r1.get("name") == Some(&Value::String("Loop 2".into())))
        .then_some(())
    })
    .await;
    let reconnects = running
        .pg_to_realm
        .reconnects
        .load(std::sync::atomic::Ordering::Relaxed);
    running.stop().await.unwrap();
    assert!(
        reconnects >= 1,
        "the engine never met the outage (reconnects = {reconnects})"
    );

    let log = server.store.changes(&realm, 0, 10_000).unwrap();
    let creates = |id: &str| {
        log.iter()
            .flat_map(|cs| &cs.instructions)
            .filter(|i| matches!(i, Instruction::Create { class, key, .. } if class == "Route" && *key == PrimaryKey::String(id.into())))
            .count()
    };
    assert_eq!((creates("r1"), creates("r2")), (1, 1), "{log:#?}");
}
