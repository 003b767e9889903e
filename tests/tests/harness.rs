//! The test support itself: a real Mosquitto, the MQTT test clients, the flaky-link proxy and
//! child processes, each shown to work and to fail when it should.

use std::io::{ErrorKind, Read as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use weir_tests::mosquitto::Mosquitto;
use weir_tests::mqtt_client::{Collector, Publisher, publish_all};
use weir_tests::process::{WeirProcess, poll_until};
use weir_tests::proxy::Proxy;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn collector_receives_10000_qos1_messages_in_order() {
    let broker = Mosquitto::start();
    let collector = Collector::subscribe(broker.port(), "harness/#");
    let messages: Vec<(String, Vec<u8>)> = (0..10_000)
        .map(|i| (format!("harness/s{}", i % 4), i.to_string().into_bytes()))
        .collect();
    publish_all(broker.port(), &messages, 1);
    let got = collector.wait_for(messages.len(), Duration::from_secs(60));
    assert_eq!(
        got.len(),
        messages.len(),
        "extra messages; broker log:\n{}",
        broker.log()
    );
    for (i, (m, (topic, payload))) in got.iter().zip(&messages).enumerate() {
        assert_eq!(
            (&m.topic, &m.payload),
            (topic, payload),
            "message {i} out of order"
        );
        assert_eq!(m.qos, 1);
    }
}

#[test]
fn user_properties_and_qos0_arrive() {
    let broker = Mosquitto::start();
    let collector = Collector::subscribe(broker.port(), "props/+");
    let mut publisher = Publisher::connect(broker.port());
    publisher.publish_with("props/a", "x", 1, &[("source", "s1"), ("unit", "C")]);
    publisher.publish_qos("props/b", "y", 0);
    publisher.wait_all_acked(WAIT);
    let got = collector.wait_for(2, WAIT);
    assert_eq!(
        got[0].user_properties,
        [("source".into(), "s1".into()), ("unit".into(), "C".into())]
    );
    assert_eq!(
        (got[1].topic.as_str(), got[1].text().as_str()),
        ("props/b", "y")
    );
}

#[test]
#[should_panic(expected = "0 of 1 messages arrived")]
fn collector_wait_fails_when_nothing_arrives() {
    let broker = Mosquitto::start();
    let collector = Collector::subscribe(broker.port(), "nothing/#");
    publish_all(broker.port(), &[("elsewhere".into(), b"x".to_vec())], 1);
    collector.wait_for(1, Duration::from_millis(300));
}

#[test]
fn two_brokers_get_different_ports() {
    let a = Mosquitto::start();
    let b = Mosquitto::start();
    assert_ne!(a.port(), b.port());
    assert!(a.log().contains("running"), "log:\n{}", a.log());
    TcpStream::connect(a.addr()).expect("a listens");
    TcpStream::connect(b.addr()).expect("b listens");
}

#[test]
fn broker_is_gone_after_drop() {
    let broker = Mosquitto::start();
    let (addr, pid) = (broker.addr(), broker.pid());
    drop(broker);
    let err = TcpStream::connect(addr).expect_err("nothing listens after drop");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "mosquitto {pid} still exists"
    );
}

/// Whether the peer closes a connection (EOF or reset) within `WAIT`.
fn closed_by_peer(mut stream: TcpStream) -> bool {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
    }
}

#[test]
fn proxy_forwards_mqtt_and_drops_connections_while_down() {
    let broker = Mosquitto::start();
    let collector = Collector::subscribe(broker.port(), "via/proxy");
    let proxy = Proxy::start(broker.addr());
    let mut publisher = Publisher::connect(proxy.port());
    publisher.publish("via/proxy", "1");
    publisher.wait_all_acked(WAIT);
    collector.wait_for(1, WAIT);
    assert_eq!(proxy.connections(), 1);

    proxy.down();
    assert_eq!(proxy.open_connections(), 0);
    poll_until("the publisher to lose its connection", WAIT, || {
        !publisher.is_connected()
    });
    let before = proxy.connections();
    let stream = TcpStream::connect(proxy.addr()).expect("the proxy still accepts while down");
    assert!(
        closed_by_peer(stream),
        "a new connection stays open while the proxy is down"
    );
    assert!(proxy.connections() > before);
    assert_eq!(
        publisher.connacks(),
        1,
        "reconnected through a proxy that is down"
    );

    proxy.up();
    poll_until("the publisher to reconnect", WAIT, || {
        publisher.connacks() == 2
    });
    publisher.publish("via/proxy", "2");
    publisher.wait_all_acked(WAIT);
    let got = collector.wait_for(2, WAIT);
    assert_eq!(got.iter().map(|m| m.text()).collect::<Vec<_>>(), ["1", "2"]);
}

#[test]
fn proxy_stall_holds_bytes_until_up() {
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.addr());
    let mut publisher = Publisher::connect(proxy.port());
    proxy.stall();
    publisher.publish("stalled", "x");
    // Proving that nothing arrives needs a wait: 300 ms is far above a loopback round trip.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(publisher.acked(), 0, "a PUBACK crossed a stalled proxy");
    assert!(
        publisher.is_connected(),
        "a stall must not close the connection"
    );
    proxy.up();
    publisher.wait_all_acked(WAIT);
    assert_eq!(publisher.connacks(), 1);
}

#[test]
fn proxy_stops_on_drop() {
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.addr());
    let addr = proxy.addr();
    let stream = TcpStream::connect(addr).unwrap();
    drop(proxy);
    assert!(closed_by_peer(stream), "a connection survived the proxy");
    assert!(
        TcpStream::connect(addr).is_err(),
        "the proxy still listens after drop"
    );
}

#[test]
fn processes_are_captured_killed_and_terminated() {
    let sh = Path::new("/bin/sh");
    let script =
        "echo started >&2; trap 'echo got-term >&2; exit 3' TERM; while :; do sleep 0.05; done";
    let mut p = WeirProcess::spawn_program(sh, &["-c", script], &[]);
    p.wait_for_stderr("started", WAIT);
    let status = p.terminate();
    assert_eq!(status.code(), Some(3), "stderr: {}", p.stderr());
    assert!(p.stderr().contains("got-term"));

    let mut p = WeirProcess::spawn_program(
        sh,
        &["-c", "echo $GREETING; exec sleep 1000"],
        &[("GREETING", "hi")],
    );
    poll_until("stdout", WAIT, || p.stdout() == "hi\n");
    let pid = p.pid();
    let status = p.kill9();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert!(!Path::new(&format!("/proc/{pid}")).exists());

    let p = WeirProcess::spawn_program(sh, &["-c", "exec sleep 1000"], &[]);
    let pid = p.pid();
    drop(p);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "sleep {pid} survived drop"
    );
}

#[test]
#[should_panic(expected = "without printing")]
fn wait_for_stderr_fails_when_the_process_exits_first() {
    let mut p = WeirProcess::spawn_program(Path::new("/bin/sh"), &["-c", "echo other >&2"], &[]);
    p.wait_for_stderr("never", WAIT);
}

#[test]
fn weir_binary_builds_and_runs() {
    let mut weir = WeirProcess::spawn(&["--version"], &[]);
    let status = weir.wait(Duration::from_secs(30));
    assert!(status.success(), "stderr: {}", weir.stderr());
    assert!(
        weir.stdout().starts_with("weir "),
        "stdout: {}",
        weir.stdout()
    );
}
