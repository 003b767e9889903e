//! Counters kept for each operator: what went in and out, what failed and why, time spent.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($(#[$meta:meta])* $name:ident / $snapshot:ident { $($(#[$fmeta:meta])* $field:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: AtomicU64,)*
        }

        /// A copy of the counters at one moment.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
        pub struct $snapshot {
            $($(#[$fmeta])* pub $field: u64,)*
        }

        impl $name {
            pub fn snapshot(&self) -> $snapshot {
                $snapshot { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Counters of one operator (a pipeline step running a plugin).
    OperatorMetrics / OperatorMetricsSnapshot {
        /// Calls into the plugin (one per batch, or per part of a batch over the limit).
        calls,
        /// Events (or messages) passed in.
        events_in,
        /// Events returned.
        events_out,
        /// Inputs the plugin rejected one by one (sent to the dead-letter output).
        rejected,
        /// Inputs sent to the dead-letter output because their whole call failed.
        dead_lettered,
        /// Calls that failed as a whole (error, trap or limit).
        failed_calls,
        /// Calls that trapped (a panic, an out-of-bounds access, ...).
        traps,
        /// Calls stopped by the time budget.
        time_limit_hits,
        /// Calls that hit the memory cap.
        memory_limit_hits,
        /// Calls whose output was over the size limits.
        output_limit_hits,
        /// Times the plugin was quarantined.
        quarantines,
        /// Fresh instances built after a broken one.
        rebuilds,
        /// Versions swapped in.
        swaps,
        /// Nanoseconds spent in calls into the plugin.
        call_ns,
    }
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
