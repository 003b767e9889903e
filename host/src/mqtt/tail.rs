//! `weir tail`: subscribes to the upstream broker (QoS 1) and hands each record on, dropping
//! repeats by id.
//!
//! A record's id is its MQTT 5 user property `weir-id` if present, else the `"id"` field of its
//! JSON payload; records without either are never treated as repeats. The set of ids seen is
//! bounded ([`SEEN_IDS_MAX`], the most recent ids, oldest evicted first): a repeat of a record
//! older than that many distinct ids passes as new.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::conn::{self, Client, Event, Received};
use super::{BackoffState, Endpoint};

/// Ids remembered for dedup.
pub const SEEN_IDS_MAX: usize = 1_000_000;

/// What to subscribe to and how.
#[derive(Clone, Debug)]
pub struct TailOptions {
    pub endpoint: Endpoint,
    /// The topic filter, e.g. `#`.
    pub filter: String,
    /// Drop repeats (records whose id was seen before).
    pub dedup: bool,
    /// The user property carrying a record's id (`weir-id`).
    pub id_property: String,
    /// Stop when nothing arrived for this long.
    pub idle: Option<Duration>,
    /// Stop when this turns true (e.g. on Ctrl-C).
    pub stop: Option<watch::Receiver<bool>>,
}

impl TailOptions {
    pub fn new(endpoint: Endpoint, filter: impl Into<String>) -> Self {
        TailOptions {
            endpoint,
            filter: filter.into(),
            dedup: true,
            id_property: "weir-id".to_owned(),
            idle: None,
            stop: None,
        }
    }
}

/// One record received.
#[derive(Clone, Debug, PartialEq)]
pub struct TailRecord {
    pub topic: String,
    pub id: Option<String>,
    /// The payload as JSON, or as a JSON string holding its text if it is not JSON.
    pub payload: serde_json::Value,
    /// Whether the payload was JSON.
    pub is_json: bool,
    /// Its id was seen before (only passed on with dedup off).
    pub duplicate: bool,
}

/// Why tail stopped, and what it saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TailStats {
    /// Records passed on.
    pub records: u64,
    /// Repeats seen (dropped, unless dedup is off).
    pub duplicates: u64,
    /// Stopped because nothing arrived for `idle`.
    pub idle_timeout: bool,
}

/// The most recent `max` ids, oldest evicted first.
#[derive(Debug)]
pub struct SeenIds {
    set: HashSet<Arc<str>>,
    order: VecDeque<Arc<str>>,
    max: usize,
}

impl SeenIds {
    pub fn new(max: usize) -> Self {
        SeenIds {
            set: HashSet::new(),
            order: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// Records `id`; false if it was already there.
    pub fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= self.max
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
        let id: Arc<str> = Arc::from(id);
        self.set.insert(id.clone());
        self.order.push_back(id);
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// The id of a record: the user property, else the payload's `"id"` (a string or a number).
fn record_id(publish: &Received, id_property: &str, payload: &serde_json::Value) -> Option<String> {
    if let Some(id) = publish.user_property(id_property) {
        return Some(id.to_owned());
    }
    match payload.get("id")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Subscribes with QoS 1 and calls `on_record` for each record (repeats dropped if
/// `options.dedup`) until it returns false, `options.idle` passes without a message, or
/// `options.stop` turns true. Connection failures are retried with backoff (logged at WARN).
/// Must run inside a tokio runtime.
pub async fn tail(
    options: TailOptions,
    mut on_record: impl FnMut(TailRecord) -> bool,
) -> anyhow::Result<TailStats> {
    if options.filter.is_empty() || !rumqttc::valid_filter(&options.filter) {
        anyhow::bail!("{:?} is not a valid MQTT topic filter", options.filter);
    }
    let (client, eventloop) = conn::connect(
        &options.endpoint,
        conn::Options {
            max_incoming_packet_bytes: 16 << 20,
            inflight: 10,
            manual_acks: false,
            request_capacity: 16,
            receive_maximum: None,
        },
    )?;
    let (tx, mut rx) = mpsc::channel(1024);
    let task = tokio::spawn(receive(
        eventloop,
        client.clone(),
        options.filter.clone(),
        tx,
        options.endpoint.address(),
        BackoffState::new(options.endpoint.reconnect),
    ));
    let mut stop = options.stop.clone();
    let mut seen = SeenIds::new(SEEN_IDS_MAX);
    let mut stats = TailStats::default();
    loop {
        let received = tokio::select! {
            r = rx.recv() => r,
            _ = async {
                match options.idle {
                    Some(idle) => tokio::time::sleep(idle).await,
                    None => std::future::pending().await,
                }
            } => {
                stats.idle_timeout = true;
                break;
            }
            _ = async {
                match &mut stop {
                    Some(stop) => super::stopped(stop).await,
                    None => std::future::pending().await,
                }
            } => break,
        };
        let Some(publish) = received else { break };
        let payload_bytes = publish.payload();
        let (payload, is_json) = match serde_json::from_slice(&payload_bytes) {
            Ok(v) => (v, true),
            Err(_) => (
                serde_json::Value::String(String::from_utf8_lossy(&payload_bytes).into_owned()),
                false,
            ),
        };
        let id = record_id(&publish, &options.id_property, &payload);
        let duplicate = id.as_deref().is_some_and(|id| !seen.insert(id));
        if duplicate {
            stats.duplicates += 1;
            if options.dedup {
                continue;
            }
        }
        stats.records += 1;
        let record = TailRecord {
            topic: publish.topic(),
            id,
            payload,
            is_json,
            duplicate,
        };
        if !on_record(record) {
            break;
        }
    }
    drop(rx);
    let _ = client.try_disconnect();
    let mut task = task;
    if tokio::time::timeout(Duration::from_secs(1), &mut task)
        .await
        .is_err()
    {
        task.abort();
    }
    Ok(stats)
}

async fn receive(
    mut eventloop: conn::EventLoop,
    client: Client,
    filter: String,
    tx: mpsc::Sender<Received>,
    address: String,
    mut backoff: BackoffState,
) {
    let filters = [(filter, 1u8)];
    let mut need_subscribe = false;
    loop {
        if need_subscribe {
            need_subscribe = client.try_subscribe(&filters).is_err();
        }
        match eventloop.poll().await {
            Ok(Event::ConnAck { .. }) => {
                backoff.reset();
                tracing::info!(broker = %address, "connected");
                need_subscribe = true;
            }
            Ok(Event::Publish(publish)) => {
                if tx.send(publish).await.is_err() {
                    return;
                }
            }
            Ok(Event::SubAck { refused }) if refused > 0 => {
                tracing::error!(broker = %address, filter = %filters[0].0, "the broker refused the subscription");
            }
            Ok(Event::SubAck { .. }) => {
                tracing::info!(broker = %address, filter = %filters[0].0, "subscribed");
            }
            Ok(Event::OutgoingDisconnect) => return,
            Ok(_) => {}
            Err(error) => {
                if tx.is_closed() {
                    return;
                }
                eventloop.after_error();
                let delay = backoff.next_delay();
                tracing::warn!(broker = %address, %error, retry_in_ms = delay.as_millis() as u64, "connection failed; retrying");
                tokio::time::sleep(delay).await;
                need_subscribe = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_ids_drop_repeats() {
        let mut seen = SeenIds::new(10);
        assert!(seen.insert("a"));
        assert!(seen.insert("b"));
        assert!(!seen.insert("a"));
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn seen_ids_are_bounded_and_evict_the_oldest() {
        let mut seen = SeenIds::new(3);
        for id in ["a", "b", "c", "d"] {
            assert!(seen.insert(id));
        }
        assert_eq!(seen.len(), 3);
        assert!(seen.insert("a"), "the oldest id was evicted");
        assert!(!seen.insert("d"), "recent ids are still known");
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn id_from_user_property_then_payload() {
        let v5 = Received::V5({
            let mut p = rumqttc::v5::mqttbytes::v5::Publish::new(
                "t",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                "{}",
                None,
            );
            p.properties = Some(rumqttc::v5::mqttbytes::v5::PublishProperties {
                user_properties: vec![("weir-id".into(), "prop".into())],
                ..Default::default()
            });
            p
        });
        let payload = serde_json::json!({"id": "body"});
        assert_eq!(record_id(&v5, "weir-id", &payload).as_deref(), Some("prop"));
        let v4 = Received::V4(rumqttc::Publish::new("t", rumqttc::QoS::AtLeastOnce, "{}"));
        assert_eq!(record_id(&v4, "weir-id", &payload).as_deref(), Some("body"));
        assert_eq!(
            record_id(&v4, "weir-id", &serde_json::json!({"id": 42})).as_deref(),
            Some("42")
        );
        assert_eq!(record_id(&v4, "weir-id", &serde_json::json!([1])), None);
    }
}
