//! The operator's side of a fleet (`weir fleet`): publish a signed rollout and its plugin, and
//! watch the gateways' statuses.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{CHUNK_BYTES, Envelope, Topics};
use crate::mqtt::Endpoint;
use crate::mqtt::conn::{self, Event};

/// Publishes `plugin` (retained, in chunks) and then `envelope` (retained) to each gateway's
/// control topic, with QoS 1; returns once the broker acknowledged every message, or fails after
/// `within`. Either may be `None` (to publish only the other).
pub async fn publish(
    endpoint: &Endpoint,
    topics: &Topics,
    plugin: Option<&[u8]>,
    envelope: Option<(&Envelope, &[String])>,
    within: Duration,
) -> anyhow::Result<()> {
    let mut messages: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(bytes) = plugin {
        let sha256 = crate::runtime::sha256_hex(bytes);
        for (i, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
            messages.push((topics.chunk(&sha256, i as u32), chunk.to_vec()));
        }
    }
    if let Some((envelope, gateways)) = envelope {
        let payload = serde_json::to_vec(envelope).expect("JSON serializes");
        for id in gateways {
            messages.push((topics.rollout(id), payload.clone()));
        }
    }
    let total = messages.len();
    let (client, mut eventloop) = conn::connect(
        endpoint,
        conn::Options {
            max_incoming_packet_bytes: 64 << 10,
            inflight: 32,
            manual_acks: false,
            request_capacity: total + 4,
            receive_maximum: None,
        },
    )?;
    let address = endpoint.address();
    let acked = tokio::time::timeout(within, async {
        let mut acked = 0usize;
        let mut queued = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::ConnAck { .. }) if !queued => {
                    queued = true;
                    for (topic, payload) in std::mem::take(&mut messages) {
                        client
                            .try_publish_retained(&topic, payload, 1)
                            .map_err(|_| anyhow::anyhow!("cannot queue a publish to {topic}"))?;
                    }
                    if total == 0 {
                        return Ok(());
                    }
                }
                Ok(Event::PubAck { accepted, reason, .. }) => {
                    if !accepted {
                        anyhow::bail!("broker {address} refused a publish: {reason} (check its ACL for {}/#)", topics.prefix);
                    }
                    acked += 1;
                    if acked == total {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) if !queued => anyhow::bail!("cannot connect to broker {address}: {e}"),
                Err(e) => anyhow::bail!("the connection to broker {address} dropped while publishing: {e}; run the command again"),
            }
        }
    })
    .await
    .with_context(|| format!("broker {address} did not acknowledge the rollout within {within:?}"))?;
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(e) = eventloop.poll().await {
            if matches!(e, Event::OutgoingDisconnect) {
                break;
            }
        }
    })
    .await;
    acked
}

/// Subscribes to the status of `gateways` (all, if empty) and hands `done` the latest status of
/// each gateway seen so far (by id) after every message, until it returns true or `within`
/// passes. Returns the statuses seen.
pub async fn watch(
    endpoint: &Endpoint,
    topics: &Topics,
    gateways: &[String],
    within: Duration,
    mut done: impl FnMut(&BTreeMap<String, Value>) -> bool,
) -> anyhow::Result<BTreeMap<String, Value>> {
    let filters: Vec<(String, u8)> = if gateways.is_empty() {
        vec![(topics.all_status(), 1)]
    } else {
        gateways.iter().map(|id| (topics.status(id), 1)).collect()
    };
    let (client, mut eventloop) = conn::connect(
        endpoint,
        conn::Options {
            max_incoming_packet_bytes: 1 << 20,
            inflight: 8,
            manual_acks: false,
            request_capacity: 16,
            receive_maximum: None,
        },
    )?;
    let (tx, mut rx) = mpsc::channel(256);
    let address = endpoint.address();
    let backoff = endpoint.reconnect.initial;
    let poller = tokio::spawn(async move {
        let mut connected = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::ConnAck { .. }) => {
                    connected = true;
                    if client.try_subscribe(&filters).is_err() {
                        let _ = tx.send(Err("cannot subscribe".to_owned())).await;
                        return;
                    }
                }
                Ok(Event::Publish(p)) => {
                    if tx.send(Ok(p.payload())).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // A broker that never answered is likely the wrong one: say so at once.
                Err(e) if !connected => {
                    let _ = tx
                        .send(Err(format!("cannot reach broker {address}: {e}")))
                        .await;
                    return;
                }
                // A connection that dropped is made again (the next poll reconnects), and the
                // retained statuses arrive again on the new subscription.
                Err(_) => tokio::time::sleep(backoff).await,
            }
        }
    });
    let mut seen = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + within;
    let result = loop {
        let next = tokio::time::timeout_at(deadline, rx.recv()).await;
        let payload = match next {
            Err(_) => break Ok(()),
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => break Err(anyhow::anyhow!(e)),
            Ok(Some(Ok(p))) => p,
        };
        let Ok(status) = serde_json::from_slice::<Value>(&payload) else {
            continue;
        };
        let Some(id) = status["id"].as_str().map(str::to_owned) else {
            continue;
        };
        seen.insert(id, status);
        if done(&seen) {
            break Ok(());
        }
    };
    poller.abort();
    result.map(|()| seen)
}

/// Whether `status` reports rollout `seq` as ended, and how: `Some(state)`.
pub fn rollout_end(status: &Value, seq: u64) -> Option<&str> {
    let rollout = &status["rollout"];
    if rollout["seq"].as_u64() != Some(seq) {
        // A refusal of a message that was never accepted (unsigned, replayed...) lands in the
        // errors only.
        let refused = status["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["seq"].as_u64() == Some(seq));
        return refused.then_some("refused");
    }
    match rollout["state"].as_str()? {
        s @ ("promoted" | "rolled_back" | "refused" | "superseded" | "interrupted") => Some(s),
        _ => None,
    }
}
