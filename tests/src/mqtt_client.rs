//! MQTT 5 test clients (rumqttc): a publisher that counts acknowledgements and a collector that
//! keeps every message it receives. Each runs its event loop on its own thread and runtime, so
//! both work from sync and async tests.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::oneshot;

/// How long connecting (CONNACK) and subscribing (SUBACK) may take.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between reconnect attempts after a connection error.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// Requests the client may queue before `publish` blocks.
const REQUEST_CHANNEL_CAPACITY: usize = 1000;

/// A message a [`Collector`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 user properties, in order.
    pub user_properties: Vec<(String, String)>,
    /// When it arrived, by the wall clock (µs since the Unix epoch).
    pub received_us: u64,
}

impl Message {
    /// The payload as UTF-8 (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// Publishes `messages` (topic, payload) in order from one connection and returns once every
/// one is acknowledged (PUBACK for QoS 1, written to the socket for QoS 0).
pub fn publish_all(port: u16, messages: &[(String, Vec<u8>)], qos: u8) {
    let mut publisher = Publisher::connect(port);
    for (topic, payload) in messages {
        publisher.publish_qos(topic, payload.clone(), qos);
    }
    let timeout = Duration::from_secs(30) + Duration::from_millis(messages.len() as u64);
    publisher.wait_all_acked(timeout);
}

/// What the event loop saw, shared with the test's thread.
#[derive(Debug, Default)]
struct Seen {
    connected: bool,
    connacks: usize,
    subacks: usize,
    /// PUBACKs plus QoS 0 publishes written.
    acked: usize,
    disconnected: bool,
    errors: Vec<String>,
    messages: Vec<Message>,
}

#[derive(Debug, Default)]
struct Shared {
    seen: Mutex<Seen>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// Waits until `done` holds; on timeout returns the state for the panic message.
    fn wait(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&Seen) -> bool,
    ) -> Result<MutexGuard<'_, Seen>, MutexGuard<'_, Seen>> {
        let deadline = Instant::now() + timeout;
        let mut seen = self.lock();
        loop {
            if done(&seen) {
                return Ok(seen);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(seen);
            }
            seen = self
                .changed
                .wait_timeout(seen, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// One MQTT 5 connection with its event loop polled continuously on its own thread. It
/// reconnects after errors (clean start: subscriptions and unacked publishes are lost).
#[derive(Debug)]
struct Session {
    client: AsyncClient,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Session {
    fn connect(port: u16, role: &str) -> Session {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "weir-test-{role}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options
            .set_clean_start(true)
            .set_keep_alive(Duration::from_secs(30))
            // Dead letters carry their input: a record may be far over rumqttc's 10 KiB default.
            .set_max_packet_size(Some(64 << 20));
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CHANNEL_CAPACITY);
        let shared = Arc::new(Shared::default());
        let (stop, mut stop_rx) = oneshot::channel::<()>();
        let seen = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("mqtt-{role}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("mqtt client runtime");
                rt.block_on(async move {
                    loop {
                        // Cancelling `poll` is only safe because the loop ends here.
                        let event = tokio::select! {
                            _ = &mut stop_rx => return,
                            event = eventloop.poll() => event,
                        };
                        match event {
                            Ok(event) => seen.update(|s| record(s, event)),
                            Err(e) => {
                                seen.update(|s| {
                                    s.connected = false;
                                    s.errors.push(e.to_string());
                                });
                                tokio::select! {
                                    _ = &mut stop_rx => return,
                                    () = tokio::time::sleep(RECONNECT_BACKOFF) => {}
                                }
                            }
                        }
                    }
                });
            })
            .expect("spawn mqtt client thread");
        let session = Session {
            client,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        };
        if let Err(seen) = session.shared.wait(HANDSHAKE_DEADLINE, |s| s.connacks > 0) {
            panic!(
                "no CONNACK from 127.0.0.1:{port} within {HANDSHAKE_DEADLINE:?}; errors: {:?}",
                seen.errors
            );
        }
        session
    }
}

fn record(seen: &mut Seen, event: Event) {
    match event {
        Event::Incoming(Packet::ConnAck(_)) => {
            seen.connected = true;
            seen.connacks += 1;
        }
        Event::Incoming(Packet::SubAck(_)) => seen.subacks += 1,
        Event::Incoming(Packet::PubAck(_)) => seen.acked += 1,
        Event::Incoming(Packet::Publish(p)) => seen.messages.push(Message {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.to_vec(),
            qos: p.qos as u8,
            retain: p.retain,
            user_properties: p.properties.map(|p| p.user_properties).unwrap_or_default(),
            received_us: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
        }),
        Event::Incoming(Packet::Disconnect(_)) => seen.connected = false,
        Event::Outgoing(Outgoing::Publish(0)) => seen.acked += 1,
        Event::Outgoing(Outgoing::Disconnect) => seen.disconnected = true,
        _ => {}
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A clean DISCONNECT if the connection is up; the event loop stops either way.
        if self.client.try_disconnect().is_ok() && self.shared.lock().connected {
            drop(self.shared.wait(Duration::from_secs(1), |s| s.disconnected));
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Drives a future to completion on this thread (rumqttc's request channel works with any
/// executor, and this works inside a tokio test too, where `block_on` would panic).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => panic!("no MQTT QoS {level}"),
    }
}

/// A connection that publishes while a test does other things.
#[derive(Debug)]
pub struct Publisher {
    session: Session,
    published: usize,
}

impl Publisher {
    /// Connects to 127.0.0.1:`port`; returns after the CONNACK.
    pub fn connect(port: u16) -> Publisher {
        Publisher {
            session: Session::connect(port, "pub"),
            published: 0,
        }
    }

    /// Publishes with QoS 1; blocks until the client accepted the request (not until acked).
    pub fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish_with(topic, payload, 1, &[]);
    }

    /// Publishes with `qos` (0 or 1).
    pub fn publish_qos(&mut self, topic: &str, payload: impl Into<Vec<u8>>, qos: u8) {
        self.publish_with(topic, payload, qos, &[]);
    }

    /// Publishes with `qos` (0 or 1) and MQTT 5 user properties.
    pub fn publish_with(
        &mut self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        level: u8,
        user_properties: &[(&str, &str)],
    ) {
        assert!(level <= 1, "Publisher counts PUBACKs: QoS 0 or 1 only");
        let properties = PublishProperties {
            user_properties: user_properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..PublishProperties::default()
        };
        let payload: Vec<u8> = payload.into();
        block_on(self.session.client.publish_with_properties(
            topic,
            qos(level),
            false,
            payload,
            properties,
        ))
        .unwrap_or_else(|e| panic!("publish to {topic}: {e}"));
        self.published += 1;
    }

    /// Publishes accepted so far.
    pub fn published(&self) -> usize {
        self.published
    }

    /// Publishes acknowledged so far (PUBACK, or written for QoS 0).
    pub fn acked(&self) -> usize {
        self.session.shared.lock().acked
    }

    /// Whether the connection is up (CONNACK received, no error since).
    pub fn is_connected(&self) -> bool {
        self.session.shared.lock().connected
    }

    /// CONNACKs received: 1 + the number of reconnects.
    pub fn connacks(&self) -> usize {
        self.session.shared.lock().connacks
    }

    /// Connection errors so far, oldest first.
    pub fn errors(&self) -> Vec<String> {
        self.session.shared.lock().errors.clone()
    }

    /// Waits until every publish so far is acknowledged; panics with the counts otherwise.
    pub fn wait_all_acked(&self, timeout: Duration) {
        let published = self.published;
        if let Err(seen) = self.session.shared.wait(timeout, |s| s.acked >= published) {
            panic!(
                "{} of {published} publishes acknowledged after {timeout:?}; connection errors: {:?}",
                seen.acked, seen.errors
            );
        }
    }
}

/// A subscriber that keeps every message it receives (QoS 1, clean start). Connect it directly
/// to a broker: it does not subscribe again after a reconnect.
#[derive(Debug)]
pub struct Collector {
    session: Session,
}

impl Collector {
    /// Subscribes to `filter` on 127.0.0.1:`port`; returns after the SUBACK.
    pub fn subscribe(port: u16, filter: &str) -> Collector {
        let session = Session::connect(port, "sub");
        block_on(session.client.subscribe(filter, QoS::AtLeastOnce))
            .unwrap_or_else(|e| panic!("subscribe to {filter}: {e}"));
        if let Err(seen) = session.shared.wait(HANDSHAKE_DEADLINE, |s| s.subacks > 0) {
            panic!(
                "no SUBACK for {filter} within {HANDSHAKE_DEADLINE:?}; errors: {:?}",
                seen.errors
            );
        }
        Collector { session }
    }

    /// Every message received so far, in arrival order.
    pub fn messages(&self) -> Vec<Message> {
        self.session.shared.lock().messages.clone()
    }

    /// Waits until at least `n` messages arrived and returns all of them; panics with how many
    /// arrived if the deadline passes.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Message> {
        match self.session.shared.wait(timeout, |s| s.messages.len() >= n) {
            Ok(seen) => seen.messages.clone(),
            Err(seen) => panic!(
                "{} of {n} messages arrived within {timeout:?}; connection errors: {:?}",
                seen.messages.len(),
                seen.errors
            ),
        }
    }

    /// Waits until `done` holds for the messages so far and returns them; panics with how many
    /// arrived if the deadline passes.
    pub fn wait_until(
        &self,
        mut done: impl FnMut(&[Message]) -> bool,
        timeout: Duration,
    ) -> Vec<Message> {
        match self.session.shared.wait(timeout, |s| done(&s.messages)) {
            Ok(seen) => seen.messages.clone(),
            Err(seen) => panic!(
                "condition not met within {timeout:?}: {} messages arrived (last: {:?}); \
                 connection errors: {:?}",
                seen.messages.len(),
                seen.messages.last().map(Message::text),
                seen.errors
            ),
        }
    }
}
