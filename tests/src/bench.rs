//! What the benchmarks (`src/bin/`) share: ids of records upstream, weir's log lines, the clock,
//! the machine, what the OS says of a process, numbers for the report.

use std::collections::HashSet;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::mqtt_client::Message;

/// The record id weir sends as the MQTT 5 user property `weir-id`.
pub fn weir_id(m: &Message) -> Option<&str> {
    m.user_properties
        .iter()
        .find(|(k, _)| k == "weir-id")
        .map(|(_, v)| v.as_str())
}

/// Distinct `weir-id`s among `messages`.
pub fn distinct(messages: &[Message]) -> usize {
    messages
        .iter()
        .filter_map(weir_id)
        .collect::<HashSet<_>>()
        .len()
}

/// The last `n` lines of `text`, indented.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The time of a tracing log line (`2026-11-22T10:45:12.345678Z ...`) in µs since the epoch.
pub fn log_time_us(line: &str) -> Option<u64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm): (i64, i64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let ss: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = (days * 86_400 + hh * 3_600 + mm * 60) as f64 + ss;
    Some((secs * 1e6) as u64)
}

/// The wall clock in µs since the epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The wall clock in ms since the epoch.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// The trimmed stdout of `sh -c cmd` (empty if it fails): for the report's machine line.
pub fn shell(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// `x` rounded to `digits` decimals.
pub fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// CPU time a process has used, user and system (`/proc/<pid>/stat` utime + stime), in seconds;
/// 0 if it cannot be read.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name: state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        rest.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    #[allow(unsafe_code)]
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// A `kB` field of `/proc/<pid>/status` (`"VmRSS:"`, `"VmHWM:"`), in MiB; 0 if it cannot be
/// read.
pub fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// `write_bytes` of `/proc/<process>/io` (`process`: a pid, or `"self"`): what the process
/// caused to be written to storage, in bytes; 0 if it cannot be read.
pub fn write_bytes(process: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{process}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_time_of_a_log_line() {
        let line = "2026-11-22T10:45:12.345678Z  INFO weir::engine: status";
        // date -u -d 2026-11-22T10:45:12Z +%s = 1795344312
        let us = log_time_us(line).unwrap();
        assert!(us.abs_diff(1_795_344_312_345_678) <= 1, "{us}");
        assert_eq!(log_time_us("no time here"), None);
    }
}
