//! Time as people read it: milliseconds since the Unix epoch shown as a UTC date and time, with
//! the `time` crate doing the calendar.

/// `ms` (Unix epoch milliseconds) as UTC, to the millisecond: `2026-11-22 09:58:03.250Z`. Times
/// outside what a calendar can show (before year −9999 or after 9999) are shown as the number.
pub fn utc_ms(ms: i64) -> String {
    match datetime(ms) {
        Some(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        None => format!("{ms} ms"),
    }
}

/// `ms` as UTC, to the second: `2026-11-22 09:58:03`.
pub fn utc_s(ms: i64) -> String {
    match datetime(ms) {
        Some(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        None => format!("{ms} ms"),
    }
}

fn datetime(ms: i64) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_show_as_utc() {
        assert_eq!(utc_ms(1_700_000_000_250), "2023-11-14 22:13:20.250Z");
        assert_eq!(utc_ms(-1), "1969-12-31 23:59:59.999Z");
        assert_eq!(utc_s(1_709_208_000_000), "2024-02-29 12:00:00");
        assert_eq!(utc_ms(i64::MAX), "9223372036854775807 ms");
    }
}
