use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::*;

fn farm(seed: u64) -> Farm {
    Farm::new(FarmOptions {
        seed,
        ..FarmOptions::default()
    })
}

/// sensor id → location, from a table.
fn table_locations(table: &str) -> BTreeMap<String, String> {
    table
        .lines()
        .skip(1)
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            assert_eq!(cells.len(), 4, "{l}");
            (cells[0].to_owned(), cells[1].to_owned())
        })
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_stream() {
    let a: Vec<SimMessage> = farm(7).take(10_000).collect();
    let b: Vec<SimMessage> = farm(7).take(10_000).collect();
    assert_eq!(a, b);
    let c: Vec<SimMessage> = farm(8).take(10_000).collect();
    assert_ne!(a, c);
    // Different payloads, not only a different order.
    let payloads = |v: &[SimMessage]| v.iter().map(|m| m.payload.clone()).collect::<HashSet<_>>();
    assert!(payloads(&a).intersection(&payloads(&c)).count() < 100);
}

#[test]
fn default_farm_is_the_sensor_table_of_the_configs() {
    let f = farm(1);
    assert_eq!(f.sensor_table(), SENSORS_CSV.replace("\r\n", "\n"));
    let locations = table_locations(SENSORS_CSV);
    assert_eq!(locations.len(), 1000);
    assert_eq!(FarmOptions::default().locations, 40);
    let mut seen = BTreeSet::new();
    for m in f.take(20_000).filter(|m| m.kind != Kind::Garbage) {
        let v: serde_json::Value = serde_json::from_slice(&m.payload)
            .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(&m.payload)));
        let id = v["sensor_id"].as_str().unwrap();
        let location = &locations[id];
        assert_eq!(m.topic, format!("farm/{location}/sensors/{id}"));
        assert!(v["ts"].as_i64().is_some());
        assert!(v["temp"].as_f64().is_some());
        assert!(v["humidity"].as_f64().is_some());
        assert_eq!(v.as_object().unwrap().len(), 4);
        seen.insert(id.to_owned());
    }
    assert!(seen.len() > 990, "{} sensors seen", seen.len());
}

#[test]
fn other_sizes_get_a_generated_table() {
    let f = Farm::new(FarmOptions {
        sensors: 25_000,
        locations: 7,
        topic_prefix: "site".into(),
        ..FarmOptions::default()
    });
    let table = f.sensor_table();
    assert!(table.starts_with("sensor_id,location,crop,calibration\n"));
    let locations = table_locations(&table);
    assert_eq!(locations.len(), 25_000);
    assert_eq!(locations.values().collect::<BTreeSet<_>>().len(), 7);
    assert!(locations.contains_key("s24999"));
    for m in f.take(5_000).filter(|m| m.kind != Kind::Garbage) {
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let id = v["sensor_id"].as_str().unwrap();
        assert_eq!(m.topic, format!("site/{}/sensors/{id}", locations[id]));
    }
    // Fewer sensors with the default locations: the first rows of the configs' table.
    let small = Farm::new(FarmOptions {
        sensors: 10,
        ..FarmOptions::default()
    });
    let rows: Vec<&str> = SENSORS_CSV.lines().take(11).collect();
    assert_eq!(small.sensor_table().lines().collect::<Vec<_>>(), rows);
}

#[test]
fn due_times_follow_the_rate() {
    let f = Farm::new(FarmOptions {
        rate: 250.0,
        ..FarmOptions::default()
    });
    for (i, m) in f.take(1000).enumerate() {
        let expected = i as f64 / 250.0;
        assert!(
            (m.due.as_secs_f64() - expected).abs() < 1e-6,
            "{i}: {:?}",
            m.due
        );
    }
}

#[test]
fn fractions_are_as_asked() {
    const N: usize = 100_000;
    let o = FarmOptions::default();
    let messages: Vec<SimMessage> = farm(3).take(N).collect();
    let mut kinds: HashMap<Kind, usize> = HashMap::new();
    for m in &messages {
        *kinds.entry(m.kind).or_default() += 1;
    }
    let readings = (kinds[&Kind::Normal] + kinds[&Kind::Late]) as f64;
    let late = kinds[&Kind::Late] as f64 / readings;
    let resent = kinds[&Kind::Resent] as f64 / kinds[&Kind::Normal] as f64;
    let garbage = kinds[&Kind::Garbage] as f64 / N as f64;
    assert!((late - o.out_of_order).abs() < 0.004, "late {late}");
    assert!((resent - o.resent).abs() < 0.003, "resent {resent}");
    assert!((garbage - o.garbage).abs() < 0.0006, "garbage {garbage}");

    // Every resend repeats an earlier message, shortly after it.
    let mut first: HashMap<(&str, &[u8]), usize> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        match m.kind {
            Kind::Resent => {
                let at = first[&(m.topic.as_str(), m.payload.as_slice())];
                assert!(i > at && i - at <= 25, "resent at {i}, first at {at}");
            }
            _ => {
                first
                    .entry((m.topic.as_str(), m.payload.as_slice()))
                    .or_insert(i);
            }
        }
    }

    // Readings of a sensor: late ones come after a later reading of the stream; garbage is not
    // JSON; values are mostly in range.
    let mut newest_ts = i64::MIN;
    let mut behind = 0;
    let mut out_of_range = 0;
    for m in &messages {
        if m.kind == Kind::Garbage {
            assert!(serde_json::from_slice::<serde_json::Value>(&m.payload).is_err());
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let ts = v["ts"].as_i64().unwrap();
        if m.kind == Kind::Late && ts < newest_ts - 1000 {
            behind += 1;
        }
        newest_ts = newest_ts.max(ts);
        let temp = v["temp"].as_f64().unwrap();
        let humidity = v["humidity"].as_f64().unwrap();
        if !(-40.0..=85.0).contains(&temp) || !(0.0..=100.0).contains(&humidity) {
            out_of_range += 1;
        } else {
            assert!((30.0..=95.0).contains(&humidity), "{humidity}");
        }
    }
    // Every message of a sensor (garbage too: it takes the place of a reading), by due time.
    let mut by_sensor: HashMap<&str, Vec<i64>> = HashMap::new();
    for m in &messages {
        by_sensor
            .entry(m.topic.as_str())
            .or_default()
            .push(m.due.as_millis() as i64);
    }
    assert!(
        behind as f64 > kinds[&Kind::Late] as f64 * 0.5,
        "{behind} late behind"
    );
    let range = out_of_range as f64 / readings;
    assert!((0.003..0.007).contains(&range), "out of range {range}");

    // Silent sensors: a gap of three rounds or more between readings, then readings again.
    let interval_ms = o.sensors as f64 / o.rate * 1000.0;
    for due in by_sensor.values_mut() {
        due.sort_unstable();
    }
    let silent = by_sensor
        .values()
        .filter(|due| {
            due.windows(2)
                .any(|w| (w[1] - w[0]) as f64 > 3.5 * interval_ms)
        })
        .count() as f64
        / o.sensors as f64;
    assert!((silent - o.silent).abs() < 0.025, "silent {silent}");

    // Clock jitter stays within ±2 s of the due time (a late reading's due time is earlier).
    for m in messages.iter().filter(|m| m.kind == Kind::Normal) {
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let offset = v["ts"].as_i64().unwrap() - o.start_ms - m.due.as_millis() as i64;
        assert!(offset.abs() <= 2001, "clock off by {offset} ms");
    }
}

#[test]
fn replay_lines_parse_back() {
    let f = Farm::new(FarmOptions {
        garbage: 0.2,
        ..FarmOptions::default()
    });
    let start = f.options().start_ms;
    let mut out = Vec::new();
    let counts = write_replay(f.clone(), Limit::Count(500), &mut out).unwrap();
    assert_eq!(counts.total(), 500);
    assert!(counts.garbage > 50);
    let text = String::from_utf8(out).unwrap();
    for (line, m) in text.lines().zip(f) {
        match crate::replay::parse_line(line).unwrap() {
            crate::replay::Line::Message {
                received_ms,
                message: msg,
            } => {
                assert_eq!(msg.topic, m.topic);
                assert_eq!(received_ms, Some(start + m.due.as_millis() as i64));
                if m.kind == Kind::Garbage {
                    assert_eq!(msg.payload, m.payload);
                } else {
                    let a: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
                    let b: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                    assert_eq!(a, b);
                }
            }
            other => panic!("{other:?}"),
        }
    }
    let mut out = Vec::new();
    let counts = write_replay(farm(1), Limit::Duration(Duration::from_secs(3)), &mut out).unwrap();
    assert_eq!(counts.total(), 300);
}

#[test]
fn extreme_options_still_make_a_stream() {
    let f = Farm::new(FarmOptions {
        sensors: 1,
        locations: 1,
        out_of_order: 5.0,
        resent: 1.0,
        silent: 1.0,
        garbage: 0.0,
        rate: 0.0,
        ..FarmOptions::default()
    });
    assert_eq!(f.take(1000).count(), 1000);
}

#[test]
fn the_publisher_can_be_spawned() {
    fn assert_send<T: Send>(_: &T) {}
    let endpoint = crate::mqtt::Endpoint {
        host: "127.0.0.1".into(),
        port: 1883,
        client_id: "test".into(),
        protocol: crate::mqtt::Protocol::V5,
        keep_alive: Duration::from_secs(30),
        clean_session: true,
        username: None,
        password: None,
        tls: None,
        reconnect: crate::mqtt::Backoff::default(),
    };
    let progress = PublishProgress::default();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let future = publish(farm(1), &endpoint, 1, Limit::Count(1), &progress, rx);
    assert_send(&future);
}
