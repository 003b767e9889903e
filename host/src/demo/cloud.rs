//! The cloud side of the demo: a subscriber on the cloud broker (directly, not through the
//! flaky link) that keeps every record weir delivered by its id, counting repeats, as a real
//! receiver that drops repeated ids would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;
use tokio::sync::watch;

/// The topics weir's records go to in the demo config (and the source's dead letters).
const FILTERS: [&str; 2] = ["farm/#", "weir/#"];
/// The topic of the end marker: published by this subscriber after weir stopped, it arrives
/// after every record the broker had acknowledged to weir.
const MARKER: &str = "weir-demo/end";

/// Records that reached the cloud: by id, each with its topic and payload as first received.
#[derive(Debug, Default)]
pub struct Received {
    /// Every publish with an id, repeats included.
    pub messages: usize,
    pub records: HashMap<String, (String, Value)>,
    /// Copies of an id already received, and of those the ones whose topic or payload differed
    /// from the first (there must be none: a repeat is the same record sent again).
    pub repeats: usize,
    pub repeats_differing: usize,
    /// Distinct records by kind, for the view.
    pub windows: usize,
    pub alerts: usize,
    pub late: usize,
    pub dead_letters: usize,
    /// Window results by the version of the swapped operator that computed them.
    pub by_version: [usize; 2],
}

/// The subscriber; it stops when dropped.
pub struct Cloud {
    client: AsyncClient,
    received: Arc<Mutex<Received>>,
    markers: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloud").finish_non_exhaustive()
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Cloud {
    /// Subscribes at `broker` (QoS 1) and returns once the broker confirmed the subscription.
    pub async fn subscribe(broker: SocketAddr) -> anyhow::Result<Cloud> {
        let mut o = MqttOptions::new(
            format!("weir-demo-cloud-{}", std::process::id()),
            broker.ip().to_string(),
            broker.port(),
        );
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_session(true);
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(o, 64);
        let filters = FILTERS
            .iter()
            .chain([&MARKER])
            .map(|f| rumqttc::SubscribeFilter::new((*f).to_owned(), QoS::AtLeastOnce));
        client.subscribe_many(filters).await?;
        let wait = async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .with_context(|| format!("the cloud broker {broker} did not answer within 10 s"))?
            .with_context(|| format!("cannot subscribe at the cloud broker {broker}"))?;
        let received = Arc::new(Mutex::new(Received::default()));
        let (markers_tx, markers) = watch::channel(0u64);
        let task = tokio::spawn(receive(eventloop, received.clone(), markers_tx));
        Ok(Cloud {
            client,
            received,
            markers,
            task,
        })
    }

    pub fn received(&self) -> MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once everything the broker accepted before this call has arrived: publishes a
    /// marker and waits (up to `within`) for it to come back after them.
    pub async fn sync(&mut self, within: Duration) -> anyhow::Result<()> {
        let want = *self.markers.borrow() + 1;
        self.client
            .publish(MARKER, QoS::AtLeastOnce, false, want.to_string())
            .await?;
        tokio::time::timeout(within, self.markers.wait_for(|n| *n >= want))
            .await
            .context("the end marker did not come back from the cloud broker")?
            .context("the cloud subscriber stopped")?;
        Ok(())
    }
}

async fn receive(
    mut eventloop: rumqttc::EventLoop,
    received: Arc<Mutex<Received>>,
    markers: watch::Sender<u64>,
) {
    loop {
        let publish = match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::Publish(p))) => p,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "demo cloud subscriber: connection failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if publish.topic == MARKER {
            if let Some(n) = std::str::from_utf8(&publish.payload)
                .ok()
                .and_then(|s| s.parse().ok())
            {
                markers.send_replace(n);
            }
            continue;
        }
        let Ok(payload) = serde_json::from_slice::<Value>(&publish.payload) else {
            continue;
        };
        let Some(id) = payload["id"].as_str().map(str::to_owned) else {
            continue;
        };
        let mut r = received.lock().unwrap_or_else(|e| e.into_inner());
        r.messages += 1;
        let record = (publish.topic, payload);
        if let Some(first) = r.records.get(&id) {
            let differs = *first != record;
            r.repeats += 1;
            r.repeats_differing += usize::from(differs);
            continue;
        }
        let topic = record.0.as_str();
        if topic.contains("/agg/") {
            r.windows += 1;
            match record.1["values"]["operator_version"].as_f64() {
                Some(1.0) => r.by_version[0] += 1,
                Some(2.0) => r.by_version[1] += 1,
                _ => {}
            }
        } else if topic.contains("/alerts/") {
            r.alerts += 1;
        } else if topic.ends_with("/late") {
            r.late += 1;
        } else if topic.ends_with("dead-letter") {
            r.dead_letters += 1;
        }
        r.records.insert(id, record);
    }
}
