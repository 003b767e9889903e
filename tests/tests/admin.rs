//! The admin API over real loopback HTTP, with a stand-in for the engine: routes, status codes,
//! the token for changes, and the client `weir status` and `weir plugin ...` use.

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use weir::admin::{self, Control, client};

#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
}

impl Control for Fake {
    fn status(&self) -> Value {
        json!({ "pipelines": [{ "name": "farm" }] })
    }
    fn plugins(&self) -> Value {
        json!([{ "step": "farm/transform[0]" }])
    }
    fn metrics(&self) -> String {
        let mut p = admin::Prometheus::new();
        p.counter("weir_messages_in_total", "Messages", &[], 7.0);
        p.render()
    }
    fn swap(
        &self,
        pipeline: &str,
        step: &str,
        path: &Path,
        _: Option<&str>,
    ) -> Result<Value, String> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("swap {pipeline} {step} {}", path.display()));
        match pipeline {
            "farm" => Ok(json!({ "step": step, "from_sha256": "a", "to_sha256": "b" })),
            _ => Err(format!("unknown pipeline {pipeline:?}")),
        }
    }
    fn rollback(&self, _: &str, _: &str) -> Result<Value, String> {
        Err("there is no previous version to roll back to".into())
    }
}

/// Serves `fake` on a free loopback port (on a runtime of its own); returns the address.
fn serve(fake: Arc<Fake>, token: Option<&str>) -> (String, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    rt.spawn(admin::serve(listener, token.map(str::to_owned), fake, rx));
    std::mem::forget(_tx);
    (addr, rt)
}

#[test]
fn reading_is_open_and_answers_json_and_prometheus_text() {
    let (addr, _rt) = serve(Arc::new(Fake::default()), Some("s3cret"));
    let r = client::get(&addr, "/health").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let r = client::get(&addr, "/metrics").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type.as_deref(), Some("text/plain; version=0.0.4"));
    assert!(
        r.body
            .contains("# TYPE weir_messages_in_total counter\nweir_messages_in_total 7\n"),
        "{}",
        r.body
    );
    assert_eq!(
        client::get(&addr, "/status").unwrap().json().unwrap()["pipelines"][0]["name"],
        "farm"
    );
    assert_eq!(
        client::get(&addr, "/plugins").unwrap().json().unwrap()[0]["step"],
        "farm/transform[0]"
    );
    let r = client::get(&addr, "/status?verbose=1").unwrap();
    assert_eq!(
        (r.status, r.content_type.as_deref()),
        (200, Some("application/json"))
    );
    let r = client::get(&addr, "/nope").unwrap();
    assert_eq!(r.status, 404);
    assert!(
        r.json().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("/nope")
    );
    assert_eq!(client::get(&addr, "/plugins/swap").unwrap().status, 405);
    assert_eq!(
        client::post(&addr, "/status", Some("s3cret"), &json!({}))
            .unwrap()
            .status,
        405
    );
}

/// Sends `raw` as is and returns the status code and body of the answer.
fn raw(addr: &str, raw: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

#[test]
fn changes_must_be_json_from_outside_a_browser() {
    // No token configured: changes are open on the address, but still not to web pages.
    let fake = Arc::new(Fake::default());
    let (addr, _rt) = serve(fake.clone(), None);
    let body = r#"{"pipeline":"farm","step":"decode","path":"/x.wasm"}"#;
    let post = |headers: &str| {
        raw(
            &addr,
            &format!(
                "POST /plugins/swap HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let (status, answer) = post("Content-Type: text/plain\r\n");
    assert_eq!(status, 415, "{answer}");
    assert_eq!(post("").0, 415);
    let (status, answer) =
        post("Content-Type: application/json\r\nOrigin: http://evil.example\r\n");
    assert_eq!(status, 403, "{answer}");
    assert!(fake.calls.lock().unwrap().is_empty());
    let (status, answer) = post("Content-Type: application/json; charset=utf-8\r\n");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(fake.calls.lock().unwrap().len(), 1);
    // Without a token, the client's requests need none.
    let r = client::post(
        &addr,
        "/plugins/swap",
        None,
        &serde_json::from_str(body).unwrap(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    let (status, _) = raw(
        &addr,
        "POST /plugins/rollback HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(status, 411);
    let (status, answer) = raw(
        &addr,
        "POST /plugins/rollback HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{nope",
    );
    assert_eq!(status, 400);
    assert!(answer.contains("not JSON"), "{answer}");
    let (status, _) = raw(&addr, "garbage\r\n\r\n");
    assert_eq!(status, 400);
}

#[test]
fn a_stalled_client_does_not_hold_up_others() {
    let (addr, _rt) = serve(Arc::new(Fake::default()), None);
    let _stalled = std::net::TcpStream::connect(&addr).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(client::get(&addr, "/health").unwrap().status, 200);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn the_client_says_where_it_looked() {
    // A port nothing listens on: bind one, then free it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let e = client::get(&addr, "/status").unwrap_err();
    assert!(format!("{e:#}").contains(&addr), "{e:#}");
    assert!(format!("{e:#}").contains("[admin] listen"), "{e:#}");
}

#[test]
fn changes_need_the_token_and_say_why_they_are_refused() {
    let fake = Arc::new(Fake::default());
    let (addr, _rt) = serve(fake.clone(), Some("s3cret"));
    let body = json!({ "pipeline": "farm", "step": "transform[0]", "path": "/x.wasm" });
    let r = client::post(&addr, "/plugins/swap", None, &body).unwrap();
    assert_eq!(r.status, 401);
    assert!(
        r.json().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("WEIR_ADMIN_TOKEN")
    );
    assert_eq!(
        client::post(&addr, "/plugins/swap", Some("wrong"), &body)
            .unwrap()
            .status,
        401
    );
    assert!(
        fake.calls.lock().unwrap().is_empty(),
        "nothing was swapped without the token"
    );

    let r = client::post(&addr, "/plugins/swap", Some("s3cret"), &body).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json().unwrap()["to_sha256"], "b");
    assert_eq!(
        *fake.calls.lock().unwrap(),
        vec!["swap farm transform[0] /x.wasm".to_owned()]
    );

    let unknown = json!({ "pipeline": "barn", "step": "decode", "path": "/x.wasm" });
    assert_eq!(
        client::post(&addr, "/plugins/swap", Some("s3cret"), &unknown)
            .unwrap()
            .status,
        404
    );
    let r = client::post(
        &addr,
        "/plugins/rollback",
        Some("s3cret"),
        &json!({ "pipeline": "farm", "step": "decode" }),
    )
    .unwrap();
    assert_eq!(r.status, 409);
    assert!(r.body.contains("no previous version"));
    let r = client::post(
        &addr,
        "/plugins/swap",
        Some("s3cret"),
        &json!({ "pipeline": "farm" }),
    )
    .unwrap();
    assert_eq!(r.status, 400);
    let big = json!({ "pipeline": "x".repeat(70_000), "step": "decode" });
    assert_eq!(
        client::post(&addr, "/plugins/rollback", Some("s3cret"), &big)
            .unwrap()
            .status,
        413
    );
}
