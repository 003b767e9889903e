//! Hot swap at the runtime level, with batches flowing from async code.

use std::collections::BTreeMap;
use std::time::Duration;

use weir::batch::Value;
use weir::runtime::{Limits, OperatorHandle};
use weir_tests::{batch, json_config, load, operator, operator_with, value};

const KEYS: [&str; 3] = ["north", "south", "east"];

/// Batch `n` of the stream: one event per key, sequence numbers in `ts_ms`.
fn nth_batch(n: i64) -> weir::batch::Batch {
    batch(
        KEYS.iter()
            .map(|&k| (k, n, vec![("temp", Value::Float(1.0))])),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_while_batches_flow_processes_every_event_once_and_keeps_state() {
    let handle = OperatorHandle::spawn(operator("counter_v1", "{}"), 4).unwrap();
    let handle = std::sync::Arc::new(handle);
    // Compiled before the stream starts: what races the batches is the swap, not a compile
    // (which on a busy machine can outlast any fixed number of batches).
    let v2 = load("counter_v2");
    let swapped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The feeder runs until 50 batches after the swap returned, however long that takes.
    const AFTER_SWAP: usize = 50;
    let feeder = {
        let handle = handle.clone();
        let swapped = swapped.clone();
        tokio::spawn(async move {
            let mut outputs = Vec::new();
            let mut swapped_at = None;
            for n in 0.. {
                let out = handle.transform(nth_batch(n)).await.unwrap();
                assert!(out.dead_letters.is_empty());
                outputs.push(out.events);
                if swapped.load(std::sync::atomic::Ordering::Acquire) {
                    let at = *swapped_at.get_or_insert(outputs.len());
                    if outputs.len() >= at + AFTER_SWAP {
                        break;
                    }
                }
            }
            outputs
        })
    };
    // Swap once the stream is under way; then try a version that must be refused.
    while handle.metrics().snapshot().calls < 50 {
        tokio::task::yield_now().await;
    }
    let report = handle.swap(v2, "{}").await.unwrap();
    assert_ne!(report.from_sha256, report.to_sha256);
    let refused = handle.swap(load("broken_init"), "{}").await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("this version refuses to start"),
        "{refused:#}"
    );
    swapped.store(true, std::sync::atomic::Ordering::Release);
    let outputs = feeder.await.unwrap();

    // Every event came out exactly once, in order, each by one version, the switch at a batch
    // boundary, and the count per key never restarted.
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut versions = Vec::new();
    for (n, events) in outputs.iter().enumerate() {
        assert_eq!(
            events.len(),
            KEYS.len(),
            "batch {n} lost or duplicated events"
        );
        let v: Vec<_> = (0..events.len())
            .map(|i| value(events, "version", i))
            .collect();
        assert!(
            v.windows(2).all(|w| w[0] == w[1]),
            "batch {n} mixed versions: {v:?}"
        );
        versions.push(v[0].clone());
        for i in 0..events.len() {
            assert_eq!(events.ts_ms[i], n as i64);
            let Some(Value::Int(count)) = value(events, "seen", i) else {
                panic!()
            };
            seen.entry(events.key_of(i).to_string())
                .or_default()
                .push(count);
        }
    }
    let switch = versions
        .iter()
        .position(|v| *v == Some(Value::Int(2)))
        .expect("v2 ran");
    assert!(switch >= 50, "swapped only once the stream was under way");
    assert!(versions[..switch].iter().all(|v| *v == Some(Value::Int(1))));
    assert!(
        versions[switch..].iter().all(|v| *v == Some(Value::Int(2))),
        "the refused version never ran"
    );
    for (key, counts) in seen {
        assert_eq!(
            counts,
            (1..=outputs.len() as i64).collect::<Vec<_>>(),
            "state of {key} carried over"
        );
    }
    assert_eq!(handle.metrics().snapshot().swaps, 1);
}

#[test]
fn a_version_that_fails_to_load_or_start_is_refused_and_the_old_one_keeps_running() {
    let mut op = operator("counter_v1", "{}");
    op.transform(nth_batch(0));
    let spec = op.spec().clone();
    assert!(spec.prepare(load("broken_init"), "{}").is_err());
    assert!(
        spec.prepare(load("p95_aggregator"), "{}").is_err(),
        "wrong world"
    );
    let future = weir_tests::runtime().load(&weir_tests::plugin_path("future_version"), None);
    assert!(future.is_err(), "wrong contract version");
    let out = op.transform(nth_batch(1));
    assert_eq!(value(&out.events, "version", 0), Some(Value::Int(1)));
    assert_eq!(value(&out.events, "seen", 0), Some(Value::Int(2)));
}

#[test]
fn rollback_restores_the_previous_version_with_the_state() {
    let mut op = operator("counter_v1", "{}");
    op.transform(nth_batch(0));
    let v2 = op
        .spec()
        .prepare(load("counter_v2"), &json_config("{}"))
        .unwrap();
    op.swap(v2).unwrap();
    let out = op.transform(nth_batch(1));
    assert_eq!(value(&out.events, "version", 0), Some(Value::Int(2)));
    op.rollback().unwrap();
    let out = op.transform(nth_batch(2));
    assert_eq!(value(&out.events, "version", 0), Some(Value::Int(1)));
    assert_eq!(value(&out.events, "seen", 0), Some(Value::Int(3)));
}

#[test]
fn a_failed_batch_leaves_keyed_state_as_it_was() {
    // The counter writes state for every event, then panics on `boom`: none of the writes of
    // that batch may survive it.
    let mut op = operator("counter_v1", "{}");
    op.transform(nth_batch(0));
    let before = op.state().clone();
    let out = op.transform(batch([
        ("north", 1, vec![]),
        ("south", 1, vec![]),
        ("east", 1, vec![("boom", Value::Flag(true))]),
    ]));
    assert_eq!(out.dead_lettered(), 3);
    assert!(
        out.dead_letters[0]
            .detail
            .contains("boom after counting 2 for east")
    );
    assert_eq!(op.state(), &before);
    let out = op.transform(nth_batch(2));
    assert_eq!(value(&out.events, "seen", 0), Some(Value::Int(2)));
}

#[tokio::test(flavor = "current_thread")]
async fn a_slow_plugin_does_not_stall_io_on_the_executor() {
    let limits = Limits {
        time_budget: Duration::from_millis(500),
        ..Limits::default()
    };
    let handle = OperatorHandle::spawn(operator_with("hostile_loop", "{}", limits), 1).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let io = async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        server.await.unwrap();
        buf
    };
    // On a single-threaded executor, the round trip completes while the plugin loops.
    tokio::select! {
        biased;
        out = handle.transform(nth_batch(0)) => panic!("the plugin finished first: {:?}", out.map(|o| o.dead_lettered())),
        echoed = io => assert_eq!(&echoed, b"ping"),
    }
    let out = handle.transform(nth_batch(1)).await.unwrap();
    assert_eq!(out.dead_lettered(), 3);
}

/// `count` of event `i` of `out`.
fn count(out: &weir::runtime::Outcome, i: usize) -> Option<Value> {
    value(&out.events, "count", i)
}

#[test]
fn a_plugin_built_for_contract_0_1_runs_and_a_version_that_migrates_takes_its_state_over() {
    // contract_0_1 is built against weir:operator@0.1.0 and stores a bare count (layout "").
    let mut op = operator("contract_0_1", "{}");
    assert_eq!(op.plugin().version, "0.1.0");
    assert!(!op.plugin().migrates());
    op.transform(nth_batch(0));
    let out = op.transform(nth_batch(1));
    assert_eq!(count(&out, 0), Some(Value::Int(2)));
    assert_eq!(op.layout(), "");

    // key_stats_v2 stores {count, sum, n} (layout "count+mean") and reads the bare count.
    let spec = op.spec().clone();
    let mut v2 = spec
        .prepare(load("key_stats_v2"), &json_config("{ field = \"temp\" }"))
        .unwrap();
    assert_eq!(v2.layout(), "count+mean");
    // Off the data path: a copy, converted; meanwhile batches flow and change two keys' counts,
    // and a key appears that the copy does not have.
    let copy = op.state_for_migration();
    assert_eq!(v2.migrate_copy(&spec, op.layout(), &copy).unwrap(), 3);
    op.transform(batch([
        ("north", 2, vec![]),
        ("south", 2, vec![]),
        ("west", 2, vec![]),
    ]));
    let report = op.swap(v2).unwrap();
    assert_eq!(
        (
            report.from_layout.as_str(),
            report.to_layout.as_str(),
            report.migrated
        ),
        ("", "count+mean", 4)
    );
    let out = op.transform(batch(
        ["north", "south", "east", "west"].map(|k| (k, 3, vec![("temp", Value::Float(4.0))])),
    ));
    let counts: Vec<_> = (0..4).map(|i| count(&out, i)).collect();
    assert_eq!(counts, [4, 4, 3, 2].map(|n| Some(Value::Int(n))));
    assert_eq!(value(&out.events, "mean", 0), Some(Value::Float(4.0)));

    // Back to the version that cannot read "count+mean": refused, and nothing changes.
    let refused = op.rollback().unwrap_err().to_string();
    assert!(
        refused.contains("it stores layout \"\" and the running version layout \"count+mean\""),
        "{refused}"
    );
    let out = op.transform(nth_batch(4));
    assert_eq!(count(&out, 0), Some(Value::Int(5)));
    assert_eq!(op.plugin().version, "0.2.0");
}

#[test]
fn a_migration_that_fails_refuses_the_swap_and_keeps_the_old_version_and_its_state() {
    let mut op = operator("key_stats_v1", "{}");
    op.transform(nth_batch(0));
    // A count that is not an integer: key_stats_v2 refuses to convert it.
    let mut entries: Vec<(String, String, Vec<u8>)> = op
        .state()
        .iter()
        .map(|(k, n, v)| (k.to_owned(), n.to_owned(), v.to_vec()))
        .collect();
    entries.push(("odd".into(), "count".into(), b"\"many\"".to_vec()));
    op.restore_state(weir::runtime::KeyedState::from_entries(entries));
    let before = op.state().clone();
    let v2 = op
        .spec()
        .prepare(load("key_stats_v2"), &json_config("{}"))
        .unwrap();
    let refused = op.swap(v2).unwrap_err().to_string();
    assert!(
        refused.contains("its migrate-state refused the state of layout \"\"")
            && refused.contains("the count of odd is not an integer")
            && refused.contains("the running version keeps running with its state"),
        "{refused}"
    );
    assert_eq!(op.state(), &before);
    let out = op.transform(nth_batch(1));
    assert_eq!(count(&out, 0), Some(Value::Int(2)));
    assert_eq!(op.layout(), "");
}
