//! One face over rumqttc's MQTT 3.1.1 and MQTT 5 clients: options built from an [`Endpoint`],
//! the few client calls weir makes (all non-blocking `try_` calls, so an event-loop task never
//! waits on its own request channel), and the events weir acts on.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{Outgoing, TlsConfiguration, Transport};

use super::{Endpoint, Protocol, tls_client_config};

/// The largest packet MQTT can carry (its remaining-length field tops out at 256 MiB − 1).
pub(crate) const MQTT_MAX_PACKET_BYTES: usize = 268_435_455;

/// How to set up one client besides its endpoint.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    /// The largest packet accepted from the broker.
    pub max_incoming_packet_bytes: usize,
    /// Outgoing QoS 1/2 publishes in flight (rumqttc's inflight window), at least 1.
    pub inflight: u16,
    /// Hold PUBACKs for received QoS 1 messages until `Client::try_ack`.
    pub manual_acks: bool,
    /// The client → event loop request channel.
    pub request_capacity: usize,
    /// MQTT 5: unacknowledged QoS 1/2 messages the broker may send at once (Receive Maximum).
    pub receive_maximum: Option<u16>,
}

pub(crate) enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

pub(crate) enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// A received PUBLISH, kept whole because a manual ack needs it.
#[derive(Clone, Debug)]
pub(crate) enum Received {
    V4(rumqttc::Publish),
    V5(p5::Publish),
}

impl Received {
    pub(crate) fn topic(&self) -> String {
        match self {
            Received::V4(p) => p.topic.clone(),
            Received::V5(p) => String::from_utf8_lossy(&p.topic).into_owned(),
        }
    }

    pub(crate) fn payload(&self) -> Bytes {
        match self {
            Received::V4(p) => p.payload.clone(),
            Received::V5(p) => p.payload.clone(),
        }
    }

    /// The first MQTT 5 user property called `name` (always `None` with 3.1.1).
    pub(crate) fn user_property(&self, name: &str) -> Option<&str> {
        match self {
            Received::V4(_) => None,
            Received::V5(p) => p
                .properties
                .as_ref()?
                .user_properties
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
        }
    }

    /// The same message reduced to what an ack needs (its packet id and QoS), so a pending ack
    /// does not keep the payload alive.
    pub(crate) fn ack_only(&self) -> Received {
        match self {
            Received::V4(p) => {
                let mut ack = rumqttc::Publish::new("", p.qos, Vec::new());
                ack.pkid = p.pkid;
                Received::V4(ack)
            }
            Received::V5(p) => {
                let mut ack = p5::Publish::new("", p.qos, Vec::new(), None);
                ack.pkid = p.pkid;
                Received::V5(ack)
            }
        }
    }

    /// QoS 0 messages need no ack.
    pub(crate) fn needs_ack(&self) -> bool {
        match self {
            Received::V4(p) => p.qos != rumqttc::QoS::AtMostOnce,
            Received::V5(p) => p.qos != rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        }
    }
}

/// What the event loop reported, reduced to what weir acts on.
#[derive(Debug)]
pub(crate) enum Event {
    ConnAck {
        session_present: bool,
        /// MQTT 5: the largest packet the broker accepts (its Maximum Packet Size), if it said.
        max_packet_size: Option<u32>,
    },
    Publish(Received),
    /// A PUBACK for an outgoing QoS 1 publish; `accepted` is false for an MQTT 5 failure reason.
    PubAck {
        pkid: u16,
        accepted: bool,
        reason: String,
    },
    /// A SUBACK; how many of its filters the broker refused.
    SubAck {
        refused: usize,
    },
    /// A PUBLISH went out with this packet id (0 for QoS 0), in the order they were requested.
    OutgoingPublish(u16),
    /// Our DISCONNECT went out: stop polling.
    OutgoingDisconnect,
    /// A PUBACK or PUBREC for a received message went out.
    OutgoingAck,
    Other,
}

/// A request the event loop's channel did not take (full, or the loop is gone).
#[derive(Debug)]
pub(crate) struct NotSent;

fn qos4(qos: u8) -> rumqttc::QoS {
    match qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(qos: u8) -> rumqttc::v5::mqttbytes::QoS {
    match qos {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// The MQTT 5 session expiry asked for with a persistent session: `u32::MAX` means "never
/// expires" (the broker's own cap, e.g. Mosquitto's `persistent_client_expiration`, still
/// applies). Chosen so that a weir stopped for days still finds its queued messages.
pub(crate) const PERSISTENT_SESSION_EXPIRY_S: u32 = u32::MAX;

/// A last will: published by the broker, retained, when the connection drops without a
/// DISCONNECT.
#[derive(Clone, Debug)]
pub(crate) struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Builds a client and its event loop. Nothing connects until the loop is polled.
pub(crate) fn connect(
    endpoint: &Endpoint,
    options: Options,
) -> anyhow::Result<(Client, EventLoop)> {
    connect_with_will(endpoint, options, None)
}

/// [`connect`], with a last will.
pub(crate) fn connect_with_will(
    endpoint: &Endpoint,
    options: Options,
    will: Option<Will>,
) -> anyhow::Result<(Client, EventLoop)> {
    let transport = match &endpoint.tls {
        Some(tls) => {
            Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls_client_config(tls)?)))
        }
        None => Transport::tcp(),
    };
    let inflight = options.inflight.max(1);
    let capacity = options.request_capacity.max(1);
    match endpoint.protocol {
        Protocol::V311 => {
            let mut o =
                rumqttc::MqttOptions::new(&endpoint.client_id, &endpoint.host, endpoint.port);
            // rumqttc refuses keep-alives under a second (other than zero, which means none).
            let keep_alive = if endpoint.keep_alive.is_zero() {
                Duration::ZERO
            } else {
                endpoint.keep_alive.max(Duration::from_secs(1))
            };
            o.set_keep_alive(keep_alive)
                .set_clean_session(endpoint.clean_session)
                .set_max_packet_size(options.max_incoming_packet_bytes, MQTT_MAX_PACKET_BYTES)
                .set_inflight(inflight)
                .set_manual_acks(options.manual_acks)
                .set_transport(transport);
            if let Some(user) = &endpoint.username {
                o.set_credentials(user, endpoint.password.clone().unwrap_or_default());
            }
            if let Some(will) = &will {
                o.set_last_will(rumqttc::LastWill::new(
                    &will.topic,
                    will.payload.clone(),
                    rumqttc::QoS::AtLeastOnce,
                    true,
                ));
            }
            let (client, eventloop) = rumqttc::AsyncClient::new(o, capacity);
            Ok((Client::V4(client), EventLoop::V4(Box::new(eventloop))))
        }
        Protocol::V5 => {
            let mut o =
                rumqttc::v5::MqttOptions::new(&endpoint.client_id, &endpoint.host, endpoint.port);
            // rumqttc's MQTT 5 client refuses keep-alives under 5 s.
            o.set_keep_alive(endpoint.keep_alive.max(Duration::from_secs(5)))
                .set_clean_start(endpoint.clean_session)
                .set_max_packet_size(Some(
                    options.max_incoming_packet_bytes.min(u32::MAX as usize) as u32,
                ))
                .set_outgoing_inflight_upper_limit(inflight)
                .set_manual_acks(options.manual_acks)
                .set_transport(transport);
            o.set_receive_maximum(options.receive_maximum);
            if !endpoint.clean_session {
                o.set_session_expiry_interval(Some(PERSISTENT_SESSION_EXPIRY_S));
            }
            if let Some(user) = &endpoint.username {
                o.set_credentials(user, endpoint.password.clone().unwrap_or_default());
            }
            if let Some(will) = &will {
                o.set_last_will(p5::LastWill::new(
                    &will.topic,
                    will.payload.clone(),
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    true,
                    None,
                ));
            }
            let (client, eventloop) = rumqttc::v5::AsyncClient::new(o, capacity);
            Ok((Client::V5(client), EventLoop::V5(Box::new(eventloop))))
        }
    }
}

impl EventLoop {
    /// The next event. Never cancel this future midway (inside a `select!` with a timer, rumqttc
    /// reconnects over and over): poll it from a task of its own. After an error, call
    /// [`EventLoop::after_error`], wait, and poll again to reconnect.
    pub(crate) async fn poll(&mut self) -> Result<Event, String> {
        match self {
            EventLoop::V4(el) => match el.poll().await {
                Ok(rumqttc::Event::Incoming(packet)) => Ok(match packet {
                    rumqttc::Packet::ConnAck(c) => Event::ConnAck {
                        session_present: c.session_present,
                        max_packet_size: None,
                    },
                    rumqttc::Packet::Publish(p) => Event::Publish(Received::V4(p)),
                    rumqttc::Packet::PubAck(a) => Event::PubAck {
                        pkid: a.pkid,
                        accepted: true,
                        reason: String::new(),
                    },
                    rumqttc::Packet::SubAck(s) => Event::SubAck {
                        refused: s
                            .return_codes
                            .iter()
                            .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                            .count(),
                    },
                    _ => Event::Other,
                }),
                Ok(rumqttc::Event::Outgoing(out)) => Ok(outgoing(out)),
                Err(e) => Err(e.to_string()),
            },
            EventLoop::V5(el) => match el.poll().await {
                Ok(rumqttc::v5::Event::Incoming(packet)) => Ok(match packet {
                    p5::Packet::ConnAck(c) => Event::ConnAck {
                        session_present: c.session_present,
                        max_packet_size: c.properties.as_ref().and_then(|p| p.max_packet_size),
                    },
                    p5::Packet::Publish(p) => Event::Publish(Received::V5(p)),
                    p5::Packet::PubAck(a) => {
                        let accepted = matches!(
                            a.reason,
                            p5::PubAckReason::Success | p5::PubAckReason::NoMatchingSubscribers
                        );
                        Event::PubAck {
                            pkid: a.pkid,
                            accepted,
                            reason: format!("{:?}", a.reason),
                        }
                    }
                    p5::Packet::SubAck(s) => Event::SubAck {
                        refused: s
                            .return_codes
                            .iter()
                            .filter(|c| !matches!(c, p5::SubscribeReasonCode::Success(_)))
                            .count(),
                    },
                    _ => Event::Other,
                }),
                Ok(rumqttc::v5::Event::Outgoing(out)) => Ok(outgoing(out)),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    /// Forgets the dropped connection's leftovers: requests still in the channel (acks for
    /// messages of the old connection above all, whose packet ids the broker may reuse for
    /// other messages) and what rumqttc would retransmit on a resumed session. weir resends
    /// from its own durable state instead.
    pub(crate) fn after_error(&mut self) {
        match self {
            EventLoop::V4(el) => {
                el.clean();
                el.pending.clear();
            }
            EventLoop::V5(el) => {
                el.clean();
                el.pending.clear();
            }
        }
    }
}

fn outgoing(out: Outgoing) -> Event {
    match out {
        Outgoing::Publish(pkid) => Event::OutgoingPublish(pkid),
        Outgoing::Disconnect => Event::OutgoingDisconnect,
        Outgoing::PubAck(_) | Outgoing::PubRec(_) => Event::OutgoingAck,
        _ => Event::Other,
    }
}

impl Client {
    /// Subscribes to every filter (with its QoS) in one SUBSCRIBE.
    pub(crate) fn try_subscribe(&self, filters: &[(String, u8)]) -> Result<(), NotSent> {
        match self {
            Client::V4(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|(f, q)| rumqttc::SubscribeFilter::new(f.clone(), qos4(*q))),
                )
                .map_err(|_| NotSent),
            Client::V5(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|(f, q)| p5::Filter::new(f.clone(), qos5(*q))),
                )
                .map_err(|_| NotSent),
        }
    }

    /// Publishes, with one MQTT 5 user property if given (dropped with 3.1.1). The topic must be
    /// valid (see [`valid_topic`]): an invalid one also comes back as `NotSent`.
    pub(crate) fn try_publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        qos: u8,
        user_property: Option<(&str, &str)>,
    ) -> Result<(), NotSent> {
        match self {
            Client::V4(c) => c
                .try_publish(topic, qos4(qos), false, payload)
                .map_err(|_| NotSent),
            Client::V5(c) => match user_property {
                Some((k, v)) => {
                    let properties = p5::PublishProperties {
                        user_properties: vec![(k.to_owned(), v.to_owned())],
                        ..Default::default()
                    };
                    c.try_publish_with_properties(topic, qos5(qos), false, payload, properties)
                }
                None => c.try_publish(topic, qos5(qos), false, payload),
            }
            .map_err(|_| NotSent),
        }
    }

    /// Publishes a retained message (no user property).
    pub(crate) fn try_publish_retained(
        &self,
        topic: &str,
        payload: Vec<u8>,
        qos: u8,
    ) -> Result<(), NotSent> {
        match self {
            Client::V4(c) => c
                .try_publish(topic, qos4(qos), true, payload)
                .map_err(|_| NotSent),
            Client::V5(c) => c
                .try_publish(topic, qos5(qos), true, payload)
                .map_err(|_| NotSent),
        }
    }

    pub(crate) fn try_unsubscribe(&self, filter: &str) -> Result<(), NotSent> {
        match self {
            Client::V4(c) => c.try_unsubscribe(filter).map_err(|_| NotSent),
            Client::V5(c) => c.try_unsubscribe(filter).map_err(|_| NotSent),
        }
    }

    pub(crate) fn try_ack(&self, publish: &Received) -> Result<(), NotSent> {
        match (self, publish) {
            (Client::V4(c), Received::V4(p)) => c.try_ack(p).map_err(|e| {
                tracing::trace!(error = %e, "ack not queued");
                NotSent
            }),
            (Client::V5(c), Received::V5(p)) => c.try_ack(p).map_err(|e| {
                tracing::trace!(error = %e, "ack not queued");
                NotSent
            }),
            // A message from one protocol acked on the other cannot happen: one Source, one
            // client. Nothing to send.
            _ => Ok(()),
        }
    }

    pub(crate) fn try_disconnect(&self) -> Result<(), NotSent> {
        match self {
            Client::V4(c) => c.try_disconnect().map_err(|_| NotSent),
            Client::V5(c) => c.try_disconnect().map_err(|_| NotSent),
        }
    }
}

impl Clone for Client {
    fn clone(&self) -> Self {
        match self {
            Client::V4(c) => Client::V4(c.clone()),
            Client::V5(c) => Client::V5(c.clone()),
        }
    }
}

/// Whether rumqttc accepts `topic` for a PUBLISH (non-empty, no wildcards, no NUL).
pub(crate) fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && rumqttc::valid_topic(topic) && !topic.contains('\0')
}
