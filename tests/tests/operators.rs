//! The example plugins, in Rust, Python, JavaScript and C, run by the host through the contract.

use weir::batch::Value;
use weir::runtime::{DeadInput, Reason, bindings::Message};
use weir_tests::{batch, floats, operator, value};

fn f(x: f64) -> Value {
    Value::Float(x)
}

#[test]
fn range_filter_drops_impossible_readings() {
    let mut op = operator(
        "range_filter",
        r#"{ field = "humidity", min = 0.0, max = 100.0 }"#,
    );
    let out = op.transform(batch([
        ("s1", 1, vec![("humidity", f(55.0))]),
        ("s2", 2, vec![("humidity", f(-4.0))]),
        ("s1", 3, vec![("humidity", f(100.0))]),
        ("s3", 4, vec![("humidity", f(250.0))]),
        ("s3", 5, vec![("temp", f(12.0))]),
    ]));
    assert!(out.dead_letters.is_empty());
    assert_eq!(out.events.ts_ms, vec![1, 3, 5]);
    assert_eq!(
        (0..3)
            .map(|i| out.events.key_of(i).to_string())
            .collect::<Vec<_>>(),
        ["s1", "s1", "s3"]
    );
    assert_eq!(floats(&out.events, "temp"), [None, None, Some(12.0)]);
}

#[test]
fn unit_converter_converts_fahrenheit_to_celsius_into_a_new_field() {
    let mut op = operator(
        "unit_converter",
        r#"{ field = "temp", from = "f", to = "c", into = "temp_c" }"#,
    );
    let out = op.transform(batch([
        ("s1", 1, vec![("temp", f(212.0))]),
        ("s1", 2, vec![("temp", f(32.0))]),
        ("s1", 3, vec![("rh", f(40.0))]),
    ]));
    assert_eq!(floats(&out.events, "temp"), [Some(212.0), Some(32.0), None]);
    let c = floats(&out.events, "temp_c");
    assert!((c[0].unwrap() - 100.0).abs() < 1e-9 && c[1].unwrap().abs() < 1e-9 && c[2].is_none());
}

/// The typing rule (WIT `column`) is the same on both sides of the boundary: a field whose kind
/// changes within a batch crosses into a plugin of each language and back with every value under
/// its name and no event refused (the plugins here pass these events on, one adding a field).
#[test]
fn fields_of_changing_kind_cross_the_boundary_whole_in_every_language() {
    let input = batch([
        ("s1", 1, vec![("temp", f(212.0)), ("rh", Value::Int(60))]),
        (
            "s1",
            2,
            vec![("temp", f(32.0)), ("rh", Value::Text("n/a".into()))],
        ),
        (
            "s2",
            3,
            vec![("rh", Value::Float(60.5)), ("ok", Value::Flag(true))],
        ),
        ("s2", 4, vec![("ok", Value::Int(1))]),
    ]);
    let kinds = |b: &weir::batch::Batch| -> Vec<String> {
        let mut k: Vec<_> = b
            .columns
            .iter()
            .map(|c| format!("{}:{}", c.name, c.values.kind()))
            .collect();
        k.sort();
        k
    };
    let expected_kinds = [
        "ok#int:int",
        "ok:flag",
        "rh#text:text",
        "rh:float",
        "temp:float",
    ];
    assert_eq!(kinds(&input), expected_kinds);
    let plugins = [
        (
            "unit_converter",
            r#"{ field = "temp", from = "f", to = "c", into = "temp_c" }"#,
            Some("temp_c"),
        ),
        ("dew_point_py", "{}", None),
        ("delta_js", r#"{ field = "level" }"#, None),
        (
            "range_filter_c",
            r#"{ field = "humidity", min = 0.0, max = 100.0 }"#,
            None,
        ),
    ];
    for (plugin, config, added) in plugins {
        let mut op = operator(plugin, config);
        let out = op.transform(input.clone());
        assert!(
            out.dead_letters.is_empty(),
            "{plugin}: no event is refused for a type: {:?}",
            out.dead_letters
        );
        let mut want: Vec<String> = expected_kinds.iter().map(|k| k.to_string()).collect();
        if let Some(added) = added {
            want.push(format!("{added}:float"));
        }
        assert_eq!(kinds(&out.events), want, "{plugin}");
        assert_eq!(out.events.len(), input.len(), "{plugin}");
        for i in 0..input.len() {
            let mut expected = input.event_json(i);
            let got = out.events.event_json(i);
            if let Some(added) = added
                && let Some(value) = got["fields"].get(added)
            {
                expected["fields"][added] = value.clone();
            }
            assert_eq!(
                got, expected,
                "{plugin}: event {i} reads back as it went in"
            );
        }
        assert_eq!(out.events.event_json(1)["fields"]["rh"], "n/a", "{plugin}");
        assert_eq!(out.events.event_json(3)["fields"]["ok"], 1, "{plugin}");
    }
}

/// The example frame from plugins/sensor-frame-decoder/README.md.
const FRAME_HEX: &str = "574601 67120000 ffff 7b68e5cf8b010000 03 bbfe 2e22 230c 6844";

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn frame_decoder_decodes_the_documented_frame_and_rejects_broken_ones_one_by_one() {
    let mut op = operator(
        "sensor_frame_decoder",
        r#"{ channels = ["temp", "humidity", "soil_moisture"], key_prefix = "north/" }"#,
    );
    let good = hex(FRAME_HEX);
    let mut bad_crc = good.clone();
    *bad_crc.last_mut().unwrap() ^= 0xff;
    let msg = |payload: Vec<u8>| Message {
        topic: "farm/lora".into(),
        payload,
        received_ms: 5,
    };
    let out = op.decode(vec![
        msg(good.clone()),
        msg(b"short".to_vec()),
        msg(bad_crc),
        msg(good),
    ]);
    assert_eq!(out.events.len(), 2);
    assert_eq!(&*out.events.key_of(0), "north/4711");
    assert_eq!(out.events.ts_ms[0], 1_700_000_000_123);
    assert_eq!(floats(&out.events, "temp")[0], Some(-3.25));
    assert_eq!(floats(&out.events, "humidity")[0], Some(87.5));
    assert_eq!(floats(&out.events, "soil_moisture")[0], Some(31.07));
    assert_eq!(value(&out.events, "seq", 0), Some(Value::Int(65535)));
    assert_eq!(out.dead_letters.len(), 2);
    for (d, expected) in out
        .dead_letters
        .iter()
        .zip(["frame too short", "bad checksum"])
    {
        assert_eq!(d.reason, Reason::Rejected);
        assert!(d.detail.contains(expected), "{}", d.detail);
        let DeadInput::Messages(m) = &d.input else {
            panic!("a decoder's dead letters carry messages")
        };
        assert_eq!(m.len(), 1, "only the broken message is dead-lettered");
    }
    assert_eq!(op.metrics().snapshot().rejected, 2);
}

#[test]
fn frost_detector_keeps_its_count_per_sensor_across_batches() {
    let mut op = operator(
        "frost_detector",
        r#"{ threshold_c = 0.0, consecutive = 3 }"#,
    );
    let cold = |k, ts| (k, ts, vec![("temp", f(-1.5))]);
    let first = op.transform(batch([cold("a", 1), cold("a", 2), cold("b", 3)]));
    assert!(
        first.events.is_empty(),
        "no sensor had three frost readings yet"
    );
    let second = op.transform(batch([
        cold("b", 4),
        cold("a", 5),
        ("b", 6, vec![("temp", f(2.0))]),
    ]));
    assert_eq!(
        second.events.len(),
        1,
        "a reached three in a row; b was reset"
    );
    assert_eq!(&*second.events.key_of(0), "a");
    assert_eq!(second.events.ts_ms[0], 5);
    assert_eq!(
        value(&second.events, "alert", 0),
        Some(Value::Text("frost".into()))
    );
    let third = op.transform(batch([cold("a", 7)]));
    assert!(third.events.is_empty(), "one alert per frost spell");
    // a is in its spell; b's state was cleared when its temperature rose.
    assert_eq!(op.state().keys(), 1);
}

#[test]
fn p95_aggregator_accumulates_merges_and_finishes_per_group() {
    let mut op = operator("p95_aggregator", r#"{ field = "v", quantile = 0.95 }"#);
    let values: Vec<f64> = (1..=1000).map(f64::from).collect();
    let events = batch(values.iter().map(|&v| ("k", v as i64, vec![("v", f(v))])));
    let empty = op.create_accumulator().unwrap();
    // Odd events to accumulator 0, even ones to 1; then merge the two.
    let group: Vec<u32> = (0..events.len() as u32).map(|i| i % 2).collect();
    let accs = op
        .add_to_accumulators(&[empty.clone(), empty], &events, &group)
        .unwrap();
    let merged = op.merge_accumulators(&accs[0], &accs[1]).unwrap();
    let results = op.finish_accumulators(&[merged]).unwrap();
    let get = |name: &str| {
        results[0]
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value.clone())
    };
    assert_eq!(get("count"), Some(Value::Int(1000)));
    let Some(Value::Float(p95)) = get("p95") else {
        panic!("p95 is a float: {results:?}")
    };
    assert!(
        (p95 - 950.0).abs() / 950.0 < 0.02,
        "p95 {p95} is within 2 % of 950"
    );
}

#[test]
fn python_dew_point_enriches_and_rejects_impossible_humidity() {
    let mut op = operator("dew_point_py", "{}");
    let out = op.transform(batch([
        ("s1", 1, vec![("temp", f(20.0)), ("humidity", f(50.0))]),
        ("s1", 2, vec![("temp", f(20.0))]),
        ("s2", 3, vec![("temp", f(20.0)), ("humidity", f(180.0))]),
    ]));
    assert_eq!(out.events.len(), 2);
    let dew = floats(&out.events, "dew_point");
    // Magnus formula: 20 °C at 50 % RH has a dew point of about 9.3 °C.
    assert!((dew[0].unwrap() - 9.3).abs() < 0.1, "{dew:?}");
    assert_eq!(dew[1], None);
    assert_eq!(out.dead_letters.len(), 1);
    assert_eq!(out.dead_letters[0].reason, Reason::Rejected);
    assert!(
        out.dead_letters[0].detail.contains("180"),
        "{}",
        out.dead_letters[0].detail
    );
}

#[test]
fn python_config_errors_are_reported_at_load_time() {
    let plugin = weir_tests::load("dew_point_py");
    let spec = weir_tests::spec("dew", &plugin, Default::default());
    let err = weir::runtime::Operator::start(spec, plugin, r#"{"humdity": "rh"}"#).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("rejected its config") && text.contains("humdity"),
        "{text}"
    );
}

#[test]
fn javascript_delta_uses_host_state_across_batches() {
    let mut op = operator("delta_js", r#"{ field = "level" }"#);
    let first = op.transform(batch([
        ("tank1", 1, vec![("level", f(10.0))]),
        ("tank2", 2, vec![("level", f(50.0))]),
        ("tank1", 3, vec![("level", f(12.5))]),
    ]));
    assert_eq!(
        floats(&first.events, "level_delta"),
        [None, None, Some(2.5)]
    );
    let second = op.transform(batch([
        ("tank2", 4, vec![("level", f(45.0))]),
        ("tank1", 5, vec![("level", f(12.0))]),
    ]));
    assert_eq!(
        floats(&second.events, "level_delta"),
        [Some(-5.0), Some(-0.5)]
    );
    // The state lives in the host, in JSON another language can read.
    let stored: Vec<_> = op
        .state()
        .iter()
        .map(|(k, _, v)| (k.to_owned(), v.to_vec()))
        .collect();
    assert!(
        stored.contains(&("tank1".to_owned(), b"12".to_vec()))
            || stored
                .iter()
                .any(|(k, v)| k == "tank1" && String::from_utf8_lossy(v).trim() == "12"),
        "{stored:?}"
    );
}

#[test]
fn c_range_filter_keeps_what_the_rust_one_keeps_and_rejects_text() {
    let config = r#"{ field = "humidity", min = 0.0, max = 100.0 }"#;
    let readings = || {
        batch([
            ("s1", 1, vec![("humidity", f(55.0))]),
            ("s2", 2, vec![("humidity", f(-4.0))]),
            ("s1", 3, vec![("humidity", Value::Int(100))]),
            ("s3", 4, vec![("humidity", f(250.0))]),
            ("s3", 5, vec![("temp", f(12.0))]),
            ("s3", 6, vec![("humidity", f(f64::NAN))]),
        ])
    };
    let rust = operator("range_filter", config).transform(readings());
    let mut c = operator("range_filter_c", config);
    let out = c.transform(readings());
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert_eq!(out.events, rust.events);
    assert_eq!(out.events.ts_ms, vec![1, 3, 5]);

    // A text reading arrives in its own column (`humidity#text`): the C plugin rejects that
    // event alone, with its reason.
    let out = c.transform(batch([
        ("s1", 7, vec![("humidity", f(40.0))]),
        ("s2", 8, vec![("humidity", Value::Text("n/a".into()))]),
        ("s1", 9, vec![("humidity", f(140.0))]),
    ]));
    assert_eq!(out.events.ts_ms, vec![7]);
    assert_eq!(floats(&out.events, "humidity"), [Some(40.0)]);
    assert_eq!(out.dead_letters.len(), 1);
    let dead = &out.dead_letters[0];
    assert_eq!(dead.reason, Reason::Rejected);
    assert_eq!(dead.detail, r#"field "humidity" is text, not a number"#);
    let DeadInput::Events(input) = &dead.input else {
        panic!("a transformer's dead letter holds events: {dead:?}")
    };
    assert_eq!(input.ts_ms, vec![8]);
}

#[test]
fn c_config_errors_are_reported_at_load_time() {
    let plugin = weir_tests::load("range_filter_c");
    for (config, error) in [
        (
            r#"{ field = "h", min = 5.0, max = 1.0 }"#,
            "min (5) is above max (1)",
        ),
        (r#"{ field = "h", min = 5.0 }"#, "missing key `max`"),
        (
            r#"{ field = "h", min = 0.0, max = 1.0, mx = 2.0 }"#,
            "unknown key `mx` (this plugin takes field, min and max)",
        ),
    ] {
        let spec = weir_tests::spec("range", &plugin, Default::default());
        let err =
            weir::runtime::Operator::start(spec, plugin.clone(), &weir_tests::json_config(config))
                .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("rejected its config") && text.ends_with(error),
            "{config}: {text}"
        );
    }
}

#[test]
fn batches_over_the_limit_are_split_and_nothing_is_lost() {
    let limits = weir::runtime::Limits {
        max_batch_events: 10,
        ..Default::default()
    };
    let mut op = weir_tests::operator_with(
        "range_filter",
        r#"{ field = "h", min = 0.0, max = 100.0 }"#,
        limits,
    );
    let out = op.transform(batch((0..35).map(|i| ("k", i, vec![("h", f(50.0))]))));
    assert_eq!(out.events.len(), 35);
    assert_eq!(out.events.ts_ms, (0..35).collect::<Vec<_>>());
    assert_eq!(op.metrics().snapshot().calls, 4);
}
