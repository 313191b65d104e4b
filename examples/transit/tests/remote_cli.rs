//! The `transit` binary with `realm.url` (remote mode) from the outside: `status` reads the
//! remote object server's realms, `token` asks it for a user token, `reset --realms` refuses
//! (the realms are not here), and a wrong admin token is a clear error.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgrealm::runtime::auth::{Identity, Keys};

fn transit(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_transit"))
        .args(args)
        .current_dir(dir)
        .env_remove("PGREALM_POSTGRES_URL")
        .env_remove("PGREALM_ADMIN_TOKEN")
        .env_remove("PGREALM_REALM_URL")
        .stdin(Stdio::null())
        .output()
        .expect("the transit binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `transit serve` in its own directory, stopped when dropped.
struct Served {
    child: Child,
    port: u16,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_transit"))
        .args(["--set", &format!("realm.listen=127.0.0.1:{port}"), "serve"])
        .current_dir(dir.path())
        .env_remove("PGREALM_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let served = Served {
        child,
        port,
        data: dir.path().join("pgrealm-data"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while request(port, "GET", "/healthz", None, "").0 != 200 {
        assert!(Instant::now() < deadline, "serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    served
}

/// One HTTP/1.1 request; `(0, "")` when nothing listens yet.
fn request(
    port: u16,
    method: &str,
    target: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[test]
fn status_token_and_reset_with_a_remote_object_server() {
    let served = serve();
    let token_file = served.data.join("keys/admin.token");
    let admin = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    let (status, answer) = request(
        served.port,
        "POST",
        "/v1/realms/myRealm/-/transactions",
        Some(&admin),
        r#"{"ops":[{"put":{"class":"Bus","object":{"id":1,"name":"One"}}}]}"#,
    );
    assert_eq!(status, 200, "{answer}");

    let here = tempfile::tempdir().unwrap();
    let url = format!("realm.url=http://127.0.0.1:{}", served.port);
    let token_arg = format!("realm.admin_token_file={}", token_file.display());
    let remote = |args: &[&str]| {
        let mut all = vec!["--set", &url, "--set", &token_arg];
        all.extend_from_slice(args);
        transit(here.path(), &all)
    };

    // status: the realms and counts come from the remote server.
    let out = remote(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    assert!(
        shown.contains("(remote mode)") && shown.contains("/myRealm") && shown.contains("1 Bus"),
        "{shown}"
    );
    // Nothing was created here: the store is the remote one.
    assert!(!here.path().join("pgrealm-data").exists());

    // token: issued by the remote server, so its keys verify it.
    let out = remote(&["token", "alice", "--ttl-seconds", "60"]);
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let keys = Keys::load_or_create(&served.data, None).unwrap();
    assert_eq!(
        keys.verify(&token, chrono::Utc::now().timestamp()).unwrap(),
        Identity::User("alice".into())
    );

    // reset --realms: the realms are not here, so it refuses before doing anything.
    let out = remote(&["reset", "--yes", "--realms"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = text(&out);
    assert!(
        err.contains("remote object server") && err.contains("its machine"),
        "{err}"
    );

    // A wrong admin token is named as such.
    let wrong = here.path().join("wrong.token");
    std::fs::write(&wrong, "definitely-not-the-admin-token").unwrap();
    let out = transit(
        here.path(),
        &[
            "--set",
            &url,
            "--set",
            &format!("realm.admin_token_file={}", wrong.display()),
            "status",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out);
    assert!(err.contains("refused the admin token"), "{err}");
    assert!(!err.contains("definitely-not"), "the token leaked: {err}");
}
