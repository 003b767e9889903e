//! The demo's sensors: the farm simulator's messages, as sensor frames, published with QoS 1 to
//! the sensors' broker at their due times.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::{Notify, watch};

use super::frame;
use crate::sim::{Farm, Kind};

/// How long the end waits for the broker to acknowledge what was published.
const ACK_WITHIN: Duration = Duration::from_secs(30);

/// What the sensors did; read it from any thread.
#[derive(Debug, Default)]
pub struct SensorStats {
    /// Messages handed to the MQTT client.
    pub published: AtomicU64,
    /// Of those, resends of an earlier message and payloads that are not readings.
    pub resent: AtomicU64,
    pub garbage: AtomicU64,
    /// PUBACKs from the broker.
    pub acked: AtomicU64,
    acks: Notify,
}

/// Publishes `farm` to `broker` until `stop` turns true, then waits (up to 30 s) until the broker
/// acknowledged everything, and disconnects. Returns how many messages the broker acknowledged.
pub async fn publish(
    farm: Farm,
    broker: SocketAddr,
    stats: Arc<SensorStats>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    let mut o = MqttOptions::new(
        format!("weir-demo-sensors-{}", std::process::id()),
        broker.ip().to_string(),
        broker.port(),
    );
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(o, 256);
    let poller = {
        let stats = stats.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => {
                        stats.acked.fetch_add(1, Relaxed);
                        stats.acks.notify_waiters();
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%broker, error = %e, "demo sensors: connection failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        })
    };
    let start = tokio::time::Instant::now();
    for m in farm {
        tokio::select! {
            _ = tokio::time::sleep_until(start + m.due) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let payload = match m.kind {
            Kind::Garbage => m.payload,
            _ => frame::from_reading(&m.payload).unwrap_or(m.payload),
        };
        client
            .publish(m.topic, QoS::AtLeastOnce, false, payload)
            .await?;
        stats.published.fetch_add(1, Relaxed);
        match m.kind {
            Kind::Resent => &stats.resent,
            Kind::Garbage => &stats.garbage,
            Kind::Normal | Kind::Late => continue,
        }
        .fetch_add(1, Relaxed);
    }
    let published = stats.published.load(Relaxed);
    let _ = tokio::time::timeout(ACK_WITHIN, async {
        loop {
            let notified = stats.acks.notified();
            if stats.acked.load(Relaxed) >= published {
                break;
            }
            notified.await;
        }
    })
    .await;
    let _ = client.disconnect().await;
    poller.abort();
    Ok(stats.acked.load(Relaxed))
}
