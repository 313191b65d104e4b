//! Remote mode's batched metadata read: `metadata_many` on `/v1/admin/read` and on a stream's
//! reads, through `Snapshot::metadata_many` and `StreamingTx::metadata_many` of a remote store.

mod remote_support;

use std::sync::atomic::{AtomicU64, Ordering};

use remote_support::RemoteServer;

fn counter(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// `metadata_many` answers each key's value in order (null for none) in one read, in a stream
/// as of its own batches too; more keys than one request takes go in several; too many keys in
/// one request are refused, saying what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_many_answers_each_key_in_order_in_one_read_and_bounds_its_keys() {
    let server = RemoteServer::start();
    let admin = server.keys.admin_token().to_owned();
    let mut tx = server.store.begin_write("app");
    tx.set_metadata("a", b"1".to_vec());
    tx.set_metadata("b", vec![0, 255]);
    tx.set_metadata("k/5", b"five".to_vec());
    tokio::task::spawn_blocking(move || tx.commit())
        .await
        .unwrap()
        .unwrap();
    let reads = || counter(&server.metrics.admin_reads);
    let remote = server.connect().await;

    let keys = ["a", "missing", "b", "a"];
    let expected = vec![
        Some(b"1".to_vec()),
        None,
        Some(vec![0, 255]),
        Some(b"1".to_vec()),
    ];
    let before = reads();
    let (r, local) = (remote.clone(), server.store.clone());
    let (found, found_locally, empty) = tokio::task::spawn_blocking(move || {
        let found = r.snapshot().unwrap().metadata_many(&keys).unwrap();
        let found_locally = local.snapshot().unwrap().metadata_many(&keys).unwrap();
        let empty = r.snapshot().unwrap().metadata_many::<&str>(&[]).unwrap();
        (found, found_locally, empty)
    })
    .await
    .unwrap();
    assert_eq!(found, expected, "present, absent, not UTF-8, repeated");
    assert_eq!(
        found_locally, expected,
        "the embedded store answers the same"
    );
    assert!(empty.is_empty());
    assert_eq!(reads() - before, 1, "one request, none for no keys");

    // More keys than one request takes: several requests, answers in order.
    let many: Vec<String> = (0..25_000).map(|i| format!("k/{i}")).collect();
    let before = reads();
    let r = remote.clone();
    let found =
        tokio::task::spawn_blocking(move || r.snapshot().unwrap().metadata_many(&many).unwrap())
            .await
            .unwrap();
    assert_eq!(
        reads() - before,
        3,
        "25,000 keys in 3 requests of at most 10,000"
    );
    assert_eq!(found.len(), 25_000);
    assert_eq!(found[5], Some(b"five".to_vec()));
    assert!(found[4].is_none() && found[24_999].is_none());

    // A stream answers as of its own batches.
    let r = remote.clone();
    let (in_stream, before_commit) = tokio::task::spawn_blocking(move || {
        let mut batch = r.begin_write("postgres");
        batch.set_metadata("c", b"streamed".to_vec());
        let stream = r
            .begin_streaming("postgres")
            .unwrap()
            .apply(&mut batch)
            .unwrap();
        let found = stream.metadata_many(&["c", "a", "zz"]).unwrap();
        drop(stream);
        let outside = r.snapshot().unwrap().metadata_many(&["c"]).unwrap();
        (found, outside)
    })
    .await
    .unwrap();
    assert_eq!(
        in_stream,
        vec![Some(b"streamed".to_vec()), Some(b"1".to_vec()), None]
    );
    assert_eq!(before_commit, vec![None], "an aborted stream left nothing");

    // Raw requests: the answer's form, too many keys, keys that are not strings.
    let read = |body: String| {
        let server = &server;
        let admin = admin.clone();
        async move {
            server
                .raw("POST", "/v1/admin/read", Some(&admin), "", &body)
                .await
        }
    };
    let (status, text) = read(r#"{"metadata_many":{"keys":["a","missing"]}}"#.into()).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with(r#"{"values":["MQ==",null]}"#), "{text}");
    let too_many = (0..10_001)
        .map(|i| format!("\"k/{i}\""))
        .collect::<Vec<_>>()
        .join(",");
    let (status, text) = read(format!(r#"{{"metadata_many":{{"keys":[{too_many}]}}}}"#)).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("at most 10000 keys") && text.contains("10001") && text.contains("several"),
        "{text}"
    );
    let (status, text) = read(r#"{"metadata_many":{"keys":[1]}}"#.into()).await;
    assert_eq!(status, 400, "{text}");
    // The same in a stream's reads, which stays open after a refused read.
    let id = server.open_stream().await;
    let target = format!("/v1/admin/streams/{id}/read");
    let body = format!(r#"{{"metadata_many":{{"keys":[{too_many}]}}}}"#);
    let (status, text) = server.raw("POST", &target, Some(&admin), "", &body).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("at most 10000 keys"), "{text}");
    let body = r#"{"metadata_many":{"keys":["b","missing"]}}"#;
    let (status, text) = server.raw("POST", &target, Some(&admin), "", body).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with(r#"{"values":["AP8=",null]}"#), "{text}");
    let (status, text) = server.abort_stream(&id).await;
    assert_eq!(status, 200, "{text}");
}
