//! A candidate version run beside the live one: same batches, a copy of the state, nothing
//! emitted.
//!
//! The live operator hands each batch it processed, with what it made of it, to the shadow's
//! thread through a bounded queue and goes on at once: the candidate runs on its own thread, so
//! the live path pays for a copy of the batch and never waits for it. When the queue is full
//! (the candidate is slower than the live stream) the batch is skipped and counted; a candidate
//! that skipped a batch has a state that missed it, and cannot be promoted. The report compares
//! the two sides: events in and out, dead letters, time per batch, and a sample of the batches
//! whose outputs differ.

// Call times are measured for the report; nothing the pipeline emits reads them.
#![allow(clippy::disallowed_methods)]

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::bindings::{Batch, Message};
use super::operator::{Operator, Outcome};

/// Batches waiting for the candidate, at most; more are skipped.
const QUEUE: usize = 64;
/// Batches with differing outputs kept as samples.
const SAMPLES: usize = 5;
/// Events of each side shown per sample.
const SAMPLE_EVENTS: usize = 3;

/// What one side did with the batches since the shadow started.
#[derive(Clone, Debug, Default)]
pub struct Side {
    pub batches: u64,
    pub events_in: u64,
    pub events_out: u64,
    pub dead_letters: u64,
    /// Of the dead letters, those the plugin did not reject itself: traps, limits, failures.
    pub errors: u64,
    pub time: Duration,
}

impl Side {
    fn add(&mut self, inputs: usize, outcome: &Outcome, time: Duration) {
        self.batches += 1;
        self.events_in += inputs as u64;
        self.events_out += outcome.events.len() as u64;
        self.dead_letters += outcome.dead_lettered() as u64;
        self.errors += outcome
            .dead_letters
            .iter()
            .filter(|d| d.reason != super::operator::Reason::Rejected)
            .map(|d| d.input.len() as u64)
            .sum::<u64>();
        self.time += time;
    }

    fn json(&self) -> Value {
        let per_batch_us = if self.batches == 0 {
            0.0
        } else {
            self.time.as_secs_f64() * 1e6 / self.batches as f64
        };
        json!({
            "batches": self.batches,
            "events_in": self.events_in,
            "events_out": self.events_out,
            "dead_letters": self.dead_letters,
            "errors": self.errors,
            "time_per_batch_us": per_batch_us,
        })
    }
}

/// Live and candidate, side by side.
#[derive(Debug, Default)]
struct Report {
    live: Side,
    candidate: Side,
    /// Batches the candidate never saw (its queue was full).
    skipped: u64,
    /// Batches whose outputs differ (events, or which inputs became dead letters).
    differing: u64,
    samples: Vec<Value>,
}

/// The batch a live call processed, and what became of it.
struct Job {
    /// The key table's generation when the batch was handed over: if keys were forgotten
    /// since, its key ids may name nothing, and the batch is skipped.
    key_generation: u64,
    input: Input,
    live: Outcome,
    live_time: Duration,
    clock_ms: Option<i64>,
}

enum Input {
    Events(Batch),
    Messages(Vec<Message>),
}

enum Command {
    Run(Box<Job>),
    /// Drain the queue, then hand the candidate back.
    Finish(SyncSender<Operator>),
}

/// A candidate running in the shadow of a live operator.
pub(crate) struct Shadow {
    tx: SyncSender<Command>,
    thread: Option<JoinHandle<()>>,
    report: Arc<Mutex<Report>>,
    sha256: String,
    layout: String,
    started_ms: i64,
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadow")
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl Shadow {
    /// Starts `candidate` on a thread of its own.
    pub(crate) fn start(candidate: Operator, started_ms: i64) -> std::io::Result<Shadow> {
        let (tx, rx) = sync_channel(QUEUE);
        let report = Arc::new(Mutex::new(Report::default()));
        let sha256 = candidate.plugin().sha256.clone();
        let layout = candidate.layout().to_owned();
        let name = format!("weir-shadow:{}", candidate.spec().step);
        let shared = report.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(candidate, &rx, &shared))?;
        Ok(Shadow {
            tx,
            thread: Some(thread),
            report,
            sha256,
            layout,
            started_ms,
        })
    }

    /// Hands the candidate a batch of events the live version processed into `live`.
    pub(crate) fn offer_events(
        &self,
        input: Batch,
        live: &Outcome,
        live_time: Duration,
        clock_ms: Option<i64>,
    ) {
        self.offer(Input::Events(input), live, live_time, clock_ms);
    }

    /// Hands the candidate a batch of messages the live version decoded into `live`.
    pub(crate) fn offer_messages(
        &self,
        input: Vec<Message>,
        live: &Outcome,
        live_time: Duration,
        clock_ms: Option<i64>,
    ) {
        self.offer(Input::Messages(input), live, live_time, clock_ms);
    }

    fn offer(&self, input: Input, live: &Outcome, live_time: Duration, clock_ms: Option<i64>) {
        let job = Job {
            key_generation: crate::keys::generation(),
            input,
            live: Outcome {
                events: live.events.clone(),
                dead_letters: live.dead_letters.clone(),
            },
            live_time,
            clock_ms,
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Command::Run(Box::new(job)))
        {
            self.lock().skipped += 1;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Report> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The candidate, once it has processed every batch handed to it (the shadow is spent
    /// then); refused, the shadow going on, if it skipped any, since its state then misses them.
    pub(crate) fn finish(&mut self) -> Result<Operator, String> {
        let skipped = self.lock().skipped;
        if skipped > 0 {
            return Err(format!(
                "the candidate skipped {skipped} batches (it fell behind the live stream), so its \
                 state misses them: discard it, and swap to it instead (the swap converts the \
                 live state), or run the shadow again when the load is lower"
            ));
        }
        let stopped = || "the shadow's thread has stopped; see weir's log".to_owned();
        let (reply, answer) = sync_channel(1);
        self.tx
            .send(Command::Finish(reply))
            .map_err(|_| stopped())?;
        let candidate = answer.recv().map_err(|_| stopped())?;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        Ok(candidate)
    }

    /// sha256 of the candidate.
    pub(crate) fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The report, as `weir plugin shadow` shows it.
    pub(crate) fn json(&self) -> Value {
        let r = self.lock();
        json!({
            "candidate_sha256": self.sha256,
            "candidate_layout": self.layout,
            "started_ms": self.started_ms,
            "live": r.live.json(),
            "candidate": r.candidate.json(),
            "skipped_batches": r.skipped,
            "differing_batches": r.differing,
            "samples": r.samples,
        })
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        // The thread ends when the queue closes; it is not waited for (it may be in a long
        // call), and its candidate is dropped with it.
        self.thread.take();
    }
}

/// The shadow's thread: runs each batch through the candidate and compares.
fn run(mut candidate: Operator, rx: &Receiver<Command>, report: &Mutex<Report>) {
    while let Ok(command) = rx.recv() {
        let job = match command {
            Command::Run(job) => job,
            Command::Finish(reply) => {
                let _ = reply.send(candidate);
                return;
            }
        };
        if job.key_generation != crate::keys::generation() {
            report.lock().unwrap_or_else(|e| e.into_inner()).skipped += 1;
            continue;
        }
        if let Some(now) = job.clock_ms {
            candidate.set_clock(now);
        }
        let started = Instant::now();
        let (inputs, outcome) = match job.input {
            Input::Events(batch) => (batch.len(), candidate.transform(batch)),
            Input::Messages(messages) => (messages.len(), candidate.decode(messages)),
        };
        let time = started.elapsed();
        let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
        r.live.add(inputs, &job.live, job.live_time);
        r.candidate.add(inputs, &outcome, time);
        let dead = |o: &Outcome| -> Vec<(String, usize)> {
            o.dead_letters
                .iter()
                .map(|d| (d.reason.to_string(), d.input.len()))
                .collect()
        };
        if outcome.events != job.live.events || dead(&outcome) != dead(&job.live) {
            r.differing += 1;
            if r.samples.len() < SAMPLES {
                let events = |b: &Batch| -> Vec<Value> {
                    (0..b.len().min(SAMPLE_EVENTS))
                        .map(|i| b.event_json(i))
                        .collect()
                };
                let sample = json!({
                    "batch": r.live.batches,
                    "events_in": inputs,
                    "live": { "events_out": job.live.events.len(), "dead_letters": job.live.dead_lettered(), "first_events": events(&job.live.events) },
                    "candidate": { "events_out": outcome.events.len(), "dead_letters": outcome.dead_lettered(), "first_events": events(&outcome.events), "dead_letter_reasons": outcome.dead_letters.iter().take(SAMPLE_EVENTS).map(|d| d.detail.clone()).collect::<Vec<_>>() },
                });
                r.samples.push(sample);
            }
        }
    }
}
