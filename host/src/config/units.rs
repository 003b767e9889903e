//! Human units in the config: durations (`"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"`, `"1h 30m"`)
//! and sizes (`"512KiB"`, `"64MiB"`, `"100MB"`), written as strings.
//!
//! Durations are parsed by the `humantime` crate (a number and a unit, possibly several:
//! `"1h 30m"`), then capped at ten years so that no setting can overflow a clock. Sizes are a
//! whole number and one unit, parsed here: the size crates read `"64"` as bytes, `"64mb"` and
//! `"64KB"` as decimal units and saturate `"99999999999TiB"` to 16 EiB without a word, where a
//! config error must say what is wrong. A unit that is unknown or ambiguous (`KB`, `M`) is
//! refused with the list of those accepted.

use std::time::Duration;

/// Duration units for writing durations back, with their length in milliseconds.
const DURATION_UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

const DURATION_HELP: &str = "durations take ms, s, m (minutes), h or d, e.g. \"30s\" or \"1h 30m\"";

/// The longest duration a setting may have: far beyond any that makes sense, and far below
/// what overflows a clock.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Size units, in bytes. `KB` is not one: it means 1000 to some and 1024 to others.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("kB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

const SIZE_HELP: &str = "sizes take B, kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB \
                         (powers of 1024), e.g. \"64MiB\"";

/// Parses a duration such as `"30s"` or `"1h 30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("{text:?} is not a duration; {DURATION_HELP}"));
    }
    if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} has no unit; {DURATION_HELP}"));
    }
    let d = humantime::parse_duration(trimmed)
        .map_err(|e| format!("{text:?} is not a duration ({e}); {DURATION_HELP}"))?;
    if d > MAX_DURATION {
        return Err(format!(
            "{text:?} is too large; durations are at most 10 years"
        ));
    }
    Ok(d)
}

/// Parses a size such as `"64MiB"`, in bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    parse(text, SIZE_UNITS, SIZE_HELP, "a size")
}

/// A duration from a TOML value, which must be a string.
pub(super) fn duration_value(value: &toml::Value) -> Result<Duration, String> {
    match value {
        toml::Value::String(s) => parse_duration(s),
        other => Err(not_a_string(other, "a duration", DURATION_HELP)),
    }
}

/// A size from a TOML value, which must be a string.
pub(super) fn size_value(value: &toml::Value) -> Result<u64, String> {
    match value {
        toml::Value::String(s) => parse_size(s),
        other => Err(not_a_string(other, "a size", SIZE_HELP)),
    }
}

fn not_a_string(value: &toml::Value, what: &str, help: &str) -> String {
    match value {
        toml::Value::Integer(_) | toml::Value::Float(_) => {
            format!("{value} has no unit; write {what} as a string with a unit ({help})")
        }
        _ => format!(
            "expected {what} as a string, found a {}; {help}",
            value.type_str()
        ),
    }
}

fn parse(text: &str, units: &[(&str, u64)], help: &str, what: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = trimmed.split_at(digits);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err(if unit.starts_with(['-', '.']) || trimmed.is_empty() {
            format!("{text:?} is not {what}; write a whole number and a unit ({help})")
        } else {
            format!("{text:?} does not start with a number; {help}")
        });
    }
    if unit.starts_with('.') {
        return Err(format!(
            "{text:?} is not a whole number; use a smaller unit instead ({help})"
        ));
    }
    if unit.is_empty() {
        return Err(format!("{text:?} has no unit; {help}"));
    }
    let Some(&(_, scale)) = units.iter().find(|(u, _)| *u == unit) else {
        return Err(format!("{text:?} has an unknown unit {unit:?}; {help}"));
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Writes a duration back in the largest unit that divides it (`90000ms` as `"90s"`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    format_in(ms, DURATION_UNITS)
}

/// Writes a size back in the largest binary unit that divides it, or decimal if that fits better.
pub fn format_size(bytes: u64) -> String {
    format_in(bytes, SIZE_UNITS)
}

fn format_in(n: u64, units: &[(&str, u64)]) -> String {
    if n == 0 {
        return format!("0{}", units[0].0);
    }
    let (unit, scale) = units
        .iter()
        .filter(|(_, s)| n.is_multiple_of(*s))
        .max_by_key(|(_, s)| *s)
        .expect("the smallest unit divides everything");
    format!("{}{unit}", n / scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_numbers_with_known_units() {
        let ms = |s| parse_duration(s).map(|d| d.as_millis() as u64);
        assert_eq!(ms("250ms"), Ok(250));
        assert_eq!(ms("30s"), Ok(30_000));
        assert_eq!(ms("5m"), Ok(300_000));
        assert_eq!(ms("2h"), Ok(7_200_000));
        assert_eq!(ms("1d"), Ok(86_400_000));
        assert_eq!(ms("0s"), Ok(0));
        assert_eq!(ms(" 10 s "), Ok(10_000));
        assert_eq!(ms("1h 30m"), Ok(5_400_000));
        assert_eq!(ms("5min"), Ok(300_000));
        assert_eq!(
            ms("5 parsecs"),
            Err(
                "\"5 parsecs\" is not a duration (unknown time unit \"parsecs\", supported units: \
                 ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); \
                 durations take ms, s, m (minutes), h or d, e.g. \"30s\" or \"1h 30m\""
                    .into()
            )
        );
        assert!(ms("30").unwrap_err().starts_with("\"30\" has no unit"));
        assert!(ms("-1s").unwrap_err().contains("is not a duration"));
        assert!(ms("s").unwrap_err().contains("is not a duration"));
        assert!(ms("").unwrap_err().contains("is not a duration"));
        assert!(
            ms("99999999999999999999d")
                .unwrap_err()
                .contains("is not a duration")
        );
        assert!(
            ms("18446744073709551615ms")
                .unwrap_err()
                .contains("too large")
        );
        assert!(ms("11y").unwrap_err().contains("too large"));
    }

    #[test]
    fn sizes_take_decimal_and_binary_units_but_not_ambiguous_ones() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("3kB"), Ok(3_000));
        assert_eq!(parse_size("10B"), Ok(10));
        for bad in ["64M", "64KB", "64mb", "64Mb", "64k"] {
            assert!(
                parse_size(bad).unwrap_err().contains("has an unknown unit"),
                "{bad}"
            );
        }
    }

    #[test]
    fn non_strings_are_refused_with_the_reason() {
        let v = toml::Value::Integer(60);
        assert_eq!(
            duration_value(&v).unwrap_err(),
            "60 has no unit; write a duration as a string with a unit (durations take ms, s, m \
             (minutes), h or d, e.g. \"30s\" or \"1h 30m\")"
        );
        assert!(
            size_value(&toml::Value::Boolean(true))
                .unwrap_err()
                .starts_with("expected a size as a string, found a boolean")
        );
    }

    #[test]
    fn values_format_back_in_their_largest_whole_unit() {
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::ZERO), "0ms");
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(100_000_000), "100MB");
        assert_eq!(format_size(1000), "1kB");
        assert_eq!(format_size(1500), "1500B");
    }
}
