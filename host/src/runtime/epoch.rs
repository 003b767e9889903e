//! The epoch ticker: advances the engine's epoch every tick while plugin calls run, so a call
//! past its deadline traps. After a second without calls it parks, so an idle gateway has no
//! timer waking it up; under load it never parks, so a call costs no system call to wake it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;

pub(crate) struct Ticker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    running: AtomicUsize,
    parked: AtomicBool,
    stop: AtomicBool,
}

/// Ticks without a call after which the ticker parks.
const IDLE_TICKS_BEFORE_PARKING: u32 = 1000;

/// A call in progress; the ticker keeps ticking until every one is dropped.
pub(crate) struct Running<'a>(&'a Ticker);

impl Ticker {
    pub(crate) fn start(engine: Engine, tick: Duration) -> Ticker {
        let shared = Arc::new(Shared {
            running: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                let mut idle = 0;
                while !s.stop.load(Ordering::Acquire) {
                    if s.running.load(Ordering::Acquire) > 0 {
                        idle = 0;
                    } else if idle < IDLE_TICKS_BEFORE_PARKING {
                        idle += 1;
                    } else {
                        s.parked.store(true, Ordering::Release);
                        // A call that started since the check above finds `parked` set and
                        // unparks; park() returns at once if that happened already.
                        if s.running.load(Ordering::Acquire) == 0 {
                            std::thread::park();
                        }
                        s.parked.store(false, Ordering::Release);
                        idle = 0;
                        continue;
                    }
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
        self.shared.running.fetch_add(1, Ordering::AcqRel);
        if self.shared.parked.load(Ordering::Acquire)
            && let Some(t) = &self.thread
        {
            t.thread().unpark();
        }
        Running(self)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.shared.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
