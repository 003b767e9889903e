//! A small MQTT 3.1.1 broker for the demo, in-process: enough for a gateway's sensors and for
//! the cloud's stand-in, and nothing more. CONNECT, SUBSCRIBE (wildcards), UNSUBSCRIBE, PUBLISH
//! with QoS 0, 1 and 2 in (answered PUBACK, or PUBREC/PUBCOMP), delivery with QoS 0 or 1 to
//! every matching subscriber (once per client), PINGREQ and DISCONNECT. Sessions are clean:
//! there is no retained message, no will, no queue for a client that is away.
//!
//! Memory stays small: each client has a bounded queue of packets to write and a bounded window
//! of QoS 1 deliveries awaiting its PUBACK ([`MAX_INFLIGHT`]); a publisher whose subscribers are
//! behind waits (TCP backpressure) rather than the broker buffering. Nothing is redelivered: a
//! subscriber that reconnects gets what is published from then on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, SubAck, SubscribeReasonCode,
    UnsubAck,
};
use rumqttc::mqttbytes::{Error as WireError, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

/// The largest packet accepted or sent.
const MAX_PACKET: usize = 1 << 20;
/// Packets waiting to be written to one client.
const CLIENT_QUEUE: usize = 1024;
/// QoS 1 deliveries to one client awaiting its PUBACK, at most (as Mosquitto's
/// `max_inflight_messages`): a subscriber that acks late is sent nothing more until it acks.
pub const MAX_INFLIGHT: usize = 1000;

/// What a broker saw.
#[derive(Debug, Default)]
pub struct BrokerStats {
    pub connections: AtomicU64,
    pub published: AtomicU64,
    pub delivered: AtomicU64,
}

struct Subscription {
    client: u64,
    filter: String,
    qos: QoS,
    queue: mpsc::Sender<Packet>,
}

#[derive(Default)]
struct Shared {
    subscriptions: Mutex<Vec<Subscription>>,
    stats: BrokerStats,
}

/// A running broker; it stops when dropped.
pub struct Broker {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("addr", &self.addr).finish()
    }
}

impl Broker {
    /// Listens on 127.0.0.1 on a free port. Call inside a tokio runtime.
    pub async fn start() -> std::io::Result<Broker> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(accept(listener, shared.clone()));
        Ok(Broker { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &BrokerStats {
        &self.shared.stats
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut next_client = 0u64;
    let mut clients = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        next_client += 1;
        shared.stats.connections.fetch_add(1, Relaxed);
        let shared = shared.clone();
        let id = next_client;
        clients.spawn(async move {
            if let Err(e) = client(id, stream, &shared).await {
                tracing::debug!(client = id, error = %e, "demo broker: connection ended");
            }
            shared
                .subscriptions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|s| s.client != id);
        });
        // Reap finished connections.
        while clients.try_join_next().is_some() {}
    }
}

async fn client(id: u64, stream: TcpStream, shared: &Shared) -> anyhow::Result<()> {
    let (mut reader, writer) = stream.into_split();
    let (queue, mut outgoing) = mpsc::channel::<Packet>(CLIENT_QUEUE);
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT));
    let write = {
        let inflight = inflight.clone();
        async move {
            let mut writer = BufWriter::new(writer);
            let mut buf = BytesMut::new();
            let mut next_pkid: u16 = 0;
            loop {
                // Write what is queued, and flush only when nothing more is.
                let mut packet = match outgoing.try_recv() {
                    Ok(p) => p,
                    Err(_) => {
                        writer.flush().await?;
                        match outgoing.recv().await {
                            Some(p) => p,
                            None => return anyhow::Ok(()),
                        }
                    }
                };
                if let Packet::Publish(p) = &mut packet
                    && p.qos != QoS::AtMostOnce
                {
                    // The in-flight window: wait for a PUBACK when it is full.
                    match inflight.clone().try_acquire_owned() {
                        Ok(permit) => permit.forget(),
                        Err(_) => {
                            writer.flush().await?;
                            inflight.acquire().await?.forget();
                        }
                    }
                    next_pkid = next_pkid.checked_add(1).unwrap_or(1);
                    p.pkid = next_pkid;
                }
                buf.clear();
                packet.write(&mut buf, MAX_PACKET)?;
                writer.write_all(&buf).await?;
            }
        }
    };
    let read = async {
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let mut connected = false;
        loop {
            let packet = match Packet::read(&mut buf, MAX_PACKET) {
                Ok(p) => p,
                Err(WireError::InsufficientBytes(_)) => {
                    if reader.read_buf(&mut buf).await? == 0 {
                        return anyhow::Ok(());
                    }
                    continue;
                }
                Err(e) => anyhow::bail!("malformed packet: {e:?}"),
            };
            match packet {
                Packet::Connect(_) if !connected => {
                    connected = true;
                    let ack = ConnAck::new(ConnectReturnCode::Success, false);
                    queue.send(Packet::ConnAck(ack)).await?;
                }
                _ if !connected => anyhow::bail!("a packet before CONNECT"),
                Packet::Publish(publish) => {
                    shared.stats.published.fetch_add(1, Relaxed);
                    let pkid = publish.pkid;
                    let qos = publish.qos;
                    // One delivery per client, at the highest QoS it subscribed with.
                    let mut targets: Vec<(u64, QoS, mpsc::Sender<Packet>)> = Vec::new();
                    for s in shared
                        .subscriptions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .filter(|s| rumqttc::mqttbytes::matches(&publish.topic, &s.filter))
                    {
                        match targets.iter_mut().find(|t| t.0 == s.client) {
                            Some(t) => t.1 = higher(t.1, s.qos),
                            None => targets.push((s.client, s.qos, s.queue.clone())),
                        }
                    }
                    for (_, sub_qos, target) in targets {
                        let mut out = publish.clone();
                        out.dup = false;
                        out.retain = false;
                        out.qos = lower(lower(qos, sub_qos), QoS::AtLeastOnce);
                        out.pkid = 0;
                        // A subscriber that has gone is not an error of the publisher.
                        if target.send(Packet::Publish(out)).await.is_ok() {
                            shared.stats.delivered.fetch_add(1, Relaxed);
                        }
                    }
                    match qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => queue.send(Packet::PubAck(PubAck::new(pkid))).await?,
                        QoS::ExactlyOnce => queue.send(Packet::PubRec(PubRec::new(pkid))).await?,
                    }
                }
                Packet::PubRel(rel) => {
                    queue.send(Packet::PubComp(PubComp::new(rel.pkid))).await?;
                }
                Packet::Subscribe(subscribe) => {
                    let mut codes = Vec::new();
                    {
                        let mut subs = shared
                            .subscriptions
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        for f in subscribe.filters {
                            let qos = lower(f.qos, QoS::AtLeastOnce);
                            subs.retain(|s| !(s.client == id && s.filter == f.path));
                            subs.push(Subscription {
                                client: id,
                                filter: f.path,
                                qos,
                                queue: queue.clone(),
                            });
                            codes.push(SubscribeReasonCode::Success(qos));
                        }
                    }
                    queue
                        .send(Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
                        .await?;
                }
                Packet::Unsubscribe(unsubscribe) => {
                    shared
                        .subscriptions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|s| !(s.client == id && unsubscribe.topics.contains(&s.filter)));
                    queue
                        .send(Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)))
                        .await?;
                }
                Packet::PingReq => queue.send(Packet::PingResp).await?,
                Packet::Disconnect => return Ok(()),
                // An ack of a delivery opens the in-flight window by one.
                Packet::PubAck(_) if inflight.available_permits() < MAX_INFLIGHT => {
                    inflight.add_permits(1);
                }
                _ => {}
            }
        }
    };
    // The connection ends when either side ends; dropping the other closes the socket.
    tokio::select! {
        r = read => r,
        r = write => r,
    }
}

fn lower(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) { a } else { b }
}

fn higher(a: QoS, b: QoS) -> QoS {
    if (a as u8) >= (b as u8) { a } else { b }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{AsyncClient, Event, Incoming, MqttOptions};
    use std::time::Duration;

    async fn client(broker: &Broker, id: &str) -> (AsyncClient, rumqttc::EventLoop) {
        let mut o = MqttOptions::new(id, "127.0.0.1", broker.addr().port());
        o.set_keep_alive(Duration::from_secs(5));
        AsyncClient::new(o, 100)
    }

    #[tokio::test]
    async fn delivers_to_matching_subscribers_once_with_qos_1() {
        let broker = Broker::start().await.unwrap();
        let (sub, mut sub_loop) = client(&broker, "sub").await;
        sub.subscribe("farm/+/sensors/#", rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        sub.subscribe("farm/#", rumqttc::QoS::AtMostOnce)
            .await
            .unwrap();
        let mut subacks = 0;
        while subacks < 2 {
            if let Event::Incoming(Incoming::SubAck(_)) = sub_loop.poll().await.unwrap() {
                subacks += 1;
            }
        }
        let (publisher, mut pub_loop) = client(&broker, "pub").await;
        for i in 0..50 {
            publisher
                .publish(
                    format!("farm/north/sensors/s{i}"),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    vec![i as u8],
                )
                .await
                .unwrap();
        }
        publisher
            .publish("other/topic", rumqttc::QoS::AtLeastOnce, false, vec![])
            .await
            .unwrap();
        let pubacks = tokio::spawn(async move {
            let mut n = 0;
            while n < 51 {
                if let Event::Incoming(Incoming::PubAck(_)) = pub_loop.poll().await.unwrap() {
                    n += 1;
                }
            }
        });
        let mut got = Vec::new();
        while got.len() < 50 {
            if let Event::Incoming(Incoming::Publish(p)) = sub_loop.poll().await.unwrap() {
                assert_eq!(p.qos, rumqttc::QoS::AtLeastOnce);
                got.push(p.payload[0]);
            }
        }
        assert_eq!(got, (0..50).collect::<Vec<u8>>(), "in order, once each");
        pubacks.await.unwrap();
        assert_eq!(broker.stats().published.load(Relaxed), 51);
        assert_eq!(broker.stats().delivered.load(Relaxed), 50);
    }

    #[tokio::test]
    async fn a_subscriber_that_does_not_ack_gets_at_most_the_in_flight_window() {
        let broker = Broker::start().await.unwrap();
        let mut o = MqttOptions::new("slow", "127.0.0.1", broker.addr().port());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_manual_acks(true);
        let (sub, mut sub_loop) = AsyncClient::new(o, 100);
        sub.subscribe("t/#", rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        while !matches!(
            sub_loop.poll().await.unwrap(),
            Event::Incoming(Incoming::SubAck(_))
        ) {}
        let total = MAX_INFLIGHT + 5;
        let (publisher, mut pub_loop) = client(&broker, "fast").await;
        let acks = tokio::spawn(async move {
            let mut acked = 0;
            while acked < total {
                if let Event::Incoming(Incoming::PubAck(_)) = pub_loop.poll().await.unwrap() {
                    acked += 1;
                }
            }
        });
        let publishing = tokio::spawn(async move {
            for i in 0..total {
                publisher
                    .publish(format!("t/{i}"), rumqttc::QoS::AtLeastOnce, false, vec![])
                    .await
                    .unwrap();
            }
            acks.await.unwrap();
        });
        let mut got = Vec::new();
        while got.len() < MAX_INFLIGHT {
            if let Event::Incoming(Incoming::Publish(p)) = sub_loop.poll().await.unwrap() {
                got.push(p);
            }
        }
        // The publisher's messages are all accepted (queued for the subscriber)...
        publishing.await.unwrap();
        // ...but no more go out until the subscriber acks.
        let more = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                if let Event::Incoming(Incoming::Publish(p)) = sub_loop.poll().await.unwrap() {
                    return p;
                }
            }
        })
        .await;
        assert!(more.is_err(), "a delivery beyond the window: {more:?}");
        sub.ack(&got[0]).await.unwrap();
        let next = loop {
            if let Event::Incoming(Incoming::Publish(p)) = sub_loop.poll().await.unwrap() {
                break p;
            }
        };
        assert_eq!(
            next.topic,
            format!("t/{MAX_INFLIGHT}"),
            "the next one, in order"
        );
    }
}
