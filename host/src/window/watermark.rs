//! Event time: per-source watermarks with an idle timeout, combined into one watermark that never
//! goes backwards.
//!
//! A source's watermark is the newest event time it sent minus the out-of-orderness bound. The
//! overall watermark is the smallest over the active sources; a source that sent nothing for the
//! idle timeout (by the gateway clock) is idle and does not count. When every source is idle, the
//! gateway clock stands in for them: the watermark is `now - out_of_orderness`, so the last
//! windows close even when the data stops. With no source seen yet there is no watermark (unless
//! one was set explicitly).

use std::collections::{BTreeMap, BTreeSet};
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
    /// The active sources and the idle ones, each by when it last sent an event: moving the
    /// clock visits only the sources whose activity changes, not all of them.
    active_by_seen: BTreeSet<(i64, Arc<str>)>,
    idle_by_seen: BTreeSet<(i64, Arc<str>)>,
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
            active_by_seen: BTreeSet::new(),
            idle_by_seen: BTreeSet::new(),
            now_ms: i64::MIN,
            current: None,
        }
    }

    /// Whether a source last seen at `last_seen_ms` is active at `now_ms`; monotone in
    /// `last_seen_ms`, which lets [`Clock::set_now`] stop at the first source that keeps its
    /// state.
    fn active_at(&self, now_ms: i64, last_seen_ms: i64) -> bool {
        now_ms.saturating_sub(last_seen_ms) < self.idle_timeout_ms
    }

    /// The watermark: no event at or before it is expected any more.
    pub(super) fn current(&self) -> Option<i64> {
        self.current
    }

    /// Sets the gateway clock and recomputes which sources are idle: those silent for the idle
    /// timeout go idle, and (when the clock went back) idle ones that are not any more come back.
    pub(super) fn set_now(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
        let ooo = self.out_of_orderness_ms;
        while let Some((seen, _)) = self.active_by_seen.first()
            && !self.active_at(now_ms, *seen)
        {
            let (seen, source) = self.active_by_seen.pop_first().expect("checked above");
            let s = self.sources.get_mut(&source).expect("listed sources exist");
            unlist(&mut self.active, s.max_ts_ms.saturating_sub(ooo));
            s.active = false;
            self.idle_by_seen.insert((seen, source));
        }
        while let Some((seen, _)) = self.idle_by_seen.last()
            && self.active_at(now_ms, *seen)
        {
            let (seen, source) = self.idle_by_seen.pop_last().expect("checked above");
            let s = self.sources.get_mut(&source).expect("listed sources exist");
            *self
                .active
                .entry(s.max_ts_ms.saturating_sub(ooo))
                .or_default() += 1;
            s.active = true;
            self.active_by_seen.insert((seen, source));
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
        let listed = (s.last_seen_ms, source.clone());
        if s.active {
            unlist(&mut self.active, s.max_ts_ms.saturating_sub(ooo));
            self.active_by_seen.remove(&listed);
        } else {
            self.idle_by_seen.remove(&listed);
        }
        s.max_ts_ms = s.max_ts_ms.max(ts_ms);
        s.last_seen_ms = s.last_seen_ms.max(now_ms);
        s.active = true;
        *self
            .active
            .entry(s.max_ts_ms.saturating_sub(ooo))
            .or_default() += 1;
        self.active_by_seen.insert((s.last_seen_ms, source.clone()));
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
        self.active_by_seen.clear();
        self.idle_by_seen = self
            .sources
            .iter()
            .map(|(k, s)| (s.last_seen_ms, k.clone()))
            .collect();
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

    /// The incremental clock against the obvious one (every source looked at on every move of
    /// the clock), over random moves, events and restores.
    #[test]
    fn moving_the_clock_visits_only_what_changes_with_the_same_result() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, RngSeed, TestRunner};

        #[derive(Debug, Clone)]
        enum Op {
            Now(i64),
            Observe(u8, i64),
            Restore,
        }
        let op = prop_oneof![
            (-50i64..400).prop_map(Op::Now),
            (0u8..6, -50i64..400).prop_map(|(s, t)| Op::Observe(s, t)),
            Just(Op::Restore),
        ];
        let mut runner = TestRunner::new(Config {
            cases: 2000,
            rng_seed: RngSeed::Fixed(7),
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&proptest::collection::vec(op, 1..60), |ops| {
                let mut c = Clock::new(5, 40);
                for op in ops {
                    match op {
                        Op::Now(t) => c.set_now(t),
                        Op::Observe(s, t) => c.observe(&src(&format!("s{s}")), t),
                        Op::Restore => c.restore(c.sources.clone(), c.current),
                    }
                    c.advance();
                    // What the obvious clock holds: every source's activity recomputed.
                    let mut active = BTreeMap::new();
                    for s in c.sources.values().filter(|s| s.active) {
                        *active.entry(s.max_ts_ms.saturating_sub(5)).or_insert(0u32) += 1;
                    }
                    prop_assert_eq!(&active, &c.active);
                    for s in c.sources.values() {
                        if c.now_ms != i64::MIN {
                            prop_assert_eq!(
                                s.active,
                                c.now_ms.saturating_sub(s.last_seen_ms) < 40 || {
                                    // Observed since the clock last moved: active until it moves.
                                    c.active_by_seen.contains(&(s.last_seen_ms, src("")))
                                        || s.last_seen_ms >= c.now_ms
                                }
                            );
                        }
                    }
                    prop_assert_eq!(
                        c.active_by_seen.len() + c.idle_by_seen.len(),
                        c.sources.len()
                    );
                }
                Ok(())
            })
            .unwrap();
    }
}
