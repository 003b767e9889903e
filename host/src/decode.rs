//! The built-in JSON decoder: one JSON object per message, with a field mapping from the config
//! (which field is the key, which the event time and in what format, which are values, which
//! names the watermark source). A message it cannot decode is rejected with the reason and goes
//! to the dead-letter output; the rest of the batch carries on.

use std::sync::Arc;

use serde_json::Value as Json;

use crate::batch::{Batch, Builder, Value};
use crate::runtime::bindings::Message;

/// How event times are written in payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeFormat {
    /// Milliseconds since the Unix epoch (a number).
    Millis,
    /// Seconds since the Unix epoch (a number, fractions allowed).
    Seconds,
    /// An RFC 3339 timestamp, e.g. `2026-11-22T06:00:00.250Z`.
    Rfc3339,
}

/// Which fields of a JSON payload mean what. Field names may be dotted paths into nested objects
/// (`meta.sensor`).
#[derive(Clone, Debug, PartialEq)]
pub struct JsonMapping {
    /// The field holding the event's key (a string or a number).
    pub key: String,
    /// The field holding the event time.
    pub time: String,
    pub time_format: TimeFormat,
    /// The fields kept as values; `None` keeps every scalar field but the key and the time.
    pub values: Option<Vec<String>>,
    /// The field naming the event's watermark source; `None` uses the message's topic.
    pub source: Option<String>,
}

/// What a batch of messages decoded to.
#[derive(Debug, Default)]
pub struct Decoded {
    pub events: Batch,
    /// Per event: its watermark source.
    pub sources: Vec<Arc<str>>,
    /// Messages that could not be decoded, with the reason.
    pub rejected: Vec<(Message, String)>,
}

impl JsonMapping {
    /// Decodes a batch of messages; keys longer than `max_key_bytes` are refused.
    pub fn decode(&self, messages: Vec<Message>, max_key_bytes: usize) -> Decoded {
        let mut builder = Builder::new();
        let mut sources = Vec::with_capacity(messages.len());
        let mut rejected = Vec::new();
        for message in messages {
            match self.decode_one(&message, max_key_bytes) {
                Ok((key, ts, source, fields)) => {
                    builder.push(
                        &key,
                        ts,
                        fields.iter().map(|(n, v)| (n.as_str(), v.clone())),
                    );
                    sources.push(source);
                }
                Err(reason) => rejected.push((message, reason)),
            }
        }
        Decoded {
            events: builder.finish(),
            sources,
            rejected,
        }
    }

    #[allow(clippy::type_complexity)]
    fn decode_one(
        &self,
        message: &Message,
        max_key_bytes: usize,
    ) -> Result<(String, i64, Arc<str>, Vec<(String, Value)>), String> {
        let json: Json = serde_json::from_slice(&message.payload)
            .map_err(|e| format!("payload is not JSON: {e}"))?;
        if !json.is_object() {
            return Err("payload is not a JSON object".into());
        }
        let key = match lookup(&json, &self.key) {
            Some(Json::String(s)) if !s.is_empty() => s.clone(),
            Some(Json::Number(n)) => n.to_string(),
            Some(other) => {
                return Err(format!(
                    "key field `{}` is {}, not a string or number",
                    self.key,
                    kind(other)
                ));
            }
            None => return Err(format!("no key field `{}`", self.key)),
        };
        if key.len() > max_key_bytes {
            return Err(format!(
                "key field `{}` is {} bytes, over max_key_bytes ({max_key_bytes}); the key {}",
                self.key,
                key.len(),
                crate::fsutil::elide(&key, 32)
            ));
        }
        let ts = match lookup(&json, &self.time) {
            Some(v) => parse_time(v, self.time_format)
                .map_err(|e| format!("time field `{}`: {e}", self.time))?,
            None => return Err(format!("no time field `{}`", self.time)),
        };
        let source: Arc<str> = match &self.source {
            Some(field) => match lookup(&json, field) {
                Some(Json::String(s)) => Arc::from(s.as_str()),
                Some(Json::Number(n)) => Arc::from(n.to_string()),
                _ => return Err(format!("no source field `{field}`")),
            },
            None => Arc::from(message.topic.as_str()),
        };
        let mut fields = Vec::new();
        match &self.values {
            Some(names) => {
                for name in names {
                    if let Some(v) = lookup(&json, name).and_then(Value::from_json) {
                        fields.push((name.clone(), v));
                    }
                }
            }
            None => {
                let object = json.as_object().expect("checked above");
                for (name, v) in object {
                    if *name == self.key || *name == self.time {
                        continue;
                    }
                    if let Some(v) = Value::from_json(v) {
                        fields.push((name.clone(), v));
                    }
                }
            }
        }
        Ok((key, ts, source, fields))
    }
}

fn lookup<'a>(json: &'a Json, path: &str) -> Option<&'a Json> {
    if let Some(v) = json.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(json, |v, part| v.get(part))
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn parse_time(v: &Json, format: TimeFormat) -> Result<i64, String> {
    match (format, v) {
        (TimeFormat::Millis, Json::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|x| x.is_finite())
                    .map(|x| x.round() as i64)
            })
            .ok_or_else(|| format!("{n} is not a time in milliseconds")),
        (TimeFormat::Seconds, Json::Number(n)) => n
            .as_f64()
            .filter(|x| x.is_finite() && x.abs() < 9.2e15)
            .map(|x| (x * 1000.0).round() as i64)
            .ok_or_else(|| format!("{n} is not a time in seconds")),
        (TimeFormat::Rfc3339, Json::String(s)) => parse_rfc3339(s),
        (TimeFormat::Rfc3339, other) => {
            Err(format!("{} is not an RFC 3339 timestamp", kind(other)))
        }
        (_, other) => Err(format!("{} is not a number", kind(other))),
    }
}

/// Parses an RFC 3339 timestamp (`2026-11-22T06:00:00Z`, fractions and offsets allowed; a space
/// may stand for the `T`, as RFC 3339 permits) to milliseconds since the Unix epoch, rounding
/// fractions down. Parsing is the `time` crate's; any text, however malformed, is an error,
/// never a panic.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    use time::format_description::well_known::Rfc3339;
    let bad = || {
        format!(
            "{} is not an RFC 3339 timestamp (like 2026-11-22T06:00:00.250Z)",
            crate::fsutil::elide(&format!("{s:?}"), 64)
        )
    };
    // RFC 3339 (section 5.6, note) lets a space separate the date and the time.
    let normalised;
    let text = if s.as_bytes().get(10) == Some(&b' ') {
        normalised = format!("{}T{}", &s[..10], &s[11..]);
        &normalised
    } else {
        s
    };
    let t = time::OffsetDateTime::parse(text, &Rfc3339).map_err(|_| bad())?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &str) -> Message {
        Message {
            topic: topic.into(),
            payload: payload.as_bytes().to_vec(),
            received_ms: 0,
        }
    }

    fn mapping(format: TimeFormat) -> JsonMapping {
        JsonMapping {
            key: "sensor_id".into(),
            time: "ts".into(),
            time_format: format,
            values: None,
            source: None,
        }
    }

    #[test]
    fn decodes_key_time_and_scalar_values_and_rejects_what_it_cannot_read() {
        let d = mapping(TimeFormat::Millis).decode(
            vec![
            msg("farm/a", r#"{"sensor_id": "s1", "ts": 1700000000000, "temp": 21.5, "ok": true, "tags": [1]}"#),
            msg("farm/a", r#"{"sensor_id": 7, "ts": 1700000000001.4, "temp": 3}"#),
            msg("farm/a", "not json"),
            msg("farm/a", r#"{"ts": 1}"#),
            msg("farm/a", r#"{"sensor_id": "s2", "ts": "yesterday"}"#),
            msg("farm/a", "[1, 2]"),
            msg("farm/a", &format!(r#"{{"sensor_id": "{}", "ts": 1}}"#, "k".repeat(65))),
        ],
            64,
        );
        assert_eq!(d.events.len(), 2);
        assert_eq!(&*d.events.key_of(1), "7");
        assert_eq!(d.events.ts_ms, vec![1_700_000_000_000, 1_700_000_000_001]);
        assert_eq!(
            d.events.column("temp").unwrap().get(1),
            Some(Value::Float(3.0))
        );
        assert_eq!(
            d.events.column("ok").unwrap().get(0),
            Some(Value::Flag(true))
        );
        assert!(d.events.column("tags").is_none(), "arrays are not values");
        assert_eq!(&*d.sources[0], "farm/a");
        let reasons: Vec<&str> = d.rejected.iter().map(|(_, r)| r.as_str()).collect();
        assert!(reasons[0].starts_with("payload is not JSON"));
        assert_eq!(reasons[1], "no key field `sensor_id`");
        assert_eq!(reasons[2], "time field `ts`: a string is not a number");
        assert_eq!(reasons[3], "payload is not a JSON object");
        assert_eq!(
            reasons[4],
            "key field `sensor_id` is 65 bytes, over max_key_bytes (64); the key kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk… (65 bytes in all)"
        );
    }

    #[test]
    fn listed_values_nested_paths_and_a_source_field() {
        let mut m = mapping(TimeFormat::Seconds);
        m.values = Some(vec!["air.temp".into()]);
        m.source = Some("gw".into());
        let d = m.decode(
            vec![msg(
            "t",
            r#"{"sensor_id": "s1", "ts": 1700000000.25, "gw": "north", "air": {"temp": 4.5}, "rh": 50}"#,
        )],
            1024,
        );
        assert_eq!(d.events.ts_ms, vec![1_700_000_000_250]);
        assert_eq!(
            d.events.column("air.temp").unwrap().get(0),
            Some(Value::Float(4.5))
        );
        assert!(d.events.column("rh").is_none());
        assert_eq!(&*d.sources[0], "north");
    }

    #[test]
    fn rfc3339_timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.5Z"),
            Ok(1_700_000_000_500)
        );
        assert_eq!(
            parse_rfc3339("2023-11-15T00:13:20.123+02:00"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Ok(-1000));
        assert_eq!(parse_rfc3339("2024-02-29T12:00:00Z"), Ok(1_709_208_000_000));
        assert_eq!(parse_rfc3339("2023-11-14 22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.5Z"), Ok(-500));
        assert!(parse_rfc3339("2023-11-14 22:13").is_err());
        assert!(parse_rfc3339("2023-13-14T22:13:20Z").is_err());
        assert!(parse_rfc3339("2023-02-30T00:00:00Z").is_err());
        // Multi-byte characters where digits or separators belong: an error, not a panic.
        for s in [
            "2026-11-22T06:00:00é1:00",
            "2026-11-22T06:00:00+é:00",
            "é026-11-22T06:00:00Z",
            "2026-11-2é06:00:00Z",
            "2026-11-22T06:00:00.é",
            "2026-11-22 é",
            "2026-11-22\u{e9}",
        ] {
            assert!(parse_rfc3339(s).is_err(), "{s}");
        }
    }
}

/// Seeded property tests, run by `cargo test` in CI in a bounded time: no input, however
/// malformed, panics the decoder or the time parser, and every message comes out as an event or
/// a rejection with a reason.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    use super::*;

    fn config() -> Config {
        Config {
            cases: 3000,
            rng_seed: RngSeed::Fixed(0x00c0_ffee),
            failure_persistence: None,
            ..Config::default()
        }
    }

    /// A valid timestamp, then mutated: characters replaced or inserted (multi-byte ones
    /// included), the text cut short.
    fn mutated_time() -> impl Strategy<Value = String> {
        let valid = (
            0i64..4_102_444_800,
            0u32..1000,
            prop_oneof![
                Just("Z".to_owned()),
                (-14i32..=14).prop_map(|h| format!("{h:+03}:30"))
            ],
        )
            .prop_map(|(secs, ms, zone)| {
                let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
                format!(
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{ms:03}{zone}",
                    t.year(),
                    u8::from(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second()
                )
            });
        (
            valid,
            proptest::collection::vec((0usize..40, any::<char>(), 0u8..3), 0..4),
            0usize..40,
        )
            .prop_map(|(s, edits, cut)| {
                let mut chars: Vec<char> = s.chars().collect();
                for (at, c, how) in edits {
                    let at = at.min(chars.len());
                    match how {
                        0 if at < chars.len() => chars[at] = c,
                        1 => chars.insert(at, c),
                        _ => chars.insert(at, 'é'),
                    }
                }
                let mut s: String = chars.into_iter().collect();
                if cut < s.chars().count() && cut % 3 == 0 {
                    s = s.chars().take(cut).collect();
                }
                s
            })
    }

    /// A payload: a reading whose fields are sometimes of the wrong type, mutated bytes or not.
    fn payload() -> impl Strategy<Value = Vec<u8>> {
        let value = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|x| if x.is_finite() {
                x.to_string()
            } else {
                "1e999".into()
            }),
            ".{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            mutated_time().prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just("null".to_owned()),
            Just("[1,{\"a\":2}]".to_owned()),
            Just("{\"nested\":{\"deeper\":true}}".to_owned()),
        ];
        (
            value.clone(),
            value.clone(),
            value,
            proptest::collection::vec((0usize..200, any::<u8>()), 0..3),
        )
            .prop_map(|(key, ts, temp, flips)| {
                let mut bytes =
                    format!(r#"{{"sensor_id":{key},"ts":{ts},"temp":{temp},"meta":{{"g":1}}}}"#)
                        .into_bytes();
                for (at, b) in flips {
                    if !bytes.is_empty() {
                        let at = at % bytes.len();
                        bytes[at] = b;
                    }
                }
                bytes
            })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn time_parsing_never_panics(s in mutated_time()) {
            let _ = parse_rfc3339(&s);
        }

        #[test]
        fn any_text_is_a_time_or_an_error(s in any::<String>()) {
            let _ = parse_rfc3339(&s);
        }

        #[test]
        fn valid_times_read_back_as_the_time_crate_formats_them(
            secs in -62_135_596_800i64..253_402_300_799,
            ms in 0i64..1000,
        ) {
            let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap()
                + time::Duration::milliseconds(ms);
            let text = t
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            prop_assert_eq!(parse_rfc3339(&text), Ok(secs * 1000 + ms));
        }

        #[test]
        fn every_message_is_an_event_or_a_rejection_with_a_reason(
            payloads in proptest::collection::vec(payload(), 1..20),
            format in prop_oneof![
                Just(TimeFormat::Millis),
                Just(TimeFormat::Seconds),
                Just(TimeFormat::Rfc3339),
            ],
            values in any::<bool>(),
        ) {
            let mapping = JsonMapping {
                key: "sensor_id".into(),
                time: "ts".into(),
                time_format: format,
                values: values.then(|| vec!["temp".into(), "meta.g".into()]),
                source: None,
            };
            let n = payloads.len();
            let messages = payloads
                .into_iter()
                .map(|payload| Message { topic: "t".into(), payload, received_ms: 0 })
                .collect();
            let d = mapping.decode(messages, 64);
            prop_assert_eq!(d.events.len() + d.rejected.len(), n);
            prop_assert_eq!(d.sources.len(), d.events.len());
            prop_assert!(d.events.validate().is_ok());
            for (_, reason) in &d.rejected {
                prop_assert!(!reason.is_empty());
                prop_assert!(reason.len() < 1024, "reasons stay short: {}", reason);
            }
        }
    }
}
