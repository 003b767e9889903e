//! The epoch ticker: advances the engine's epoch every tick while plugin calls run, so a call
//! past its deadline traps. It parks as soon as a tick passed with no call running and none
//! started, so a gateway at a steady low rate (calls in a burst per batch, then nothing for
//! milliseconds) pays a wake-up per batch rather than one per tick; under load, calls keep it
//! ticking and cost no system call to wake it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;

pub(crate) struct Ticker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// Calls in progress.
    running: AtomicUsize,
    /// Calls started, ever: a call that started and ended within one tick still keeps the
    /// ticker awake for the next one (the next call of the batch is likely to follow).
    started: AtomicU64,
    parked: AtomicBool,
    stop: AtomicBool,
}

/// A call in progress; the ticker keeps ticking until every one is dropped.
pub(crate) struct Running<'a>(&'a Ticker);

impl Ticker {
    pub(crate) fn start(engine: Engine, tick: Duration) -> Ticker {
        let shared = Arc::new(Shared {
            running: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                let mut seen = s.started.load(SeqCst);
                while !s.stop.load(SeqCst) {
                    let idle = |seen| s.running.load(SeqCst) == 0 && s.started.load(SeqCst) == seen;
                    if idle(seen) {
                        s.parked.store(true, SeqCst);
                        // A call that started since the check above either is seen here, or
                        // finds `parked` set and unparks (park() then returns at once).
                        if idle(seen) {
                            std::thread::park();
                        }
                        s.parked.store(false, SeqCst);
                        seen = s.started.load(SeqCst);
                        continue;
                    }
                    seen = s.started.load(SeqCst);
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch ticker thread");
        Ticker {
            shared,
            thread: Some(thread),
        }
    }

    pub(crate) fn enter(&self) -> Running<'_> {
        self.shared.running.fetch_add(1, SeqCst);
        self.shared.started.fetch_add(1, SeqCst);
        if self.shared.parked.load(SeqCst)
            && let Some(t) = &self.thread
        {
            t.thread().unpark();
        }
        Running(self)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.shared.running.fetch_sub(1, SeqCst);
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
