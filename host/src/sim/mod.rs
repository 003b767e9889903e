//! `weir simulate`: a farm of sensors publishing readings, for demos, tests and benchmarks.
//!
//! A [`Farm`] is an endless, deterministic stream of [`SimMessage`]s (the same seed, the same
//! stream, byte for byte): `sensors` sensors over `locations` locations, each publishing a JSON
//! reading to `<prefix>/<location>/sensors/<sensor_id>` in the shape `configs/farm.toml` expects:
//!
//! ```text
//! {"sensor_id":"s0042","ts":1700000000000,"temp":21.4,"humidity":55.0}
//! ```
//!
//! The stream has what real sensors do to a gateway:
//! - **clock jitter**: each sensor's clock is off by a fixed amount, plus a little noise per
//!   reading, together within ±`jitter`;
//! - **out of order** (`Kind::Late`): a reading held back and published after a few later ones;
//! - **resent** (`Kind::Resent`): the same topic and payload published again shortly after;
//! - **silent sensors**: a fraction of the sensors skip a stretch of readings now and then, and
//!   come back;
//! - **garbage** (`Kind::Garbage`): a payload that is not JSON;
//! - **impossible values**: about 0.5 % of the readings are outside the sensors' range (humidity
//!   over 100 %, or temperature over 85 °C), so range filters have work.
//!
//! Message `i` of the stream is due `i / rate` seconds after the start, and a reading's event
//! time is `start_ms` plus its due time, plus its sensor's clock error. With the default sensors
//! and locations, the sensors and their locations are those of `configs/sensors.csv`; otherwise
//! a table is generated ([`Farm::sensor_table`]).
//!
//! [`publish`] sends a farm to a broker at the due times; [`write_replay`] writes it in the
//! format `weir replay` reads.

mod publish;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

pub use publish::{Limit, PublishProgress, publish};

/// The sensor table of `configs/sensors.csv`, used with the default sensors and locations.
const SENSORS_CSV: &str = include_str!("../../../configs/sensors.csv");

/// How the farm behaves; see the module doc.
#[derive(Clone, Debug, PartialEq)]
pub struct FarmOptions {
    /// Sensors (default 1 000).
    pub sensors: usize,
    /// Locations the sensors are spread over (default: as many as `configs/sensors.csv` has).
    pub locations: usize,
    /// Messages per second, all sensors together (default 100).
    pub rate: f64,
    /// The seed: the same seed, the same stream.
    pub seed: u64,
    /// Sensor clocks are off by up to this much, either way (default 2 s).
    pub jitter: Duration,
    /// The fraction of readings held back and published after later ones (default 0.02).
    pub out_of_order: f64,
    /// The fraction of readings published twice (default 0.01).
    pub resent: f64,
    /// The fraction of sensors that go silent for a while, now and then (default 0.05).
    pub silent: f64,
    /// The fraction of messages that are not JSON (default 0.001).
    pub garbage: f64,
    /// The first topic level (default "farm").
    pub topic_prefix: String,
    /// The event time of the first reading, ms since the Unix epoch (default 1700000000000).
    pub start_ms: i64,
}

impl Default for FarmOptions {
    fn default() -> Self {
        FarmOptions {
            sensors: 1000,
            locations: default_table().1,
            rate: 100.0,
            seed: 1,
            jitter: Duration::from_secs(2),
            out_of_order: 0.02,
            resent: 0.01,
            silent: 0.05,
            garbage: 0.001,
            topic_prefix: "farm".to_owned(),
            start_ms: 1_700_000_000_000,
        }
    }
}

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A reading, on time.
    Normal,
    /// A copy of an earlier message (same topic and payload).
    Resent,
    /// A reading published after later ones.
    Late,
    /// A payload that is not JSON.
    Garbage,
}

/// One message of the stream.
#[derive(Clone, Debug, PartialEq)]
pub struct SimMessage {
    /// When to publish it, from the start (`index / rate`).
    pub due: Duration,
    pub topic: String,
    pub payload: Vec<u8>,
    pub kind: Kind,
}

/// splitmix64: small, fast, and good enough for a simulation.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A generator of its own for `(seed, what, n)`: properties of sensors and locations do not
/// depend on the order they are drawn in.
fn rng_for(seed: u64, what: u64, n: u64) -> Rng {
    Rng(mix(seed ^ mix(what.wrapping_mul(0x1000_0000_01B3) ^ mix(n))))
}

/// The rows of `configs/sensors.csv` and its number of distinct locations.
fn default_table() -> (Vec<(String, String, String, String)>, usize) {
    let rows: Vec<_> = SENSORS_CSV
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut cells = l.trim_end_matches('\r').split(',').map(str::to_owned);
            let mut cell = || cells.next().unwrap_or_default();
            (cell(), cell(), cell(), cell())
        })
        .collect();
    let locations = rows
        .iter()
        .map(|r| r.1.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    (rows, locations)
}

const CROPS: [&str; 8] = [
    "barley",
    "greenhouse-tomato",
    "maize",
    "potato",
    "rapeseed",
    "sugar-beet",
    "vineyard",
    "wheat",
];

const DIRECTIONS: [&str; 4] = ["north", "east", "south", "west"];

#[derive(Clone, Debug)]
struct Sensor {
    id: String,
    location: usize,
    topic: String,
    /// The clock's fixed error, ms.
    clock_offset_ms: f64,
    /// The reading's bias against its location, °C.
    temp_bias: f64,
    /// For sensors that go silent: silent in rounds `r` with `(r + phase) % period < length`.
    silence: Option<(u64, u64, u64)>,
}

#[derive(Clone, Debug)]
struct Location {
    /// The location's daily mean temperature, °C.
    mean_temp: f64,
    /// Its mean humidity, %.
    mean_humidity: f64,
}

/// A message waiting to be published (held back, or a resend).
#[derive(Clone, Debug)]
struct Held {
    topic: String,
    payload: Vec<u8>,
    kind: Kind,
}

/// A farm: an endless stream of messages, deterministic from its seed. See the module doc.
#[derive(Clone, Debug)]
pub struct Farm {
    options: FarmOptions,
    sensors: Vec<Sensor>,
    locations: Vec<Location>,
    table: String,
    rng: Rng,
    /// The index of the next message.
    index: u64,
    /// The next reading slot: sensor `slot % sensors`, round `slot / sensors`.
    slot: u64,
    /// Messages held back, by (index due, order held).
    held: BTreeMap<(u64, u64), Held>,
    held_seq: u64,
}

impl Farm {
    pub fn new(options: FarmOptions) -> Farm {
        let mut o = options;
        o.sensors = o.sensors.max(1);
        o.locations = o.locations.max(1);
        if !(o.rate.is_finite() && o.rate > 0.0) {
            o.rate = FarmOptions::default().rate;
        }
        let fraction = |p: f64| {
            if p.is_finite() {
                p.clamp(0.0, 0.9)
            } else {
                0.0
            }
        };
        o.out_of_order = fraction(o.out_of_order);
        o.resent = fraction(o.resent);
        o.silent = if o.silent.is_finite() {
            o.silent.clamp(0.0, 1.0)
        } else {
            0.0
        };
        o.garbage = fraction(o.garbage);

        let (rows, default_locations) = default_table();
        let mut table = String::from("sensor_id,location,crop,calibration\n");
        let mut names: Vec<String> = Vec::new();
        let mut sensor_locations = Vec::with_capacity(o.sensors);
        let mut ids = Vec::with_capacity(o.sensors);
        if o.sensors <= rows.len() && o.locations == default_locations {
            let mut index: BTreeMap<String, usize> = BTreeMap::new();
            for (id, location, crop, calibration) in &rows[..o.sensors] {
                let next = index.len();
                let l = *index.entry(location.clone()).or_insert(next);
                if l == names.len() {
                    names.push(location.clone());
                }
                sensor_locations.push(l);
                ids.push(id.clone());
                let _ = writeln!(table, "{id},{location},{crop},{calibration}");
            }
        } else {
            names = (0..o.locations)
                .map(|l| format!("{}-{:02}", DIRECTIONS[l % 4], l / 4 + 1))
                .collect();
            let width = (o.sensors - 1).to_string().len().max(4);
            for s in 0..o.sensors {
                let mut r = rng_for(o.seed, 1, s as u64);
                // Every location gets a sensor first, then they are spread at random.
                let l = if s < o.locations {
                    s
                } else {
                    r.below(o.locations as u64) as usize
                };
                let id = format!("s{s:0width$}");
                let crop = CROPS[r.below(CROPS.len() as u64) as usize];
                let calibration = r.range(-0.5, 0.5);
                let _ = writeln!(table, "{id},{},{crop},{calibration:.2}", names[l]);
                sensor_locations.push(l);
                ids.push(id);
            }
        }
        let locations = (0..names.len())
            .map(|l| {
                let mut r = rng_for(o.seed, 2, l as u64);
                Location {
                    mean_temp: r.range(10.0, 24.0),
                    mean_humidity: r.range(50.0, 75.0),
                }
            })
            .collect();
        let jitter_ms = o.jitter.as_secs_f64() * 1000.0;
        let sensors = ids
            .into_iter()
            .zip(sensor_locations)
            .enumerate()
            .map(|(s, (id, l))| {
                let mut r = rng_for(o.seed, 3, s as u64);
                let silence = r.chance(o.silent).then(|| {
                    let period = 20 + r.below(41);
                    let length = 3 + r.below(10);
                    (period, length, r.below(period))
                });
                Sensor {
                    topic: format!("{}/{}/sensors/{id}", o.topic_prefix, names[l]),
                    id,
                    location: l,
                    clock_offset_ms: r.range(-0.75, 0.75) * jitter_ms,
                    temp_bias: r.range(-1.5, 1.5),
                    silence,
                }
            })
            .collect();
        Farm {
            rng: Rng(mix(o.seed ^ 0x5EED)),
            options: o,
            sensors,
            locations,
            table,
            index: 0,
            slot: 0,
            held: BTreeMap::new(),
            held_seq: 0,
        }
    }

    /// The sensor table, CSV like `configs/sensors.csv`: `sensor_id,location,crop,calibration`.
    pub fn sensor_table(&self) -> String {
        self.table.clone()
    }

    /// The options in effect (fractions clamped, a bad rate replaced by the default).
    pub fn options(&self) -> &FarmOptions {
        &self.options
    }

    /// When message `index` is due.
    fn due(&self, index: u64) -> Duration {
        Duration::from_secs_f64(index as f64 / self.options.rate)
    }

    fn hold(&mut self, at: u64, held: Held) {
        self.held.insert((at, self.held_seq), held);
        self.held_seq += 1;
    }

    fn message(&mut self, topic: String, payload: Vec<u8>, kind: Kind) -> SimMessage {
        let due = self.due(self.index);
        self.index += 1;
        SimMessage {
            due,
            topic,
            payload,
            kind,
        }
    }

    /// A reading of sensor `s` taken now (at message `self.index`).
    fn reading(&mut self, s: usize) -> Vec<u8> {
        let sensor = &self.sensors[s];
        let location = &self.locations[sensor.location];
        let jitter_ms = self.options.jitter.as_secs_f64() * 1000.0;
        let now_ms = self.index as f64 * 1000.0 / self.options.rate;
        let noise_ms = self.rng.range(-0.25, 0.25) * jitter_ms;
        let ts =
            self.options.start_ms + (now_ms + sensor.clock_offset_ms + noise_ms).round() as i64;
        // Diurnal: coldest around 03:00 UTC, warmest around 15:00.
        let hours = ts.rem_euclid(86_400_000) as f64 / 3_600_000.0;
        let diurnal = -(std::f64::consts::TAU * (hours - 3.0) / 24.0).cos();
        let mut temp =
            location.mean_temp + 6.0 * diurnal + sensor.temp_bias + self.rng.range(-0.4, 0.4);
        let mut humidity =
            (location.mean_humidity - 12.0 * diurnal + self.rng.range(-3.0, 3.0)).clamp(30.0, 95.0);
        // About 0.5 % out of the sensors' range.
        if self.rng.chance(0.005) {
            if self.rng.chance(0.5) {
                humidity = self.rng.range(100.5, 130.0);
            } else {
                temp = self.rng.range(85.5, 130.0);
            }
        }
        format!(
            "{{\"sensor_id\":\"{}\",\"ts\":{ts},\"temp\":{temp:.1},\"humidity\":{humidity:.1}}}",
            sensor.id
        )
        .into_bytes()
    }

    /// A payload that is not JSON.
    fn garbage(&mut self, s: usize) -> Vec<u8> {
        let id = &self.sensors[s].id;
        match self.rng.below(4) {
            0 => format!("{{\"sensor_id\":\"{id}\",\"ts\":17").into_bytes(),
            1 => format!("ERR {id} sensor fault 0x{:02x}", self.rng.below(256)).into_bytes(),
            2 => (0..8 + self.rng.below(16))
                .map(|_| 0x80 | self.rng.below(128) as u8)
                .collect(),
            _ => format!("temp={:.1};hum=NaN", self.rng.range(-5.0, 35.0)).into_bytes(),
        }
    }

    fn silent(&self, s: usize, round: u64) -> bool {
        self.sensors[s]
            .silence
            .is_some_and(|(period, length, phase)| (round + phase) % period < length)
    }
}

impl Iterator for Farm {
    type Item = SimMessage;

    fn next(&mut self) -> Option<SimMessage> {
        let n = self.sensors.len() as u64;
        let mut tries = 0u32;
        loop {
            // A held message now due goes first.
            if let Some(entry) = self.held.first_entry()
                && (entry.key().0 <= self.index || tries > 10_000)
            {
                let h = entry.remove();
                return Some(self.message(h.topic, h.payload, h.kind));
            }
            tries += 1;
            let slot = self.slot;
            self.slot += 1;
            let s = (slot % n) as usize;
            if self.silent(s, slot / n) {
                continue;
            }
            if self.rng.chance(self.options.garbage) {
                let payload = self.garbage(s);
                let topic = self.sensors[s].topic.clone();
                return Some(self.message(topic, payload, Kind::Garbage));
            }
            let payload = self.reading(s);
            let topic = self.sensors[s].topic.clone();
            if self.rng.chance(self.options.out_of_order) {
                // Published after a few later messages: up to about one round of the sensors.
                let after = self.index + 2 + self.rng.below(n.max(8));
                self.hold(
                    after,
                    Held {
                        topic,
                        payload,
                        kind: Kind::Late,
                    },
                );
                continue;
            }
            if self.rng.chance(self.options.resent) {
                let after = self.index + 1 + self.rng.below(20);
                self.hold(
                    after,
                    Held {
                        topic: topic.clone(),
                        payload: payload.clone(),
                        kind: Kind::Resent,
                    },
                );
            }
            return Some(self.message(topic, payload, Kind::Normal));
        }
    }
}

/// One line of `weir replay` input for `m`: the payload as JSON when it is JSON (as
/// `payload_base64` otherwise), received at `start_ms` plus its due time.
pub fn replay_line(m: &SimMessage, start_ms: i64) -> String {
    use base64::Engine as _;
    let received_ms = start_ms + m.due.as_millis() as i64;
    let topic = serde_json::Value::String(m.topic.clone());
    match serde_json::from_slice::<serde_json::Value>(&m.payload) {
        Ok(_) if m.kind != Kind::Garbage => format!(
            "{{\"topic\":{topic},\"payload\":{},\"received_ms\":{received_ms}}}",
            String::from_utf8_lossy(&m.payload)
        ),
        _ => format!(
            "{{\"topic\":{topic},\"payload_base64\":\"{}\",\"received_ms\":{received_ms}}}",
            base64::engine::general_purpose::STANDARD.encode(&m.payload)
        ),
    }
}

/// Writes messages of `farm` as `weir replay` input until `limit`, and returns how many of each
/// kind it wrote.
pub fn write_replay(
    farm: Farm,
    limit: Limit,
    out: &mut dyn std::io::Write,
) -> std::io::Result<KindCounts> {
    let start_ms = farm.options.start_ms;
    let mut counts = KindCounts::default();
    for m in farm {
        if !limit.allows(counts.total(), m.due) {
            break;
        }
        writeln!(out, "{}", replay_line(&m, start_ms))?;
        counts.add(m.kind);
    }
    out.flush()?;
    Ok(counts)
}

/// Messages by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindCounts {
    pub normal: u64,
    pub resent: u64,
    pub late: u64,
    pub garbage: u64,
}

impl KindCounts {
    pub fn add(&mut self, kind: Kind) {
        match kind {
            Kind::Normal => self.normal += 1,
            Kind::Resent => self.resent += 1,
            Kind::Late => self.late += 1,
            Kind::Garbage => self.garbage += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.normal + self.resent + self.late + self.garbage
    }
}

#[cfg(test)]
mod tests;
