//! The admin API over real loopback HTTP: first with a stand-in for the engine (routes, status
//! codes, the token for changes, the limits, which files a swap may name, and the client `weir
//! status` and `weir plugin ...` use), then against a real `weir run` between real Mosquitto
//! brokers (hostile swaps, huge requests, hundreds of half-open connections, a busy engine).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir::admin::{self, ChangeError, Control, Settings, client};
use weir_tests::mosquitto::Mosquitto;
use weir_tests::mqtt_client::Publisher;
use weir_tests::process::{TempDir, WeirProcess};

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
    fn metrics(&self, out: &mut admin::Prometheus) {
        out.counter("weir_messages_in_total", "Messages", &[], 7.0);
    }
    fn swap(
        &self,
        pipeline: &str,
        step: &str,
        path: &Path,
        sha256: Option<&str>,
    ) -> Result<Value, ChangeError> {
        self.calls.lock().unwrap().push(format!(
            "swap {pipeline} {step} {} {}",
            path.file_name().unwrap().to_string_lossy(),
            sha256.unwrap_or("-")
        ));
        match pipeline {
            "farm" => Ok(json!({ "step": step, "from_sha256": "a", "to_sha256": "b" })),
            _ => Err(ChangeError::Unknown(format!(
                "unknown pipeline {pipeline:?}"
            ))),
        }
    }
    fn rollback(&self, _: &str, _: &str) -> Result<Value, ChangeError> {
        Err(ChangeError::Refused(
            "there is no previous version to roll back to".into(),
        ))
    }
    fn shadow(
        &self,
        pipeline: &str,
        step: &str,
        path: &Path,
        _: Option<&str>,
    ) -> Result<Value, ChangeError> {
        self.calls.lock().unwrap().push(format!(
            "shadow {pipeline} {step} {}",
            path.file_name().unwrap().to_string_lossy()
        ));
        Ok(json!({ "step": step, "candidate_sha256": "b", "shadow": true }))
    }
    fn shadows(&self) -> Result<Value, ChangeError> {
        Ok(json!([]))
    }
    fn promote(&self, pipeline: &str, step: &str) -> Result<Value, ChangeError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("promote {pipeline} {step}"));
        Ok(json!({ "step": step, "from_sha256": "a", "to_sha256": "b" }))
    }
    fn discard(&self, pipeline: &str, step: &str) -> Result<Value, ChangeError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("discard {pipeline} {step}"));
        Ok(json!({ "step": step, "discarded": true }))
    }
}

/// A stand-in served on a free loopback port (on a runtime of its own), with a plugin directory
/// holding `x.wasm`.
struct Served {
    addr: String,
    fake: Arc<Fake>,
    plugins: TempDir,
    _rt: tokio::runtime::Runtime,
}

impl Served {
    /// The absolute path of a file in the plugin directory, as a swap names it.
    fn plugin(&self, name: &str) -> String {
        self.plugins.path().join(name).to_str().unwrap().to_owned()
    }
}

fn serve(token: Option<&str>) -> Served {
    let plugins = TempDir::new("weir-admin-plugins");
    std::fs::write(plugins.path().join("x.wasm"), b"\0asm").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let fake = Arc::new(Fake::default());
    let settings = Settings {
        token: token.map(str::to_owned),
        plugin_dirs: vec![plugins.path().to_owned()],
    };
    rt.spawn(admin::serve(listener, settings, fake.clone(), rx));
    // Served until the runtime is dropped.
    std::mem::forget(tx);
    Served {
        addr,
        fake,
        plugins,
        _rt: rt,
    }
}

#[test]
fn reading_is_open_and_answers_json_and_prometheus_text() {
    let s = serve(Some("s3cret"));
    let addr = &s.addr;
    let r = client::get(addr, "/health").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let r = client::get(addr, "/metrics").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.content_type.as_deref(),
        Some(admin::Prometheus::CONTENT_TYPE)
    );
    assert!(
        r.body.lines().any(|l| l == "weir_messages_in_total 7"),
        "{}",
        r.body
    );
    // The server's own counters: the answers so far.
    assert!(
        r.body.contains("weir_admin_answers_total{code=\"200\"} 1"),
        "{}",
        r.body
    );
    assert_eq!(
        client::get(addr, "/status").unwrap().json().unwrap()["pipelines"][0]["name"],
        "farm"
    );
    assert_eq!(
        client::get(addr, "/plugins").unwrap().json().unwrap()[0]["step"],
        "farm/transform[0]"
    );
    let r = client::get(addr, "/status?verbose=1").unwrap();
    assert_eq!(
        (r.status, r.content_type.as_deref()),
        (200, Some("application/json"))
    );
    let r = client::get(addr, "/nope").unwrap();
    assert_eq!(r.status, 404);
    assert!(
        r.json().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("/nope")
    );
    assert_eq!(client::get(addr, "/plugins/swap").unwrap().status, 405);
    assert_eq!(
        client::post(addr, "/status", Some("s3cret"), &json!({}))
            .unwrap()
            .status,
        405
    );
}

/// Sends `raw` as is and returns the status code and body of the answer (read to the close).
fn raw(addr: &str, raw: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

/// Sends `head` (a request head, without its blank line) and reads the answer's head, without
/// sending any body; `None` if no answer comes within `within`. The stream is returned open.
fn head_only(addr: &str, head: &str, within: Duration) -> (Option<u16>, TcpStream) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(format!("{head}\r\n\r\n").as_bytes()).unwrap();
    s.set_read_timeout(Some(within)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let started = Instant::now();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") && started.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let status = String::from_utf8_lossy(&got)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok());
    (status, s)
}

#[test]
fn changes_must_be_json_from_outside_a_browser() {
    // No token configured: changes are open on the address, but still not to web pages.
    let s = serve(None);
    let addr = &s.addr;
    let body =
        json!({ "pipeline": "farm", "step": "decode", "path": s.plugin("x.wasm") }).to_string();
    let post = |headers: &str| {
        raw(
            addr,
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
    assert!(s.fake.calls.lock().unwrap().is_empty());
    let (status, answer) = post("Content-Type: application/json; charset=utf-8\r\n");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(s.fake.calls.lock().unwrap().len(), 1);
    // Without a token, the client's requests need none.
    let r = client::post(
        addr,
        "/plugins/swap",
        None,
        &serde_json::from_str(&body).unwrap(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    let (status, _) = raw(
        addr,
        "POST /plugins/rollback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(status, 411);
    let (status, answer) = raw(
        addr,
        "POST /plugins/rollback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 5\r\n\r\n{nope",
    );
    assert_eq!(status, 400);
    assert!(answer.contains("not JSON"), "{answer}");
    let (status, _) = raw(addr, "garbage\r\n\r\n");
    assert_eq!(status, 400);
}

#[test]
fn a_stalled_client_does_not_hold_up_others() {
    let s = serve(None);
    let _stalled = TcpStream::connect(&s.addr).unwrap();
    let started = Instant::now();
    assert_eq!(client::get(&s.addr, "/health").unwrap().status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
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
fn the_client_gives_up_on_a_server_that_never_answers() {
    // Accepts, then never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let _held = std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(1).collect();
        std::thread::sleep(client::GET_TIMEOUT * 2);
        drop(held);
    });
    let started = Instant::now();
    let e = client::get(&addr, "/status").unwrap_err();
    assert!(started.elapsed() < client::GET_TIMEOUT + Duration::from_secs(5));
    assert!(format!("{e:#}").contains("did not answer"), "{e:#}");
}

#[test]
fn changes_need_the_token_and_say_why_they_are_refused() {
    let s = serve(Some("s3cret"));
    let addr = &s.addr;
    let body = json!({ "pipeline": "farm", "step": "transform[0]", "path": s.plugin("x.wasm") });
    let r = client::post(addr, "/plugins/swap", None, &body).unwrap();
    assert_eq!(r.status, 401);
    assert!(
        r.json().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("WEIR_ADMIN_TOKEN")
    );
    assert_eq!(
        client::post(addr, "/plugins/swap", Some("wrong"), &body)
            .unwrap()
            .status,
        401
    );
    assert!(
        s.fake.calls.lock().unwrap().is_empty(),
        "nothing was swapped without the token"
    );

    let r = client::post(addr, "/plugins/swap", Some("s3cret"), &body).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json().unwrap()["to_sha256"], "b");
    assert_eq!(
        *s.fake.calls.lock().unwrap(),
        vec!["swap farm transform[0] x.wasm -".to_owned()]
    );

    let unknown = json!({ "pipeline": "barn", "step": "decode", "path": s.plugin("x.wasm") });
    assert_eq!(
        client::post(addr, "/plugins/swap", Some("s3cret"), &unknown)
            .unwrap()
            .status,
        404
    );
    let r = client::post(
        addr,
        "/plugins/rollback",
        Some("s3cret"),
        &json!({ "pipeline": "farm", "step": "decode" }),
    )
    .unwrap();
    assert_eq!(r.status, 409);
    assert!(r.body.contains("no previous version"));
    // A shadow, its promotion and its discarding are changes like a swap: the token, then the
    // control.
    let shadow = json!({ "pipeline": "farm", "step": "transform[0]", "path": s.plugin("x.wasm"), "shadow": true });
    let step = json!({ "pipeline": "farm", "step": "transform[0]" });
    for (path, body) in [
        ("/plugins/swap", &shadow),
        ("/plugins/promote", &step),
        ("/plugins/discard", &step),
    ] {
        let r = client::post(addr, path, None, body).unwrap();
        assert_eq!(r.status, 401, "{path}: {}", r.body);
        let r = client::post(addr, path, Some("s3cret"), body).unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    let bad = json!({ "pipeline": "farm", "step": "transform[0]", "path": s.plugin("x.wasm"), "shadow": "yes" });
    let r = client::post(addr, "/plugins/swap", Some("s3cret"), &bad).unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        s.fake.calls.lock().unwrap()[2..],
        [
            "shadow farm transform[0] x.wasm",
            "promote farm transform[0]",
            "discard farm transform[0]"
        ]
    );
    assert_eq!(client::get(addr, "/plugins/shadow").unwrap().status, 200);
    let r = client::post(
        addr,
        "/plugins/swap",
        Some("s3cret"),
        &json!({ "pipeline": "farm" }),
    )
    .unwrap();
    assert_eq!(r.status, 400);
    let r = client::post(
        addr,
        "/plugins/rollback",
        Some("s3cret"),
        &json!({ "pipeline": "x".repeat(1000), "step": "decode" }),
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body.contains("1000 bytes in all"), "elided: {}", r.body);
    let big = json!({ "pipeline": "x".repeat(70_000), "step": "decode" });
    assert_eq!(
        client::post(addr, "/plugins/rollback", Some("s3cret"), &big)
            .unwrap()
            .status,
        413
    );
}

#[test]
fn the_token_is_checked_before_a_byte_of_the_body_is_read() {
    let s = serve(Some("s3cret"));
    // A 60 KB body announced but not sent: the refusal comes from the head alone.
    for auth in ["", "Authorization: Bearer wrong\r\n"] {
        let (status, _open) = head_only(
            &s.addr,
            &format!(
                "POST /plugins/swap HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
                 Content-Length: 60000"
            ),
            Duration::from_secs(5),
        );
        assert_eq!(status, Some(401), "answered before the body was sent");
    }
    // With the token, the server waits for the body it announced (no answer without it).
    let (status, mut open) = head_only(
        &s.addr,
        "POST /plugins/rollback HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\
         Content-Type: application/json\r\nContent-Length: 40",
        Duration::from_millis(300),
    );
    assert_eq!(status, None);
    let body = format!("{:<40}", r#"{"pipeline":"farm","step":"decode"}"#);
    open.write_all(body.as_bytes()).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    open.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 409"), "{answer}");
    assert!(s.fake.calls.lock().unwrap().is_empty());
}

#[test]
fn bodies_over_the_limit_are_refused_before_they_are_read() {
    let s = serve(None);
    let post = "POST /plugins/swap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json";
    // 10 GB announced: refused from the head, with what the limit is.
    let (status, mut open) = head_only(
        &s.addr,
        &format!("{post}\r\nContent-Length: 10000000000"),
        Duration::from_secs(5),
    );
    assert_eq!(status, Some(413));
    // And closes the connection rather than wait for the body.
    let mut rest = Vec::new();
    let closed = open.read_to_end(&mut rest);
    assert!(
        !matches!(&closed, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the connection is closed: {closed:?}"
    );
    // A length that does not even fit the parser's range (2^64 - 1, which once wrapped the
    // size check), and one just over the limit.
    for length in ["18446744073709551615", "65537"] {
        let (status, _) = head_only(
            &s.addr,
            &format!("{post}\r\nContent-Length: {length}"),
            Duration::from_secs(5),
        );
        let status = status.unwrap_or_else(|| panic!("no answer to Content-Length {length}"));
        assert!((400..500).contains(&status), "{length}: {status}");
    }
    assert!(s.fake.calls.lock().unwrap().is_empty());
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
}

#[test]
fn a_swap_names_a_regular_file_inside_the_plugin_directories() {
    let s = serve(None);
    let elsewhere = TempDir::new("weir-admin-elsewhere");
    let outside = elsewhere.path().join("evil.wasm");
    std::fs::write(&outside, b"\0asm").unwrap();
    std::os::unix::fs::symlink(&outside, s.plugins.path().join("link.wasm")).unwrap();
    std::fs::create_dir(s.plugins.path().join("dir.wasm")).unwrap();
    mkfifo(&s.plugins.path().join("fifo.wasm"));
    let swap = |path: &str, sha256: Value| {
        let body = json!({ "pipeline": "farm", "step": "decode", "path": path, "sha256": sha256 });
        let r = client::post(&s.addr, "/plugins/swap", None, &body).unwrap();
        let error = r.json().unwrap()["error"].as_str().unwrap_or("").to_owned();
        (r.status, error)
    };
    // Both are in the temp dir: out of the plugin directory by `..`.
    let dotdot = format!(
        "{}/../{}/evil.wasm",
        s.plugins.path().display(),
        elsewhere.path().file_name().unwrap().to_string_lossy()
    );
    for path in [
        "/dev/zero",
        outside.to_str().unwrap(),
        &s.plugin("link.wasm"),
        &dotdot,
    ] {
        let (status, error) = swap(path, Value::Null);
        assert_eq!(status, 403, "{path}: {error}");
        assert!(
            error.contains("is outside the directories weir loads swaps from")
                && error.contains("[admin] plugin_dirs"),
            "{path}: {error}"
        );
    }
    let (status, error) = swap(&s.plugin("fifo.wasm"), Value::Null);
    assert_eq!(status, 409, "{error}");
    assert!(error.contains("is a FIFO, not a regular file"), "{error}");
    let (status, error) = swap(&s.plugin("dir.wasm"), Value::Null);
    assert_eq!(status, 409, "{error}");
    assert!(error.contains("is a directory"), "{error}");
    let (status, error) = swap(&s.plugin("missing.wasm"), Value::Null);
    assert_eq!(status, 409, "{error}");
    let (status, error) = swap("x.wasm", Value::Null);
    assert_eq!(status, 400, "{error}");
    for bad in [
        json!("00"),
        json!("g".repeat(64)),
        json!(42),
        json!("a".repeat(500)),
    ] {
        let (status, error) = swap(&s.plugin("x.wasm"), bad.clone());
        assert_eq!(status, 400, "{bad}: {error}");
        assert!(error.contains("64 hex digits"), "{error}");
        assert!(error.len() < 400, "long values elided: {error}");
    }
    assert!(
        s.fake.calls.lock().unwrap().is_empty(),
        "nothing reached the engine"
    );
    let pin = "AB".repeat(32);
    let (status, error) = swap(&s.plugin("x.wasm"), json!(pin));
    assert_eq!(status, 200, "{error}");
    assert_eq!(
        *s.fake.calls.lock().unwrap(),
        vec![format!("swap farm decode x.wasm {}", pin.to_lowercase())]
    );
}

// ---- Against a real weir ----

/// How long weir may take to start (the first start compiles the plugins).
const START: Duration = Duration::from_secs(120);

/// A `weir run` with one pipeline, `relay`: JSON in, `transform` (a plugin copied into the
/// plugin directory `<dir>/plugins`, with `limits`), out to the cloud broker.
struct LiveWeir {
    weir: WeirProcess,
    admin: String,
    plugins: PathBuf,
    sensors: Mosquitto,
    _cloud: Mosquitto,
    _dir: TempDir,
}

fn start_live(transform: &str, limits: &str) -> LiveWeir {
    weir_tests::plugins();
    let sensors = Mosquitto::start();
    let cloud = Mosquitto::start();
    let dir = TempDir::new("weir-admin-live");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for name in ["counter_v1", "counter_v2", "hostile_loop"] {
        let file = format!("{name}.wasm");
        std::fs::copy(weir_tests::plugin_path(name), plugins.join(&file)).unwrap();
    }
    let config = format!(
        "version = 1\n\n[source]\nbroker = \"127.0.0.1:{}\"\nclient_id = \"weir-admin-test\"\n\n\
         [upstream]\nbroker = \"127.0.0.1:{}\"\n\n[storage]\ndata_dir = {:?}\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[pipeline]]\nname = \"relay\"\ntopics = [\"sensors/#\"]\n\n[pipeline.decode]\n\
         json = {{ key = \"sensor\", time = \"ts\", time_format = \"ms\" }}\n\n\
         [[pipeline.transform]]\nplugin = {:?}\n{limits}\n\n\
         [pipeline.output]\ntopic = \"relay/{{key}}\"\n",
        sensors.port(),
        cloud.port(),
        dir.path().join("data"),
        plugins.join(format!("{transform}.wasm")),
    );
    let config_path = dir.path().join("admin.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut weir = WeirProcess::spawn(
        &["run", config_path.to_str().unwrap()],
        &[("WEIR_LOG", "weir=info")],
    );
    weir.wait_for_stderr("subscribed", START);
    let admin = weir.admin_address(START);
    LiveWeir {
        weir,
        admin,
        plugins: plugins.canonicalize().unwrap(),
        sensors,
        _cloud: cloud,
        _dir: dir,
    }
}

impl LiveWeir {
    fn swap(&self, path: &str, sha256: Option<&str>) -> (u16, Value) {
        let body =
            json!({ "pipeline": "relay", "step": "transform[0]", "path": path, "sha256": sha256 });
        let r = client::post(&self.admin, "/plugins/swap", None, &body).unwrap();
        let v = r.json().unwrap_or(Value::Null);
        (r.status, v)
    }

    fn plugin(&self, name: &str) -> String {
        self.plugins.join(name).to_str().unwrap().to_owned()
    }

    /// weir's resident memory, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.weir.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kb * 1024
    }
}

#[test]
fn live_hostile_swaps_are_refused_and_sigterm_still_ends_weir() {
    let mut w = start_live("counter_v1", "");
    let elsewhere = TempDir::new("weir-admin-elsewhere");
    let outside = elsewhere.path().join("counter_v2.wasm");
    std::fs::copy(w.plugin("counter_v2.wasm"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, w.plugins.join("link.wasm")).unwrap();
    std::fs::create_dir(w.plugins.join("dir.wasm")).unwrap();
    mkfifo(&w.plugins.join("fifo.wasm"));

    let refusals = [
        ("/dev/zero".to_owned(), 403, "is outside the directories"),
        (
            outside.to_str().unwrap().to_owned(),
            403,
            "[admin] plugin_dirs",
        ),
        (w.plugin("link.wasm"), 403, "(that is, "),
        (w.plugin("fifo.wasm"), 409, "is a FIFO, not a regular file"),
        (
            w.plugin("dir.wasm"),
            409,
            "is a directory, not a regular file",
        ),
    ];
    for (path, code, says) in &refusals {
        let started = Instant::now();
        let (status, answer) = w.swap(path, None);
        assert_eq!(status, *code, "{path}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(says),
            "{path}: {answer}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path}: refused at once"
        );
    }
    // A pin that is not a sha256, and one that does not match: the request's pin, said so.
    let (status, answer) = w.swap(&w.plugin("counter_v2.wasm"), Some("00"));
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = w.swap(&w.plugin("counter_v2.wasm"), Some(&"0".repeat(64)));
    assert_eq!(status, 409, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("but the swap request pins 0000"), "{error}");
    assert!(!error.contains("config"), "{error}");
    // weir is unaffected: a good swap goes through, and the list shows it.
    let (status, answer) = w.swap(&w.plugin("counter_v2.wasm"), None);
    assert_eq!(status, 200, "{answer}");
    let plugins = client::get(&w.admin, "/plugins").unwrap().json().unwrap();
    assert_eq!(plugins[0]["sha256"], answer["to_sha256"], "{plugins}");
    assert_eq!(
        plugins[0]["previous_sha256"], answer["from_sha256"],
        "{plugins}"
    );
    assert!(
        plugins[0]["plugin"]
            .as_str()
            .unwrap()
            .ends_with("counter_v2.wasm")
    );

    let started = Instant::now();
    let status = w.weir.terminate();
    eprintln!("SIGTERM to exit: {:?}", started.elapsed());
    assert!(status.success(), "{status}: {}", w.weir.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SIGTERM ended weir in {:?}",
        started.elapsed()
    );
}

#[test]
fn live_huge_requests_are_refused_and_memory_stays_flat() {
    let mut w = start_live("counter_v1", "");
    let before = w.rss();
    // Eight requests at once announcing 2^64 - 1 bytes (which once wrapped the size check) or
    // 10 GB, each client sending 8 MB of body right away, unasked.
    let clients: Vec<_> = ["18446744073709551615", "10000000000"]
        .iter()
        .cycle()
        .take(8)
        .map(|length| {
            let addr = w.admin.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.write_all(
                    format!(
                        "POST /plugins/swap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                         Content-Length: {length}\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .unwrap();
                let mut body = s.try_clone().unwrap();
                body.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
                let writer = std::thread::spawn(move || {
                    let chunk = vec![b'{'; 1 << 20];
                    for _ in 0..8 {
                        if body.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                });
                // The answer comes at once, not after the body (nor a request timeout).
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut answer = [0u8; 64];
                let n = s.read(&mut answer).unwrap_or(0);
                let status: Option<u16> = String::from_utf8_lossy(&answer[..n])
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok());
                writer.join().unwrap();
                (length, status)
            })
        })
        .collect();
    for client in clients {
        let (length, status) = client.join().unwrap();
        let status =
            status.unwrap_or_else(|| panic!("no answer within 5 s to Content-Length {length}"));
        assert!((400..500).contains(&status), "{length}: {status}");
    }
    let after = w.rss();
    eprintln!(
        "weir's resident memory: {} MiB before, {} MiB after",
        before >> 20,
        after >> 20
    );
    assert!(
        after < before + (16 << 20),
        "weir grew from {} to {} MiB",
        before >> 20,
        after >> 20
    );
    let health = client::get(&w.admin, "/health").unwrap();
    assert_eq!(health.status, 200);
    assert!(w.weir.terminate().success());
}

#[test]
fn live_hundreds_of_half_open_connections_never_stall_status_or_a_swap() {
    let mut w = start_live("counter_v1", "");
    // Compile v2 first (on a loaded machine that alone can take seconds), then swap back and
    // forth while the connections are held.
    let (status, answer) = w.swap(&w.plugin("counter_v2.wasm"), None);
    assert_eq!(status, 200, "{answer}");
    let mut held = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(&w.admin).unwrap();
        if i % 2 == 1 {
            // Half a request head, never finished.
            s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
        }
        held.push(s);
    }
    // Far within the header timeout any of them would have to run out for a slot to free.
    let bound = admin::HEADER_TIMEOUT / 2;
    let started = Instant::now();
    let status = client::get(&w.admin, "/status").unwrap();
    let status_took = started.elapsed();
    assert_eq!(status.status, 200, "{}", status.body);
    assert!(status.json().unwrap()["pipelines"][0]["name"] == "relay");
    assert!(status_took < bound, "status took {status_took:?}");
    let started = Instant::now();
    let (code, answer) = w.swap(&w.plugin("counter_v1.wasm"), None);
    assert_eq!(code, 200, "{answer}");
    assert!(
        started.elapsed() < bound,
        "the swap took {:?}",
        started.elapsed()
    );
    eprintln!(
        "with 300 half-open connections held: status in {status_took:?}, a swap in {:?}",
        started.elapsed()
    );
    assert_eq!(held.len(), 300, "all still held");
    let metrics = client::get(&w.admin, "/metrics").unwrap().body;
    assert!(
        metrics.contains("weir_admin_connections_closed_total{reason=\"displaced\"}"),
        "{metrics}"
    );
    drop(held);
    assert!(w.weir.terminate().success());
}

#[test]
fn live_status_metrics_and_plugins_answer_while_the_engine_is_busy() {
    // Every call into the plugin spins until its 20 s budget runs out: the engine thread is
    // busy for that long with the first batch.
    let w = start_live(
        "hostile_loop",
        "limits = { time_budget = \"20s\", quarantine_after_failures = 1000 }",
    );
    let mut publisher = Publisher::connect(w.sensors.port());
    publisher.publish("sensors/s1", r#"{"sensor":"s1","ts":1700000000000,"t":1}"#);
    weir_tests::process::poll_until("weir took the message in", Duration::from_secs(30), || {
        let metrics = client::get(&w.admin, "/metrics").unwrap().body;
        metrics.lines().any(|l| l == "weir_messages_in_total 1")
    });
    let within = Duration::from_secs(3);
    let started = Instant::now();
    let status = client::get(&w.admin, "/status").unwrap().json().unwrap();
    eprintln!("status with the engine busy: {:?}", started.elapsed());
    assert!(
        started.elapsed() < within,
        "status took {:?}",
        started.elapsed()
    );
    assert_eq!(status["engine"], "busy", "{status}");
    assert_eq!(status["messages_in"], 1, "{status}");
    let started = Instant::now();
    let metrics = client::get(&w.admin, "/metrics").unwrap();
    eprintln!("metrics with the engine busy: {:?}", started.elapsed());
    assert!(
        started.elapsed() < within,
        "metrics took {:?}",
        started.elapsed()
    );
    assert!(
        metrics
            .body
            .contains("weir_plugin_calls_total{step=\"relay/transform[0]\"}"),
        "{}",
        metrics.body
    );
    let started = Instant::now();
    let plugins = client::get(&w.admin, "/plugins").unwrap().json().unwrap();
    assert!(
        started.elapsed() < within,
        "plugins took {:?}",
        started.elapsed()
    );
    assert_eq!(plugins[0]["step"], "relay/transform[0]", "{plugins}");
    // `weir status` says so, and shows what it knows.
    let mut cli = WeirProcess::spawn(&["status", "--admin", &w.admin], &[]);
    let exit = cli.wait(Duration::from_secs(10));
    assert!(exit.success(), "{}{}", cli.stdout(), cli.stderr());
    let out = cli.stdout();
    assert!(out.contains("engine      BUSY"), "{out}");
    assert!(out.contains("uplink"), "{out}");
    assert!(out.contains("relay/transform[0]"), "{out}");
}
