//! Behaviour of [`Windower`]: each window kind, time, lateness, custom aggregates, state, and
//! properties over many seeded random streams.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::*;
use crate::batch::Builder;

/// A clock far enough ahead that the skew guard never fires, unless a test wants it.
const NOW: i64 = 1_000_000;

fn config(kind: WindowKind, aggregates: Vec<AggregateSpec>) -> WindowConfig {
    WindowConfig {
        kind,
        out_of_orderness_ms: 0,
        idle_timeout_ms: 1_000_000,
        allowed_lateness_ms: 0,
        max_future_skew_ms: 1_000_000,
        aggregates,
    }
}

fn tumbling(size_ms: i64) -> WindowKind {
    WindowKind::Tumbling {
        size_ms,
        offset_ms: 0,
    }
}

fn count_and_sum() -> Vec<AggregateSpec> {
    vec![
        AggregateSpec::count_events("n"),
        AggregateSpec::new(AggFn::Sum, "temp", "sum"),
    ]
}

fn windower(config: WindowConfig) -> Windower {
    Windower::new("farm", config, None).unwrap()
}

/// Events `(source, key, ts, temp)` as a batch and its sources.
fn input_from(events: &[(&str, &str, i64, Option<f64>)]) -> (Batch, Vec<Arc<str>>) {
    let mut b = Builder::new();
    for &(_, key, ts, temp) in events {
        match temp {
            Some(t) => b.push(key, ts, [("temp", Value::Float(t))]),
            None => b.push(key, ts, []),
        }
    }
    let sources = events.iter().map(|e| Arc::from(e.0)).collect();
    (b.finish(), sources)
}

/// Events `(key, ts, temp)` from one source, at [`NOW`].
fn feed(w: &mut Windower, events: &[(&str, i64, f64)]) -> Emitted {
    let events: Vec<_> = events
        .iter()
        .map(|&(k, ts, t)| ("s", k, ts, Some(t)))
        .collect();
    let (batch, sources) = input_from(&events);
    w.process(&batch, &sources, NOW)
}

fn fmt(v: &Value) -> String {
    match v {
        Value::Float(x) => format!("{x:?}"),
        Value::Int(x) => x.to_string(),
        Value::Text(s) => format!("{s:?}"),
        Value::Flag(b) => b.to_string(),
    }
}

/// A result as one line: `key [start, end) rREV name=value...`. Checks its event count against
/// the `n` aggregate, where there is one.
fn show(r: &WindowResult) -> String {
    let mut s = format!("{} [{}, {}) r{}", r.key, r.start_ms, r.end_ms, r.revision);
    for (name, v) in &r.values {
        if name == "n" {
            assert_eq!(v, &Value::Int(r.count as i64), "{r:?}");
        }
        s.push_str(&format!(" {name}={}", fmt(v)));
    }
    s
}

fn shows(e: &Emitted) -> Vec<String> {
    e.results.iter().map(show).collect()
}

/// Diverted events as (their times, the reason).
fn times(diverted: &[Diverted]) -> Vec<(Vec<i64>, String)> {
    diverted
        .iter()
        .map(|d| (d.batch.ts_ms.clone(), d.reason.clone()))
        .collect()
}

#[test]
fn tumbling_windows_fire_when_the_watermark_reaches_end_minus_one() {
    let aggs = vec![
        AggregateSpec::count_events("n"),
        AggregateSpec::new(AggFn::Sum, "temp", "sum"),
        AggregateSpec::new(AggFn::Min, "temp", "min"),
        AggregateSpec::new(AggFn::Max, "temp", "max"),
        AggregateSpec::new(AggFn::Mean, "temp", "mean"),
        AggregateSpec::new(AggFn::First, "temp", "first"),
        AggregateSpec::new(AggFn::Last, "temp", "last"),
        AggregateSpec::new(AggFn::StdDev, "temp", "sd"),
    ];
    let mut c = config(tumbling(10), aggs);
    c.out_of_orderness_ms = 2;
    let mut w = windower(c);
    let out = feed(
        &mut w,
        &[("a", 1, 1.0), ("b", 2, 10.0), ("a", 5, 3.0), ("a", 3, 2.0)],
    );
    assert_eq!(out, Emitted::default());
    assert_eq!(w.watermark(), Some(3));
    // Watermark 8: not yet.
    assert!(feed(&mut w, &[("a", 10, 4.0)]).results.is_empty());
    // Watermark 9 = end - 1: both keys' [0, 10) fire, by key.
    let out = feed(&mut w, &[("b", 11, 5.0)]);
    assert_eq!(
        shows(&out),
        [
            "a [0, 10) r0 n=3 sum=6.0 min=1.0 max=3.0 mean=2.0 first=1.0 last=3.0 sd=1.0",
            "b [0, 10) r0 n=1 sum=10.0 min=10.0 max=10.0 mean=10.0 first=10.0 last=10.0",
        ]
    );
    let r = &out.results[0];
    assert_eq!((r.pipeline.as_str(), r.kind.as_str()), ("farm", "tumbling"));
    assert_eq!(w.open_windows(), 2);
    let out = w.flush();
    assert_eq!(
        shows(&out),
        [
            "a [10, 20) r0 n=1 sum=4.0 min=4.0 max=4.0 mean=4.0 first=4.0 last=4.0",
            "b [10, 20) r0 n=1 sum=5.0 min=5.0 max=5.0 mean=5.0 first=5.0 last=5.0",
        ]
    );
    assert_eq!(w.open_windows(), 0);
    assert_eq!(w.watermark(), Some(i64::MAX));
    // After the end of the input, time windows take nothing more: late, not lost.
    let out = feed(&mut w, &[("a", 30, 1.0)]);
    assert_eq!(
        times(&out.late),
        [(
            vec![30],
            format!(
                "window [30, 40) closed at watermark {}, allowed lateness 0ms",
                i64::MAX
            )
        )]
    );
}

#[test]
fn windows_align_to_the_epoch_plus_offset_for_negative_times() {
    let kind = WindowKind::Tumbling {
        size_ms: 10,
        offset_ms: 3,
    };
    let mut w = windower(config(kind, count_and_sum()));
    let out = feed(&mut w, &[("a", -8, 1.0), ("a", -7, 2.0)]);
    assert_eq!(shows(&out), ["a [-17, -7) r0 n=1 sum=1.0"]);
    assert_eq!(
        &out.results[0].id[..16],
        "fffffffffffffff9",
        "the end, as u64"
    );
    let out = feed(&mut w, &[("a", 2, 4.0), ("a", 3, 8.0)]);
    assert_eq!(shows(&out), ["a [-7, 3) r0 n=2 sum=6.0"]);
    assert_eq!(shows(&w.flush()), ["a [3, 13) r0 n=1 sum=8.0"]);
}

#[test]
fn sliding_windows_need_not_be_a_multiple_of_the_slide() {
    let kind = WindowKind::Sliding {
        size_ms: 10,
        slide_ms: 4,
        offset_ms: 0,
    };
    let mut c = config(kind, count_and_sum());
    c.out_of_orderness_ms = 100;
    let mut w = windower(c);
    assert!(
        feed(&mut w, &[("a", 9, 1.0), ("a", 1, 2.0)])
            .results
            .is_empty()
    );
    assert_eq!(w.open_windows(), 5);
    assert_eq!(
        shows(&w.flush()),
        [
            "a [-8, 2) r0 n=1 sum=2.0",
            "a [-4, 6) r0 n=1 sum=2.0",
            "a [0, 10) r0 n=2 sum=3.0",
            "a [4, 14) r0 n=1 sum=1.0",
            "a [8, 18) r0 n=1 sum=1.0",
        ]
    );
}

#[test]
fn an_event_in_one_closed_and_one_open_sliding_window_is_not_late() {
    let kind = WindowKind::Sliding {
        size_ms: 10,
        slide_ms: 5,
        offset_ms: 0,
    };
    let mut w = windower(config(kind, count_and_sum()));
    assert!(feed(&mut w, &[("a", 3, 1.0)]).results.is_empty());
    let out = feed(&mut w, &[("a", 12, 2.0)]);
    assert_eq!(
        shows(&out),
        ["a [-5, 5) r0 n=1 sum=1.0", "a [0, 10) r0 n=1 sum=1.0"]
    );
    // 6 is in [0, 10), closed, and [5, 15), open: it goes to [5, 15) and is not late.
    let out = feed(&mut w, &[("a", 6, 4.0)]);
    assert_eq!(out, Emitted::default());
    // 2 is in [-5, 5) and [0, 10), both closed: late, with the latest of them as the reason.
    let out = feed(&mut w, &[("a", 2, 8.0)]);
    assert!(out.results.is_empty());
    assert_eq!(
        times(&out.late),
        [(
            vec![2],
            "window [0, 10) closed at watermark 12, allowed lateness 0ms".to_string()
        )]
    );
    assert_eq!(
        shows(&w.flush()),
        ["a [5, 15) r0 n=2 sum=6.0", "a [10, 20) r0 n=1 sum=2.0"]
    );
}

#[test]
fn late_events_within_the_lateness_refire_with_new_revisions_then_are_late() {
    let mut c = config(tumbling(10), count_and_sum());
    c.allowed_lateness_ms = 5;
    let mut w = windower(c);
    // In one batch: the watermark passes [0, 10) mid-batch, then a late event updates it.
    let out = feed(&mut w, &[("a", 1, 1.0), ("a", 10, 2.0), ("a", 2, 4.0)]);
    assert_eq!(
        shows(&out),
        ["a [0, 10) r0 n=1 sum=1.0", "a [0, 10) r1 n=2 sum=5.0"]
    );
    let out2 = feed(&mut w, &[("a", 3, 8.0)]);
    assert_eq!(shows(&out2), ["a [0, 10) r2 n=3 sum=13.0"]);
    let ids: HashSet<&str> = out
        .results
        .iter()
        .chain(&out2.results)
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(ids.len(), 3, "one id per revision");
    assert!(ids.iter().all(|id| id.starts_with("000000000000000a")));
    assert_eq!(w.open_windows(), 2);
    // Watermark 14 = end - 1 + lateness: [0, 10) is dropped, silently (it is up to date).
    let out = feed(&mut w, &[("a", 14, 16.0), ("a", 4, 32.0)]);
    assert!(out.results.is_empty());
    assert_eq!(w.open_windows(), 1);
    assert_eq!(
        times(&out.late),
        [(
            vec![4],
            "window [0, 10) closed at watermark 14, allowed lateness 5ms".to_string()
        )]
    );
    // A window never seen, past its end but within the lateness, opens and fires at once.
    let mut c = config(tumbling(10), count_and_sum());
    c.allowed_lateness_ms = 60_000;
    let mut w = windower(c);
    feed(&mut w, &[("a", 25, 1.0)]);
    let out = feed(&mut w, &[("b", 5, 2.0)]);
    assert_eq!(shows(&out), ["b [0, 10) r0 n=1 sum=2.0"]);
}

#[test]
fn sessions_merge_when_they_overlap_or_touch() {
    let mut c = config(WindowKind::Session { gap_ms: 10 }, count_and_sum());
    c.out_of_orderness_ms = 20;
    let mut w = windower(c);
    let out = feed(
        &mut w,
        &[("a", 0, 1.0), ("a", 5, 2.0), ("a", 15, 4.0), ("b", 1, 8.0)],
    );
    // [0, 10) and [5, 15) overlap; [15, 25) touches [0, 15): one session [0, 25).
    assert!(out.results.is_empty());
    assert_eq!(w.open_windows(), 2);
    let out = feed(&mut w, &[("a", 40, 16.0)]);
    assert_eq!(shows(&out), ["b [1, 11) r0 n=1 sum=8.0"]);
    // 51 is more than the gap after 40: a session of its own.
    let out = feed(&mut w, &[("a", 51, 32.0)]);
    assert_eq!(shows(&out), ["a [0, 25) r0 n=3 sum=7.0"]);
    assert!(out.results[0].replaces.is_empty());
    assert_eq!(
        shows(&w.flush()),
        ["a [40, 50) r0 n=1 sum=16.0", "a [51, 61) r0 n=1 sum=32.0"]
    );
}

#[test]
fn a_late_event_bridging_two_fired_sessions_merges_them_and_replaces_their_results() {
    let mut c = config(WindowKind::Session { gap_ms: 10 }, count_and_sum());
    c.allowed_lateness_ms = 100;
    let mut w = windower(c);
    let first = feed(&mut w, &[("a", 0, 1.0), ("a", 15, 2.0)]);
    assert_eq!(shows(&first), ["a [0, 10) r0 n=1 sum=1.0"]);
    let second = feed(&mut w, &[("a", 40, 4.0)]);
    assert_eq!(shows(&second), ["a [15, 25) r0 n=1 sum=2.0"]);
    // 8's session [8, 18) touches both: they merge into [0, 25), which is past its end: it
    // fires at once, continuing the revisions, and names the results it replaces.
    let out = feed(&mut w, &[("a", 8, 8.0)]);
    assert_eq!(shows(&out), ["a [0, 25) r1 n=3 sum=11.0"]);
    assert_eq!(
        out.results[0].replaces,
        [first.results[0].id.clone(), second.results[0].id.clone()]
    );
    // Within the merged bounds: the same window again, next revision, nothing to replace.
    let out = feed(&mut w, &[("a", 9, 16.0)]);
    assert_eq!(shows(&out), ["a [0, 25) r2 n=4 sum=27.0"]);
    assert!(out.results[0].replaces.is_empty());
    // A late event far from every session: a new session, already past its end, fires at once.
    let out = feed(&mut w, &[("a", 26, 32.0)]);
    assert_eq!(shows(&out), ["a [26, 36) r0 n=1 sum=32.0"]);
    let out = w.advance_watermark_to(200);
    assert_eq!(shows(&out), ["a [40, 50) r0 n=1 sum=4.0"]);
    assert_eq!(w.open_windows(), 0, "all past end - 1 + lateness");
    let out = feed(&mut w, &[("a", 10, 64.0)]);
    assert_eq!(
        times(&out.late),
        [(
            vec![10],
            "window [10, 20) closed at watermark 200, allowed lateness 100ms".to_string()
        )]
    );
}

#[test]
fn count_windows_fire_when_full_and_at_flush() {
    let kind = WindowKind::Count {
        size: 3,
        slide: None,
    };
    let aggs = vec![
        AggregateSpec::count_events("n"),
        AggregateSpec::new(AggFn::First, "temp", "first"),
        AggregateSpec::new(AggFn::Last, "temp", "last"),
    ];
    let mut w = windower(config(kind, aggs));
    let out = feed(
        &mut w,
        &[("a", 5, 1.0), ("a", 1, 2.0), ("b", 7, 3.0), ("a", 9, 4.0)],
    );
    // Start and end: the earliest time and the latest plus one; first and last by event time.
    assert_eq!(shows(&out), ["a [1, 10) r0 n=3 first=2.0 last=4.0"]);
    let full = out.results[0].clone();
    feed(&mut w, &[("a", 2, 5.0), ("a", 3, 6.0)]);
    let out = w.flush();
    assert_eq!(
        shows(&out),
        [
            "a [2, 4) r0 n=2 first=5.0 last=6.0",
            "b [7, 8) r0 n=1 first=3.0 last=3.0"
        ]
    );
    // After a flush, counting starts over, with the next sequence numbers.
    let out = feed(&mut w, &[("a", 1, 7.0), ("a", 5, 8.0), ("a", 9, 9.0)]);
    assert_eq!(shows(&out), ["a [1, 10) r0 n=3 first=7.0 last=9.0"]);
    assert_ne!(
        out.results[0].id, full.id,
        "same bounds, another sequence number"
    );

    let kind = WindowKind::Count {
        size: 3,
        slide: Some(2),
    };
    let mut w = windower(config(kind, count_and_sum()));
    let events: Vec<(&str, i64, f64)> = (0..7).map(|i| ("a", i * 10, i as f64)).collect();
    let out = feed(&mut w, &events);
    assert_eq!(
        shows(&out),
        [
            "a [0, 21) r0 n=3 sum=3.0",
            "a [20, 41) r0 n=3 sum=9.0",
            "a [40, 61) r0 n=3 sum=15.0"
        ]
    );
    assert_eq!(shows(&w.flush()), ["a [60, 61) r0 n=1 sum=6.0"]);
}

#[test]
fn an_idle_source_stops_holding_the_watermark_and_all_idle_follows_the_clock() {
    let mut c = config(tumbling(10), count_and_sum());
    c.idle_timeout_ms = 100;
    let mut w = windower(c);
    let run = |w: &mut Windower, events: &[(&str, &str, i64, Option<f64>)], now| {
        let (batch, sources) = input_from(events);
        w.process(&batch, &sources, now)
    };
    run(
        &mut w,
        &[("s1", "a", 5, Some(1.0)), ("s2", "b", 5, Some(2.0))],
        1000,
    );
    let out = run(&mut w, &[("s1", "a", 25, Some(4.0))], 1050);
    assert!(out.results.is_empty(), "s2 holds the watermark at 5");
    assert_eq!(w.watermark(), Some(5));
    assert!(w.tick(1099).results.is_empty(), "s2 silent for 99 ms only");
    // s2 silent for 100 ms: idle. s1 alone: watermark 25.
    let out = w.tick(1100);
    assert_eq!(
        shows(&out),
        ["a [0, 10) r0 n=1 sum=1.0", "b [0, 10) r0 n=1 sum=2.0"]
    );
    assert_eq!(w.watermark(), Some(25));
    // Both idle: the gateway clock drives the watermark and the last window closes.
    let out = w.tick(1150);
    assert_eq!(shows(&out), ["a [20, 30) r0 n=1 sum=4.0"]);
    assert_eq!(w.watermark(), Some(1150));
    // A call applies its clock first, as a tick would.
    let mut w2 = windower(config(tumbling(10), count_and_sum()));
    run(&mut w2, &[("s1", "a", 5, Some(1.0))], 0);
    let out = run(&mut w2, &[("s2", "b", 3, Some(1.0))], 2_000_000);
    assert_eq!(shows(&out), ["a [0, 10) r0 n=1 sum=1.0"]);
    assert_eq!(
        times(&out.late),
        [(
            vec![3],
            "window [0, 10) closed at watermark 2000000, allowed lateness 0ms".to_string()
        )]
    );
}

#[test]
fn events_from_the_future_are_diverted_and_do_not_move_time() {
    let mut c = config(tumbling(10), count_and_sum());
    c.max_future_skew_ms = 100;
    let mut w = windower(c);
    let (batch, sources) = input_from(&[
        ("s1", "a", 1000, Some(1.0)),
        ("s1", "a", 1101, Some(2.0)),
        ("s1", "a", 1100, Some(4.0)),
        ("s2", "b", 5000, Some(8.0)),
    ]);
    let out = w.process(&batch, &sources, 1000);
    assert_eq!(
        times(&out.skewed),
        [(
            vec![1101, 5000],
            "event time is more than 100ms ahead of the gateway clock (1000)".to_string()
        )]
    );
    assert_eq!(out.skewed[0].batch.key_of(1).as_ref(), "b");
    assert_eq!(w.watermark(), Some(1100), "skewed events move no watermark");
    assert_eq!(shows(&out), ["a [1000, 1010) r0 n=1 sum=1.0"]);
    assert_eq!(shows(&w.flush()), ["a [1100, 1110) r0 n=1 sum=4.0"]);
}

#[test]
fn processing_time_stamps_events_with_the_clock_and_windows_still_close() {
    let mut c = config(tumbling(1000), count_and_sum());
    c.idle_timeout_ms = 100;
    c.max_future_skew_ms = 0;
    let mut w = windower(c);
    let mut fired = Vec::new();
    for now in (0..=1500).step_by(250) {
        let (batch, sources) = input_from(&[("s", "a", now, Some(1.0))]);
        let out = w.process(&batch, &sources, now);
        assert!(out.late.is_empty() && out.skewed.is_empty(), "at {now}");
        fired.extend(shows(&out));
    }
    assert_eq!(fired, ["a [0, 1000) r0 n=4 sum=4.0"]);
    assert_eq!(shows(&w.tick(2100)), ["a [1000, 2000) r0 n=3 sum=3.0"]);
}

#[test]
fn missing_fields_and_mixed_numbers_count_as_documented() {
    let aggs = vec![
        AggregateSpec::count_events("n"),
        AggregateSpec::new(AggFn::Count, "temp", "n_temp"),
        AggregateSpec::new(AggFn::Sum, "temp", "sum"),
        AggregateSpec::new(AggFn::Max, "temp", "max"),
        AggregateSpec::new(AggFn::Sum, "rh", "rh"),
        AggregateSpec::new(AggFn::Last, "note", "note"),
    ];
    let mut w = windower(config(tumbling(10), aggs));
    let mut b = Builder::new();
    b.push("a", 1, [("temp", Value::Int(2)), ("rh", Value::Int(40))]);
    b.push("a", 2, [("note", Value::Text("door open".into()))]);
    b.push("a", 3, [("temp", Value::Int(5))]);
    let batch = b.finish();
    w.process(
        &batch,
        &[Arc::from("s"), Arc::from("s"), Arc::from("s")],
        NOW,
    );
    let out = w.flush();
    // Ints stay ints; events without the field do not count for it; no `rh` but one.
    assert_eq!(
        shows(&out),
        ["a [0, 10) r0 n=3 n_temp=2 sum=7 max=5 rh=40 note=\"door open\""]
    );
    let mut w = windower(config(
        tumbling(10),
        vec![AggregateSpec::new(AggFn::Sum, "temp", "sum")],
    ));
    feed(&mut w, &[("a", 1, 0.5)]);
    let mut b = Builder::new();
    b.push("a", 2, [("temp", Value::Int(2))]);
    b.push("b", 2, [("other", Value::Int(2))]);
    w.process(&b.finish(), &[Arc::from("s"), Arc::from("s")], NOW);
    // A float among the ints makes the sum a float; a window with no value has no entry.
    assert_eq!(shows(&w.flush()), ["a [0, 10) r0 sum=2.5", "b [0, 10) r0"]);
}

#[test]
fn ids_are_time_ordered_hex_and_stable() {
    let id = result_id("farm", tumbling(60_000), "north/1", 0, 60_000, 0, None);
    assert_eq!(id.len(), 32);
    assert!(
        id.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(&id[..16], "000000000000ea60");
    // Pinned: a receiver dedups across weir versions only if ids never change.
    assert_eq!(id, "000000000000ea6002b4851eef4e39fe");
    let other = [
        result_id("farm2", tumbling(60_000), "north/1", 0, 60_000, 0, None),
        result_id(
            "farm",
            WindowKind::Session { gap_ms: 1 },
            "north/1",
            0,
            60_000,
            0,
            None,
        ),
        result_id("farm", tumbling(60_000), "north/2", 0, 60_000, 0, None),
        result_id("farm", tumbling(60_000), "north/1", 1, 60_000, 0, None),
        result_id("farm", tumbling(60_000), "north/1", 0, 60_000, 1, None),
        result_id("farm", tumbling(60_000), "north/1", 0, 60_000, 0, Some(0)),
    ];
    let distinct: HashSet<&String> = other.iter().chain([&id]).collect();
    assert_eq!(distinct.len(), 7);
    // Length-prefixed fields: moving a character between pipeline and key changes the id.
    assert_ne!(
        result_id("ab", tumbling(1), "c", 0, 1, 0, None),
        result_id("a", tumbling(1), "bc", 0, 1, 0, None)
    );
}

#[test]
fn an_explicit_watermark_fires_windows_and_never_goes_back() {
    let mut w = windower(config(tumbling(10), count_and_sum()));
    feed(&mut w, &[("a", 1, 1.0), ("a", 12, 2.0)]);
    assert_eq!(
        shows(&w.advance_watermark_to(19)),
        ["a [10, 20) r0 n=1 sum=2.0"]
    );
    assert_eq!(w.advance_watermark_to(5), Emitted::default());
    assert_eq!(w.watermark(), Some(19));
    // A new source far behind cannot pull it back: its event is late.
    let (batch, sources) = input_from(&[("s2", "b", 15, Some(1.0))]);
    let out = w.process(&batch, &sources, NOW);
    assert_eq!(w.watermark(), Some(19));
    assert_eq!(out.late.len(), 1);
}

// Custom aggregates ----------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Calls {
    create: usize,
    add: usize,
    merge: usize,
    finish: usize,
}

/// An exact median of `temp`: the accumulator is every value, as little-endian f64s.
#[derive(Default)]
struct Median {
    calls: Arc<Mutex<Calls>>,
    fail_add_on_negative: bool,
    fail_finish: bool,
}

impl CustomAggregate for Median {
    fn create(&mut self) -> Result<Vec<u8>, String> {
        self.calls.lock().unwrap().create += 1;
        Ok(Vec::new())
    }

    fn add(
        &mut self,
        accs: &[Vec<u8>],
        events: &Batch,
        group: &[u32],
    ) -> Result<Vec<Vec<u8>>, String> {
        self.calls.lock().unwrap().add += 1;
        let mut accs = accs.to_vec();
        let temp = events.column("temp");
        for (i, &g) in group.iter().enumerate() {
            let x = match temp.and_then(|c| c.get(i)) {
                Some(Value::Float(x)) => x,
                Some(Value::Int(x)) => x as f64,
                _ => continue,
            };
            if self.fail_add_on_negative && x < 0.0 {
                return Err(format!("negative temperature {x}"));
            }
            accs[g as usize].extend(x.to_le_bytes());
        }
        Ok(accs)
    }

    fn merge(&mut self, a: &[u8], b: &[u8]) -> Result<Vec<u8>, String> {
        self.calls.lock().unwrap().merge += 1;
        Ok([a, b].concat())
    }

    fn finish(&mut self, accs: &[Vec<u8>]) -> Result<Vec<Vec<(String, Value)>>, String> {
        self.calls.lock().unwrap().finish += 1;
        if self.fail_finish {
            return Err("out of fuel".into());
        }
        Ok(accs
            .iter()
            .map(|acc| {
                let mut v: Vec<f64> = acc
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                v.sort_by(f64::total_cmp);
                let median = match v.len() {
                    0 => return Vec::new(),
                    n if n % 2 == 1 => v[n / 2],
                    n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
                };
                vec![("median".to_owned(), Value::Float(median))]
            })
            .collect())
    }
}

fn with_median(config: WindowConfig, median: Median) -> Windower {
    Windower::new("farm", config, Some(Box::new(median))).unwrap()
}

#[test]
fn a_custom_aggregate_is_called_once_per_batch_and_merges_sessions() {
    let calls = Arc::new(Mutex::new(Calls::default()));
    let median = Median {
        calls: calls.clone(),
        ..Median::default()
    };
    let aggs = vec![
        AggregateSpec::count_events("n"),
        AggregateSpec::new(AggFn::Max, "temp", "max"),
    ];
    let mut c = config(WindowKind::Session { gap_ms: 10 }, aggs);
    c.out_of_orderness_ms = 100;
    let mut w = with_median(c, median);
    feed(
        &mut w,
        &[("a", 0, 1.0), ("a", 20, 5.0), ("b", 1, 9.0), ("a", 2, 2.0)],
    );
    let snapshot = |c: &Arc<Mutex<Calls>>| *c.lock().unwrap();
    assert_eq!(
        snapshot(&calls),
        Calls {
            create: 1,
            add: 1,
            merge: 0,
            finish: 0
        },
        "three windows, one call"
    );
    // 10's session [10, 20) touches [0, 12) and [20, 30): one merge of the two accumulators.
    feed(&mut w, &[("a", 10, 3.0)]);
    assert_eq!(
        snapshot(&calls),
        Calls {
            create: 1,
            add: 2,
            merge: 1,
            finish: 0
        }
    );
    let out = w.flush();
    assert_eq!(
        shows(&out),
        [
            "b [1, 11) r0 n=1 max=9.0 median=9.0",
            "a [0, 30) r0 n=4 max=5.0 median=2.5"
        ]
    );
    assert_eq!(snapshot(&calls).finish, 1, "both windows, one call");
}

#[test]
fn a_window_firing_mid_batch_gets_the_custom_values_of_its_own_events() {
    let calls = Arc::new(Mutex::new(Calls::default()));
    let median = Median {
        calls: calls.clone(),
        ..Median::default()
    };
    let mut c = config(tumbling(10), vec![AggregateSpec::count_events("n")]);
    c.allowed_lateness_ms = 100;
    let mut w = with_median(c, median);
    let out = feed(&mut w, &[("a", 1, 1.0), ("a", 10, 2.0), ("a", 2, 4.0)]);
    assert_eq!(
        shows(&out),
        ["a [0, 10) r0 n=1 median=1.0", "a [0, 10) r1 n=2 median=2.5"]
    );
    // Cut once, where [0, 10) fired and then took another event.
    assert_eq!(calls.lock().unwrap().add, 2);
    assert_eq!(calls.lock().unwrap().finish, 2);
}

#[test]
fn a_failing_custom_aggregate_leaves_the_built_in_values_and_an_error() {
    let mut w = with_median(
        config(tumbling(10), count_and_sum()),
        Median {
            fail_add_on_negative: true,
            ..Median::default()
        },
    );
    feed(&mut w, &[("a", 1, 1.0), ("b", 2, -1.0)]);
    let out = feed(&mut w, &[("a", 11, 1.0), ("b", 11, 1.0)]);
    let error = "error=\"custom aggregate add failed: negative temperature -1\"";
    assert_eq!(
        shows(&out),
        [
            format!("a [0, 10) r0 n=1 sum=1.0 {error}"),
            format!("b [0, 10) r0 n=1 sum=-1.0 {error}"),
        ]
    );
    // Windows after the failure have their own, good accumulators.
    assert_eq!(
        shows(&w.flush()),
        [
            "a [10, 20) r0 n=1 sum=1.0 median=1.0",
            "b [10, 20) r0 n=1 sum=1.0 median=1.0"
        ]
    );

    let mut w = with_median(
        config(tumbling(10), count_and_sum()),
        Median {
            fail_finish: true,
            ..Median::default()
        },
    );
    feed(&mut w, &[("a", 1, 1.0)]);
    assert_eq!(
        shows(&w.flush()),
        ["a [0, 10) r0 n=1 sum=1.0 error=\"custom aggregate finish failed: out of fuel\""]
    );
}

// State -----------------------------------------------------------------------------------------

#[test]
fn restore_refuses_state_of_another_shape() {
    let w = windower(config(tumbling(10), count_and_sum()));
    let state = w.snapshot();
    let mut other = windower(config(tumbling(20), count_and_sum()));
    assert_eq!(
        other.restore(state.clone()).unwrap_err(),
        "window state is for Tumbling { size_ms: 10, offset_ms: 0 } windows, the config says Tumbling { size_ms: 20, offset_ms: 0 }"
    );
    let mut other = windower(config(tumbling(10), vec![AggregateSpec::count_events("n")]));
    assert_eq!(
        other.restore(state.clone()).unwrap_err(),
        "window state was saved with other aggregates than configured"
    );
    let mut other = with_median(config(tumbling(10), count_and_sum()), Median::default());
    assert_eq!(
        other.restore(state).unwrap_err(),
        "window state was saved without a custom aggregate, the config has one"
    );
}

// Seeded random streams ------------------------------------------------------------------------

/// SplitMix64: small, seedable, good enough to shuffle test input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// In `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One event of a generated stream.
#[derive(Debug, Clone)]
struct Gen {
    source: String,
    key: String,
    ts: i64,
    temp: i64,
}

/// Per key, distinct increasing times from a start below zero (so negative times are covered),
/// then all keys merged in time order. Keys `k0..k4`, from sources `s0..s2`.
fn stream(rng: &mut Rng, per_key: usize, max_step: u64) -> Vec<Gen> {
    let mut all = Vec::new();
    for k in 0..5 {
        let mut ts = -200 + rng.below(50) as i64;
        for _ in 0..per_key {
            ts += 1 + rng.below(max_step) as i64;
            all.push(Gen {
                source: format!("s{}", k % 3),
                key: format!("k{k}"),
                ts,
                temp: rng.below(100) as i64 - 30,
            });
        }
    }
    all.sort_by(|a, b| (a.ts, &a.key).cmp(&(b.ts, &b.key)));
    all
}

/// Each event delayed by up to `max_delay` ms, in arrival order.
fn delayed(rng: &mut Rng, events: &[Gen], max_delay: u64) -> Vec<Gen> {
    let mut d: Vec<(i64, usize)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.ts + rng.below(max_delay + 1) as i64, i))
        .collect();
    d.sort();
    d.into_iter().map(|(_, i)| events[i].clone()).collect()
}

/// Feeds `events` in batches of random sizes, then flushes; everything emitted, in order.
fn run_stream(w: &mut Windower, rng: &mut Rng, events: &[Gen]) -> Vec<Emitted> {
    let mut outs = Vec::new();
    let mut rest = events;
    while !rest.is_empty() {
        let n = (1 + rng.below(16) as usize).min(rest.len());
        let (now, later) = rest.split_at(n);
        outs.push(process_gen(w, now));
        rest = later;
    }
    outs.push(w.flush());
    outs
}

fn process_gen(w: &mut Windower, events: &[Gen]) -> Emitted {
    let mut b = Builder::new();
    for e in events {
        b.push(&e.key, e.ts, [("temp", Value::Int(e.temp))]);
    }
    let sources: Vec<Arc<str>> = events
        .iter()
        .map(|e| Arc::from(e.source.as_str()))
        .collect();
    w.process(&b.finish(), &sources, NOW)
}

fn all_aggregates() -> Vec<AggregateSpec> {
    vec![
        AggregateSpec::count_events("n"),
        AggregateSpec::new(AggFn::Sum, "temp", "sum"),
        AggregateSpec::new(AggFn::Min, "temp", "min"),
        AggregateSpec::new(AggFn::Max, "temp", "max"),
        AggregateSpec::new(AggFn::Mean, "temp", "mean"),
        AggregateSpec::new(AggFn::First, "temp", "first"),
        AggregateSpec::new(AggFn::Last, "temp", "last"),
        AggregateSpec::new(AggFn::StdDev, "temp", "sd"),
    ]
}

/// Results equal but for rounding in the order-dependent float aggregates.
fn assert_same_results(a: &[WindowResult], b: &[WindowResult], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: number of results");
    for (x, y) in a.iter().zip(b) {
        let strip = |r: &WindowResult| WindowResult {
            values: Vec::new(),
            ..r.clone()
        };
        assert_eq!(strip(x), strip(y), "{what}");
        assert_eq!(x.values.len(), y.values.len(), "{what}: {x:?} vs {y:?}");
        for ((n, u), (m, v)) in x.values.iter().zip(&y.values) {
            assert_eq!(n, m, "{what}");
            match (u, v) {
                (Value::Float(u), Value::Float(v)) => {
                    assert!(
                        (u - v).abs() <= 1e-9 * u.abs().max(1.0),
                        "{what}: {n} {u} vs {v}"
                    )
                }
                (u, v) => assert_eq!(u, v, "{what}: {n}"),
            }
        }
    }
}

fn results(outs: &[Emitted]) -> Vec<WindowResult> {
    outs.iter().flat_map(|o| o.results.clone()).collect()
}

fn no_diversions(outs: &[Emitted]) -> bool {
    outs.iter()
        .all(|o| o.late.is_empty() && o.skewed.is_empty())
}

#[test]
fn shuffling_within_the_out_of_orderness_bound_changes_nothing() {
    const OOO: i64 = 50;
    let kinds = [
        // The most an event may be delayed without being late: out-of-orderness minus one
        // (the watermark is the newest time minus the bound, and fires end - 1).
        (
            WindowKind::Tumbling {
                size_ms: 40,
                offset_ms: 7,
            },
            OOO - 1,
        ),
        (
            WindowKind::Sliding {
                size_ms: 50,
                slide_ms: 20,
                offset_ms: -5,
            },
            OOO - 1,
        ),
        // A session [s, e) fires at watermark e - 1; an event at e would still touch it, so
        // sessions need one ms more to be order-independent.
        (WindowKind::Session { gap_ms: 25 }, OOO - 2),
    ];
    for seed in 0..60 {
        for (kind, max_delay) in kinds {
            let mut rng = Rng(seed);
            let in_order = stream(&mut rng, 40, 30);
            let shuffled = delayed(&mut rng, &in_order, max_delay as u64);
            let make = || {
                let mut c = config(kind, all_aggregates());
                c.out_of_orderness_ms = OOO;
                with_median(c, Median::default())
            };
            let a = run_stream(&mut make(), &mut rng, &in_order);
            let b = run_stream(&mut make(), &mut rng, &shuffled);
            let what = format!("seed {seed}, {kind:?}");
            assert!(no_diversions(&a) && no_diversions(&b), "{what}");
            let (a, b) = (results(&a), results(&b));
            assert!(a.len() > 10, "{what}: {} results", a.len());
            assert_same_results(&a, &b, &what);
            assert!(
                a.iter()
                    .all(|r| r.values.iter().any(|(n, _)| n == "median"))
            );
            let ids: HashSet<&str> = a.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(ids.len(), a.len(), "{what}: ids unique");
            // And the same input, cut in other batches, gives the very same output.
            let c = run_stream(&mut make(), &mut rng, &shuffled);
            assert_same_results(&b, &results(&c), &format!("{what}, batches"));
        }
    }
}

#[test]
fn under_disorder_ids_are_unique_per_window_and_revision_and_nothing_counts_twice() {
    let kinds = [
        tumbling(30),
        WindowKind::Session { gap_ms: 15 },
        WindowKind::Sliding {
            size_ms: 30,
            slide_ms: 20,
            offset_ms: 0,
        },
    ];
    let mut diverted_and_revised = HashMap::new();
    for seed in 0..60 {
        for kind in kinds {
            let mut rng = Rng(1000 + seed);
            let events = stream(&mut rng, 40, 20);
            let events = delayed(&mut rng, &events, 150);
            let mut c = config(kind, vec![AggregateSpec::count_events("n")]);
            c.out_of_orderness_ms = 20;
            c.allowed_lateness_ms = 60;
            let mut w = with_median(c, Median::default());
            let outs = run_stream(&mut w, &mut rng, &events);
            let what = format!("seed {seed}, {kind:?}");
            let all = results(&outs);
            let late: usize = outs
                .iter()
                .flat_map(|o| &o.late)
                .map(|d| d.batch.len())
                .sum();
            let seen: &mut (usize, usize) = diverted_and_revised.entry(kind.as_str()).or_default();
            seen.0 += late;
            seen.1 += all.iter().filter(|r| r.revision > 0).count();

            // One id per (key, window, revision), one (key, window, revision) per id.
            let mut by_id = HashMap::new();
            let mut by_window = HashMap::new();
            for r in &all {
                let window = (r.key.clone(), r.start_ms, r.end_ms, r.revision);
                assert!(
                    by_id.insert(r.id.clone(), window.clone()).is_none(),
                    "{what}: {r:?}"
                );
                assert!(
                    by_window.insert(window, r.id.clone()).is_none(),
                    "{what}: {r:?}"
                );
            }
            // Revisions of a window rise as they are emitted.
            let mut last_revision: HashMap<(Arc<str>, i64, i64), u32> = HashMap::new();
            for r in &all {
                let prev = last_revision.insert((r.key.clone(), r.start_ms, r.end_ms), r.revision);
                assert!(prev.is_none_or(|p| p < r.revision), "{what}: {r:?}");
            }
            if matches!(kind, WindowKind::Sliding { .. }) {
                continue;
            }
            // A receiver keeping the highest revision per window and dropping what is replaced
            // counts every event that was not late exactly once.
            let replaced: HashSet<&String> = all.iter().flat_map(|r| &r.replaces).collect();
            let mut live: BTreeMap<(Arc<str>, i64, i64), &WindowResult> = BTreeMap::new();
            for r in &all {
                live.insert((r.key.clone(), r.start_ms, r.end_ms), r);
            }
            let counted: u64 = live
                .values()
                .filter(|r| !replaced.contains(&r.id))
                .map(|r| r.count)
                .sum();
            assert_eq!(counted as usize, events.len() - late, "{what}");
        }
    }
    for (kind, (late, revised)) in diverted_and_revised {
        assert!(
            late > 100 && revised > 100,
            "{kind}: {late} late, {revised} updates"
        );
    }
}

#[test]
fn a_snapshot_restored_mid_stream_continues_exactly() {
    let kinds = [
        tumbling(30),
        WindowKind::Sliding {
            size_ms: 30,
            slide_ms: 20,
            offset_ms: 3,
        },
        WindowKind::Session { gap_ms: 15 },
        WindowKind::Count {
            size: 4,
            slide: Some(3),
        },
    ];
    for seed in 0..20 {
        for kind in kinds {
            let mut rng = Rng(5000 + seed);
            let mut events = stream(&mut rng, 30, 20);
            // Times in steps of 5 ms: ties, for `first` and `last` to break by arrival.
            events.iter_mut().for_each(|e| e.ts -= e.ts.rem_euclid(5));
            let events = delayed(&mut rng, &events, 100);
            let make = || {
                let mut c = config(kind, all_aggregates());
                c.out_of_orderness_ms = 20;
                c.allowed_lateness_ms = 40;
                c.idle_timeout_ms = 50;
                with_median(c, Median::default())
            };
            // Batches of 7, the clock moving 10 ms per batch, a tick now and then.
            let batches: Vec<&[Gen]> = events.chunks(7).collect();
            let step = |w: &mut Windower, i: usize| {
                let mut b = Builder::new();
                for e in batches[i] {
                    b.push(&e.key, e.ts, [("temp", Value::Int(e.temp))]);
                }
                let sources: Vec<Arc<str>> = batches[i]
                    .iter()
                    .map(|e| Arc::from(e.source.as_str()))
                    .collect();
                let now = i as i64 * 10;
                let mut out = vec![w.process(&b.finish(), &sources, now)];
                if i % 5 == 4 {
                    out.push(w.tick(now + 60));
                }
                out
            };
            let mut whole = make();
            let mut expected: Vec<Emitted> = (0..batches.len())
                .flat_map(|i| step(&mut whole, i))
                .collect();
            expected.push(whole.flush());
            for cut in [1, batches.len() / 2, batches.len() - 1] {
                let mut first = make();
                let mut got: Vec<Emitted> = (0..cut).flat_map(|i| step(&mut first, i)).collect();
                let text = serde_json::to_string(&first.snapshot()).unwrap();
                drop(first);
                let mut second = make();
                second
                    .restore(serde_json::from_str(&text).unwrap())
                    .unwrap();
                got.extend((cut..batches.len()).flat_map(|i| step(&mut second, i)));
                got.push(second.flush());
                assert_eq!(got, expected, "seed {seed}, {kind:?}, cut at {cut}");
            }
        }
    }
}
