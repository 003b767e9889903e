//! Event time: per-source watermarks with an idle timeout, combined into one watermark that never
//! goes backwards.
//!
//! A source's watermark is the newest event time it sent minus the out-of-orderness bound. The
//! overall watermark is the smallest over the active sources; a source that sent nothing for the
//! idle timeout (by the gateway clock) is idle and does not count. When every source is idle, the
//! gateway clock stands in for them: the watermark is `now - out_of_orderness`, so the last
//! windows close even when the data stops. With no source seen yet there is no watermark (unless
//! one was set explicitly).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// What is known of one source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct SourceClock {
    /// The newest event time it sent.
    max_ts_ms: i64,
    /// When it last sent an event, by the gateway clock.
    last_seen_ms: i64,
    /// Whether it is active (its bound is in `Clock::active`); recomputed, not stored.
    #[serde(skip)]
    active: bool,
}

/// The watermark and what it is made of.
#[derive(Debug, Clone)]
pub(super) struct Clock {
    out_of_orderness_ms: i64,
    idle_timeout_ms: i64,
    sources: BTreeMap<Arc<str>, SourceClock>,
    /// The watermarks of the active sources, each with the number of sources at it.
    active: BTreeMap<i64, u32>,
    /// The gateway clock, as last told.
    now_ms: i64,
    current: Option<i64>,
}

impl Clock {
    pub(super) fn new(out_of_orderness_ms: i64, idle_timeout_ms: i64) -> Self {
        Clock {
            out_of_orderness_ms,
            idle_timeout_ms,
            sources: BTreeMap::new(),
            active: BTreeMap::new(),
            now_ms: i64::MIN,
            current: None,
        }
    }

    /// The watermark: no event at or before it is expected any more.
    pub(super) fn current(&self) -> Option<i64> {
        self.current
    }

    /// Sets the gateway clock and recomputes which sources are idle.
    pub(super) fn set_now(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
        for s in self.sources.values_mut() {
            let active = now_ms.saturating_sub(s.last_seen_ms) < self.idle_timeout_ms;
            if active != s.active {
                let bound = s.max_ts_ms.saturating_sub(self.out_of_orderness_ms);
                if active {
                    *self.active.entry(bound).or_default() += 1;
                } else {
                    unlist(&mut self.active, bound);
                }
                s.active = active;
            }
        }
    }

    /// Notes an event of `source` at `ts_ms`, seen now (by the clock of [`Clock::set_now`]).
    pub(super) fn observe(&mut self, source: &Arc<str>, ts_ms: i64) {
        let now_ms = self.now_ms;
        if !self.sources.contains_key(source) {
            let new = SourceClock {
                max_ts_ms: ts_ms,
                last_seen_ms: now_ms,
                active: false,
            };
            self.sources.insert(source.clone(), new);
        }
        let s = self.sources.get_mut(source).expect("inserted above");
        let ooo = self.out_of_orderness_ms;
        if s.active {
            unlist(&mut self.active, s.max_ts_ms.saturating_sub(ooo));
        }
        s.max_ts_ms = s.max_ts_ms.max(ts_ms);
        s.last_seen_ms = s.last_seen_ms.max(now_ms);
        s.active = true;
        *self
            .active
            .entry(s.max_ts_ms.saturating_sub(ooo))
            .or_default() += 1;
    }

    /// Moves the watermark up to what the sources (or the clock) allow. Returns whether it moved.
    pub(super) fn advance(&mut self) -> bool {
        let candidate = match self.active.first_key_value() {
            Some((&bound, _)) => Some(bound),
            None if !self.sources.is_empty() => {
                Some(self.now_ms.saturating_sub(self.out_of_orderness_ms))
            }
            None => None,
        };
        match candidate {
            Some(c) => self.raise_to(c),
            None => false,
        }
    }

    /// Moves the watermark up to `watermark_ms` if it is behind. Returns whether it moved.
    pub(super) fn raise_to(&mut self, watermark_ms: i64) -> bool {
        if self.current.is_some_and(|w| w >= watermark_ms) {
            return false;
        }
        self.current = Some(watermark_ms);
        true
    }

    /// The sources, for a snapshot.
    /// Each source's watermark (newest event time minus the out-of-orderness bound) and whether
    /// it is active (not idle).
    pub(super) fn source_watermarks(&self) -> Vec<(Arc<str>, i64, bool)> {
        self.sources
            .iter()
            .map(|(k, s)| {
                let bound = s.max_ts_ms.saturating_sub(self.out_of_orderness_ms);
                (k.clone(), bound, s.active)
            })
            .collect()
    }

    pub(super) fn sources(&self) -> impl Iterator<Item = (&Arc<str>, &SourceClock)> {
        self.sources.iter()
    }

    /// Restores the sources and watermark of a snapshot; [`Clock::set_now`] then decides which
    /// sources are active.
    pub(super) fn restore(
        &mut self,
        sources: impl IntoIterator<Item = (Arc<str>, SourceClock)>,
        current: Option<i64>,
    ) {
        self.sources = sources.into_iter().collect();
        self.sources.values_mut().for_each(|s| s.active = false);
        self.active.clear();
        self.now_ms = i64::MIN;
        self.current = current;
    }
}

fn unlist(active: &mut BTreeMap<i64, u32>, bound: i64) {
    if let Some(n) = active.get_mut(&bound) {
        *n -= 1;
        if *n == 0 {
            active.remove(&bound);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn the_slowest_active_source_holds_the_watermark() {
        let mut c = Clock::new(5, 100);
        c.set_now(1000);
        assert!(!c.advance());
        assert_eq!(c.current(), None, "no source, no watermark");
        c.observe(&src("a"), 50);
        c.observe(&src("b"), 30);
        assert!(c.advance());
        assert_eq!(c.current(), Some(25));
        c.observe(&src("b"), 80);
        c.advance();
        assert_eq!(c.current(), Some(45), "now a holds it");
        c.observe(&src("a"), 40);
        c.advance();
        assert_eq!(
            c.current(),
            Some(45),
            "an older event does not move a source back"
        );
    }

    #[test]
    fn idle_sources_stop_counting_and_all_idle_follows_the_clock() {
        let mut c = Clock::new(5, 100);
        c.set_now(1000);
        c.observe(&src("a"), 50);
        c.set_now(1050);
        c.observe(&src("b"), 500);
        c.advance();
        assert_eq!(c.current(), Some(45));
        c.set_now(1099);
        c.advance();
        assert_eq!(c.current(), Some(45), "a is silent for 99 ms, not yet idle");
        c.set_now(1100);
        c.advance();
        assert_eq!(c.current(), Some(495), "a is idle: b alone");
        c.set_now(1150);
        c.advance();
        assert_eq!(c.current(), Some(1145), "all idle: the clock");
        c.observe(&src("a"), 60);
        c.advance();
        assert_eq!(c.current(), Some(1145), "the watermark never goes back");
        c.restore(c.sources.clone(), c.current);
        c.set_now(1150);
        c.advance();
        assert_eq!(c.current(), Some(1145));
        assert_eq!(c.active.len(), 1, "a is active again after a restore");
    }

    #[test]
    fn an_explicit_watermark_raises_it_only() {
        let mut c = Clock::new(0, 10);
        assert!(c.raise_to(100));
        assert!(!c.raise_to(50));
        c.set_now(0);
        c.observe(&src("a"), 10);
        assert!(!c.advance());
        assert_eq!(c.current(), Some(100));
    }
}
