//! The object server's HTTP + WebSocket API end to end: through the typed client and through raw
//! HTTP, every auth refusal, path traversal, size limits and bad values.

use std::sync::Arc;
use std::time::Duration;

use pgrealm::{Link, List, RealmObject};
use pgrealm_runtime::auth::Keys;
use pgrealm_runtime::client::{Client, ClientError};
use pgrealm_runtime::metrics::Metrics;
use pgrealm_runtime::server::{Server, ServerOptions};
use pgrealm_runtime::{Instruction, RealmPath, Store, StoreOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use transit::{Bus, Route};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    keys: Keys,
    base: String,
    addr: std::net::SocketAddr,
}

async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Store::open_compiled::<transit::Schema>(dir.path(), StoreOptions::default()).unwrap();
    let keys = Keys::load_or_create(dir.path(), None).unwrap();
    let options = ServerOptions {
        readable: vec![regex::Regex::new("^/shared/").unwrap()],
        max_body_bytes: 1024 * 1024,
        ..ServerOptions::default()
    };
    let server = Server::new(
        store.clone(),
        keys.clone(),
        Arc::new(Metrics::default()),
        options,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener, std::future::pending()));
    Fixture {
        _dir: dir,
        store,
        base: format!("http://{addr}"),
        keys,
        addr,
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Fixture {
    fn user_client(&self, user: &str) -> Client {
        let token = self.keys.issue(user, 3600, now()).unwrap();
        Client::new(&self.base, &token, transit::Schema::schema().clone())
    }

    fn admin_client(&self) -> Client {
        Client::new(
            &self.base,
            self.keys.admin_token(),
            transit::Schema::schema().clone(),
        )
    }

    /// One raw HTTP/1.1 request, exactly as written (no client-side normalization); returns the
    /// status and body.
    async fn raw(
        &self,
        method: &str,
        target: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, String) {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ));
        stream.write_all(head.as_bytes()).await.unwrap();
        // The server may answer (413) before reading a large body; a broken pipe is fine then.
        let _ = stream.write_all(body).await;
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (status, body)
    }
}

fn bus(id: i64, name: &str) -> Bus {
    Bus {
        id,
        name: name.into(),
        route: Some(Link::new("r1")),
    }
}

#[tokio::test]
async fn typed_client_writes_reads_and_watches() {
    let f = start().await;
    let alice = f.user_client("alice");
    let realm = alice.realm("/~/myRealm");
    let route = Route {
        id: "r1".into(),
        name: "Downtown".into(),
        schedules: List::new(),
    };
    let v1 = realm
        .write(|tx| {
            tx.put(&route).put(&bus(5, "Five"));
        })
        .await
        .unwrap();
    assert_eq!(v1, 1);
    assert_eq!(realm.objects::<Bus>().await.unwrap(), vec![bus(5, "Five")]);
    assert_eq!(realm.get::<Bus>(5).await.unwrap(), Some(bus(5, "Five")));
    assert_eq!(realm.get::<Bus>(6).await.unwrap(), None);
    assert_eq!(realm.get::<Route>("r1").await.unwrap(), Some(route));

    // The store holds it under alice's own path: `~` expanded to her user id.
    let path = RealmPath::parse("/alice/myRealm").unwrap();
    assert_eq!(f.store.realm(&path).unwrap().unwrap().version(), 1);

    let (changes, version) = realm.changes(0).await.unwrap();
    assert_eq!(version, 1);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].origin, "app");
    assert!(changes[0]
        .instructions
        .iter()
        .any(|i| matches!(i, Instruction::Create { class, .. } if class == "Bus")));

    // watch: catches up from version 0, then streams live.
    let mut watch = realm.watch(0).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.version, 1);
    realm
        .write(|tx| {
            tx.put(&bus(5, "Five renamed"));
        })
        .await
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.version, 2);
    assert!(
        matches!(
            &second.instructions[..],
            [Instruction::Set { property, new: pgrealm::Value::String(s), .. }] if property == "name" && s == "Five renamed"
        ),
        "{:?}",
        second.instructions
    );

    // The delete goes through too.
    realm
        .write(|tx| {
            tx.delete::<Bus>(5);
        })
        .await
        .unwrap();
    assert_eq!(realm.objects::<Bus>().await.unwrap(), vec![]);

    // The admin sees every realm and can issue tokens that work.
    let admin = f.admin_client();
    assert_eq!(
        admin.realms().await.unwrap(),
        vec![("/alice/myRealm".to_owned(), 3)]
    );
    let token = admin.issue_token("bob", 60).await.unwrap();
    let bob = Client::new(&f.base, &token, transit::Schema::schema().clone());
    assert_eq!(
        bob.realm("/~/myRealm").objects::<Bus>().await.unwrap(),
        vec![]
    );
    let err = bob
        .realm("/alice/myRealm")
        .objects::<Bus>()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Api { status: 403, .. }), "{err}");
}

#[tokio::test]
async fn every_auth_refusal_reads_and_writes_nothing() {
    let f = start().await;
    let alice = f.keys.issue("alice", 3600, now()).unwrap();
    let expired = f.keys.issue("alice", 10, now() - 100).unwrap();
    let forged = Keys::ephemeral()
        .unwrap()
        .issue("alice", 3600, now())
        .unwrap();
    let mut tampered = alice.clone();
    tampered.pop();
    tampered.push(if alice.ends_with('A') { 'B' } else { 'A' });
    let put = br#"{"ops":[{"put":{"class":"Bus","object":{"id":1,"name":"x"}}}]}"#;

    for (token, want, why) in [
        (None, 401, "missing"),
        (Some("garbage"), 401, "malformed"),
        (Some(forged.as_str()), 401, "forged"),
        (Some(tampered.as_str()), 401, "tampered"),
        (Some(expired.as_str()), 401, "expired"),
    ] {
        let (status, body) = f
            .raw(
                "POST",
                "/v1/realms/alice/myRealm/-/transactions",
                token,
                put,
            )
            .await;
        assert_eq!(status, want, "{why}: {body}");
        assert!(
            body.contains(r#""code":"unauthenticated""#),
            "{why}: {body}"
        );
        let (status, _) = f
            .raw("GET", "/v1/realms/alice/myRealm/-/objects/Bus", token, b"")
            .await;
        assert_eq!(status, want, "{why}");
    }

    // Another user's realm: 403 for reads and writes, the admin endpoints too.
    let (status, body) = f
        .raw(
            "POST",
            "/v1/realms/bob/myRealm/-/transactions",
            Some(&alice),
            put,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(r#""code":"forbidden""#), "{body}");
    let (status, _) = f
        .raw(
            "GET",
            "/v1/realms/bob/myRealm/-/objects/Bus",
            Some(&alice),
            b"",
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = f.raw("GET", "/v1/realms", Some(&alice), b"").await;
    assert_eq!(status, 403);
    let (status, _) = f
        .raw("POST", "/v1/tokens", Some(&alice), br#"{"user":"bob"}"#)
        .await;
    assert_eq!(status, 403);
    // Readable realms: reading is allowed, writing is not.
    let (status, _) = f
        .raw(
            "GET",
            "/v1/realms/shared/news/-/objects/Bus",
            Some(&alice),
            b"",
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = f
        .raw(
            "POST",
            "/v1/realms/shared/news/-/transactions",
            Some(&alice),
            put,
        )
        .await;
    assert_eq!(status, 403);

    // Nothing was written by any refused request.
    assert!(f.store.snapshot().unwrap().realms().unwrap().is_empty());
}

#[tokio::test]
async fn path_traversal_and_bad_paths_are_refused() {
    let f = start().await;
    let alice = f.keys.issue("alice", 3600, now()).unwrap();
    let long = format!("/v1/realms/alice/{}/-/objects/Bus", "a".repeat(2000));
    for target in [
        "/v1/realms/alice/../bob/myRealm/-/objects/Bus",
        "/v1/realms/alice/%2e%2e/bob/myRealm/-/objects/Bus",
        "/v1/realms/alice/%2E%2E/bob/-/objects/Bus",
        "/v1/realms/alice/./myRealm/-/objects/Bus",
        "/v1/realms/alice//myRealm/-/objects/Bus",
        "/v1/realms/alice/my%2Frealm/-/objects/Bus",
        "/v1/realms/alice/~/myRealm/-/objects/Bus",
        "/v1/realms/alice/my%00realm/-/objects/Bus",
        long.as_str(),
    ] {
        let (status, body) = f.raw("GET", target, Some(&alice), b"").await;
        assert!(
            status == 400 || status == 403 || status == 404,
            "{target}: {status} {body}"
        );
        assert_ne!(status, 200, "{target}");
    }
    // `~` expands to the caller only; `%7E` is the same `~`.
    let (status, _) = f
        .raw(
            "GET",
            "/v1/realms/%7E/myRealm/-/objects/Bus",
            Some(&alice),
            b"",
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = f
        .raw(
            "GET",
            "/v1/realms/alice/../bob/-/objects/Bus",
            Some(f.keys.admin_token()),
            b"",
        )
        .await;
    assert_eq!(status, 400, "even the admin cannot traverse: {body}");
    assert!(body.contains("invalid_path"), "{body}");
}

#[tokio::test]
async fn bad_bodies_and_values_write_nothing() {
    let f = start().await;
    let alice = f.keys.issue("alice", 3600, now()).unwrap();
    let target = "/v1/realms/alice/myRealm/-/transactions";

    // One bad op anywhere: nothing of the transaction is written.
    let body = br#"{"ops":[{"put":{"class":"Bus","object":{"id":1,"name":"ok"}}},{"put":{"class":"Bus","object":{"id":2,"name":7}}}]}"#;
    let (status, text) = f.raw("POST", target, Some(&alice), body).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("ops[1]") && text.contains("Bus.name"),
        "{text}"
    );

    let (status, text) = f
        .raw(
            "POST",
            target,
            Some(&alice),
            br#"{"ops":[{"put":{"class":"Tram","object":{}}}]}"#,
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("Tram"), "{text}");

    let (status, text) = f.raw("POST", target, Some(&alice), b"{not json").await;
    assert_eq!(status, 400, "{text}");

    let big = vec![b' '; 2 * 1024 * 1024];
    let (status, _) = f.raw("POST", target, Some(&alice), &big).await;
    assert_eq!(status, 413);

    assert!(f.store.snapshot().unwrap().realms().unwrap().is_empty());

    let (status, text) = f
        .raw(
            "GET",
            "/v1/realms/alice/myRealm/-/objects/Bus/notanumber",
            Some(&alice),
            b"",
        )
        .await;
    assert_eq!(status, 400, "{text}");
    let (status, _) = f.raw("GET", "/healthz", None, b"").await;
    assert_eq!(status, 200);
    let (status, text) = f.raw("GET", "/metrics", None, b"").await;
    assert_eq!(status, 200);
    assert!(text.contains("pgrealm_replication_lag_bytes"), "{text}");
}

#[tokio::test]
async fn a_bus_round_trips_through_raw_json() {
    let f = start().await;
    let admin = f.keys.admin_token().to_owned();
    let body = br#"{"ops":[{"put":{"class":"Bus","object":{"id":9,"name":"Nine","route":"r1"}}}]}"#;
    let (status, text) = f
        .raw(
            "POST",
            "/v1/realms/myRealm/-/transactions",
            Some(&admin),
            body,
        )
        .await;
    assert_eq!((status, text.as_str()), (200, r#"{"version":1}"#));
    let (status, text) = f
        .raw(
            "GET",
            "/v1/realms/myRealm/-/objects/Bus/9",
            Some(&admin),
            b"",
        )
        .await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"id": 9, "name": "Nine", "route": "r1"})
    );
    let bus = Bus::from_object(
        &f.store
            .realm(&RealmPath::parse("/myRealm").unwrap())
            .unwrap()
            .unwrap()
            .object("Bus", &9i64.into())
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(bus.route, Some(Link::new("r1")));
}
