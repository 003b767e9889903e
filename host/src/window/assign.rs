//! Which time windows an event belongs to: alignment to the epoch plus an offset, as Flink's
//! `TimeWindow.getWindowStartWithOffset` does it, for negative timestamps too.
//!
//! Arithmetic runs in `i128` and window bounds are clamped to `i64`, so timestamps near the ends
//! of the range (hundreds of millions of years away) give clipped windows rather than overflow.

use super::config::WindowKind;

/// The start of the window of `size_ms` that holds `ts_ms`, windows starting at `offset_ms` past
/// every multiple of `size_ms` since the epoch (`offset_ms` within `(-size_ms, size_ms)`).
pub(super) fn window_start(ts_ms: i64, offset_ms: i64, size_ms: i64) -> i64 {
    let ts = i128::from(ts_ms);
    let remainder = (ts - i128::from(offset_ms)).rem_euclid(i128::from(size_ms));
    clamp(ts - remainder)
}

/// `a + b`, clamped to `i64`.
pub(super) fn add(a: i64, b: i64) -> i64 {
    clamp(i128::from(a) + i128::from(b))
}

fn clamp(x: i128) -> i64 {
    x.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// The `[start, end)` windows of a tumbling or sliding `kind` that hold `ts_ms`, latest first,
/// into `out` (cleared first). Other kinds have no fixed windows: `out` stays empty.
pub(super) fn time_windows(kind: &WindowKind, ts_ms: i64, out: &mut Vec<(i64, i64)>) {
    out.clear();
    match *kind {
        WindowKind::Tumbling { size_ms, offset_ms } => {
            let start = window_start(ts_ms, offset_ms, size_ms);
            out.push((start, add(start, size_ms)));
        }
        WindowKind::Sliding {
            size_ms,
            slide_ms,
            offset_ms,
        } => {
            // Flink's SlidingEventTimeWindows: from the last window that starts at or before the
            // event, back while a window still covers it.
            let ts = i128::from(ts_ms);
            let mut start = i128::from(window_start(ts_ms, offset_ms, slide_ms));
            while start > ts - i128::from(size_ms) {
                out.push((clamp(start), clamp(start + i128::from(size_ms))));
                start -= i128::from(slide_ms);
            }
        }
        WindowKind::Session { .. } | WindowKind::Count { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_align_to_the_epoch_plus_offset_for_negative_times_too() {
        assert_eq!(window_start(0, 0, 10), 0);
        assert_eq!(window_start(9, 0, 10), 0);
        assert_eq!(window_start(10, 0, 10), 10);
        assert_eq!(window_start(-1, 0, 10), -10);
        assert_eq!(window_start(-10, 0, 10), -10);
        assert_eq!(window_start(-11, 0, 10), -20);
        assert_eq!(window_start(2, 3, 10), -7);
        assert_eq!(window_start(3, 3, 10), 3);
        assert_eq!(window_start(-5, -3, 10), -13);
        assert_eq!(window_start(-3, -3, 10), -3);
        // Near the ends of the range the window is clipped, not wrapped.
        assert_eq!(window_start(i64::MIN, 0, 10), i64::MIN);
        assert_eq!(window_start(i64::MIN + 1, 0, 10), i64::MIN);
        assert_eq!(add(i64::MAX - 1, 10), i64::MAX);
    }

    #[test]
    fn tumbling_and_sliding_windows_cover_the_event() {
        let mut out = Vec::new();
        time_windows(
            &WindowKind::Tumbling {
                size_ms: 60,
                offset_ms: 15,
            },
            -1,
            &mut out,
        );
        assert_eq!(out, [(-45, 15)]);

        // Size not a multiple of the slide: 10 / 4 puts an event in 2 or 3 windows.
        let sliding = WindowKind::Sliding {
            size_ms: 10,
            slide_ms: 4,
            offset_ms: 0,
        };
        time_windows(&sliding, 9, &mut out);
        assert_eq!(out, [(8, 18), (4, 14), (0, 10)]);
        time_windows(&sliding, 10, &mut out);
        assert_eq!(out, [(8, 18), (4, 14)]);
        time_windows(&sliding, -1, &mut out);
        assert_eq!(out, [(-4, 6), (-8, 2)]);

        let offset = WindowKind::Sliding {
            size_ms: 10,
            slide_ms: 5,
            offset_ms: -2,
        };
        time_windows(&offset, 0, &mut out);
        assert_eq!(out, [(-2, 8), (-7, 3)]);

        time_windows(&WindowKind::Session { gap_ms: 5 }, 0, &mut out);
        assert!(out.is_empty());
    }
}
