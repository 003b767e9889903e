//! What a window step computes and how it treats time, and the checks a configuration must pass
//! before a [`super::Windower`] starts.

use serde::{Deserialize, Serialize};

/// The most windows one event may belong to (sliding windows: `size / slide`, rounded up; count
/// windows: `size / slide`, rounded up). Each is an accumulator per key, so a tiny slide is a
/// memory and time cost per event; the limit keeps it within what a gateway can carry.
pub const MAX_WINDOWS_PER_EVENT: u64 = 1000;

/// The output name reserved for the error marker of a failed custom aggregate.
pub const ERROR_OUTPUT: &str = "error";

/// A window step: the windows, the time rules and the aggregates.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowConfig {
    pub kind: WindowKind,
    /// How far a source's events may arrive out of order: its watermark is the newest event time
    /// it sent minus this.
    pub out_of_orderness_ms: i64,
    /// A source silent for this long (gateway clock) stops holding the watermark back.
    pub idle_timeout_ms: i64,
    /// How long (in event time, past a window's end) a fired window is kept and updated by late
    /// events.
    pub allowed_lateness_ms: i64,
    /// Events stamped further than this ahead of the gateway clock are diverted.
    pub max_future_skew_ms: i64,
    /// The built-in aggregates, in output order.
    pub aggregates: Vec<AggregateSpec>,
}

/// The shape of the windows. Time windows are half-open, `[start, end)`, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WindowKind {
    /// Back-to-back windows of `size_ms`, starting at `offset_ms` past every multiple of the size
    /// (since the epoch).
    Tumbling { size_ms: i64, offset_ms: i64 },
    /// Windows of `size_ms` starting every `slide_ms` (plus `offset_ms`); an event belongs to
    /// each window that covers it.
    Sliding {
        size_ms: i64,
        slide_ms: i64,
        offset_ms: i64,
    },
    /// Runs of a key's events with no gap of `gap_ms` or more between them.
    Session { gap_ms: i64 },
    /// `size` events of a key, in arrival order; a new window every `slide` events (default:
    /// `size`, back to back).
    Count { size: u64, slide: Option<u64> },
}

impl WindowKind {
    /// The kind's name: `tumbling`, `sliding`, `session` or `count`.
    pub fn as_str(&self) -> &'static str {
        match self {
            WindowKind::Tumbling { .. } => "tumbling",
            WindowKind::Sliding { .. } => "sliding",
            WindowKind::Session { .. } => "session",
            WindowKind::Count { .. } => "count",
        }
    }

    /// Whether windows of this kind are bounded in event time (all but count windows).
    pub fn is_time(&self) -> bool {
        !matches!(self, WindowKind::Count { .. })
    }
}

/// A built-in aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AggFn {
    /// Events (with no field), or events that have a value in the field.
    Count,
    /// Sum of a numeric field: an int when every value was an int (and the sum fits), else a
    /// float.
    Sum,
    /// Smallest value of a numeric field, of the type it arrived with.
    Min,
    /// Largest value of a numeric field, of the type it arrived with.
    Max,
    /// Arithmetic mean of a numeric field, a float.
    Mean,
    /// The value of the event with the earliest event time (ties: the first to arrive); any type.
    First,
    /// The value of the event with the latest event time (ties: the last to arrive); any type.
    Last,
    /// Sample standard deviation (divisor n - 1) of a numeric field; needs two values.
    StdDev,
}

impl AggFn {
    /// The function's name as configs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            AggFn::Count => "count",
            AggFn::Sum => "sum",
            AggFn::Min => "min",
            AggFn::Max => "max",
            AggFn::Mean => "mean",
            AggFn::First => "first",
            AggFn::Last => "last",
            AggFn::StdDev => "stddev",
        }
    }
}

/// One aggregate of a window's result: `func` over `field`, reported as `output`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AggregateSpec {
    pub func: AggFn,
    /// The field (column) it reads; only `count` may go without one.
    pub field: Option<String>,
    pub output: String,
}

impl AggregateSpec {
    /// `func` over `field`, reported as `output`.
    pub fn new(func: AggFn, field: &str, output: &str) -> Self {
        AggregateSpec {
            func,
            field: Some(field.to_owned()),
            output: output.to_owned(),
        }
    }

    /// The number of events, reported as `output`.
    pub fn count_events(output: &str) -> Self {
        AggregateSpec {
            func: AggFn::Count,
            field: None,
            output: output.to_owned(),
        }
    }
}

impl WindowConfig {
    /// A config of `kind` with no disorder, lateness or skew allowance and a one-minute idle
    /// timeout; set the fields to change them.
    pub fn new(kind: WindowKind, aggregates: Vec<AggregateSpec>) -> Self {
        WindowConfig {
            kind,
            out_of_orderness_ms: 0,
            idle_timeout_ms: 60_000,
            allowed_lateness_ms: 0,
            max_future_skew_ms: 0,
            aggregates,
        }
    }

    /// Checks the config; the error names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        validate_kind(&self.kind)?;
        not_negative("out_of_orderness_ms", self.out_of_orderness_ms)?;
        positive("idle_timeout_ms", self.idle_timeout_ms)?;
        not_negative("allowed_lateness_ms", self.allowed_lateness_ms)?;
        not_negative("max_future_skew_ms", self.max_future_skew_ms)?;
        for (i, a) in self.aggregates.iter().enumerate() {
            let at = format!("aggregates[{i}]");
            match &a.field {
                None if a.func != AggFn::Count => {
                    return Err(format!("{at}: {} needs a field", a.func.as_str()));
                }
                Some(f) if f.is_empty() => return Err(format!("{at}: field is empty")),
                _ => {}
            }
            if a.output.is_empty() {
                return Err(format!("{at}: output is empty"));
            }
            if a.output == ERROR_OUTPUT {
                return Err(format!(
                    "{at}: output {ERROR_OUTPUT:?} is reserved for custom aggregate errors"
                ));
            }
            if let Some(j) = self.aggregates[..i]
                .iter()
                .position(|b| b.output == a.output)
            {
                return Err(format!(
                    "{at}: output {:?} is already used by aggregates[{j}]",
                    a.output
                ));
            }
        }
        Ok(())
    }
}

fn validate_kind(kind: &WindowKind) -> Result<(), String> {
    match *kind {
        WindowKind::Tumbling { size_ms, offset_ms } => {
            positive("size_ms", size_ms)?;
            offset_within("offset_ms", offset_ms, "size_ms", size_ms)
        }
        WindowKind::Sliding {
            size_ms,
            slide_ms,
            offset_ms,
        } => {
            positive("size_ms", size_ms)?;
            positive("slide_ms", slide_ms)?;
            if slide_ms > size_ms {
                return Err(format!(
                    "slide_ms must not exceed size_ms ({size_ms}), got {slide_ms}"
                ));
            }
            offset_within("offset_ms", offset_ms, "slide_ms", slide_ms)?;
            windows_per_event(size_ms as u64, slide_ms as u64, "size_ms", "slide_ms")
        }
        WindowKind::Session { gap_ms } => positive("gap_ms", gap_ms),
        WindowKind::Count { size, slide } => {
            if size == 0 {
                return Err("size must be greater than 0, got 0".into());
            }
            match slide {
                Some(0) => Err("slide must be greater than 0, got 0".into()),
                Some(slide) if slide > size => {
                    Err(format!("slide must not exceed size ({size}), got {slide}"))
                }
                Some(slide) => windows_per_event(size, slide, "size", "slide"),
                None => Ok(()),
            }
        }
    }
}

fn positive(name: &str, v: i64) -> Result<(), String> {
    if v > 0 {
        Ok(())
    } else {
        Err(format!("{name} must be greater than 0, got {v}"))
    }
}

fn not_negative(name: &str, v: i64) -> Result<(), String> {
    if v >= 0 {
        Ok(())
    } else {
        Err(format!("{name} must not be negative, got {v}"))
    }
}

fn offset_within(name: &str, offset: i64, of: &str, size: i64) -> Result<(), String> {
    if offset.unsigned_abs() < size.unsigned_abs() {
        Ok(())
    } else {
        Err(format!(
            "{name} must be between -{of} and {of} ({size}), exclusive, got {offset}"
        ))
    }
}

fn windows_per_event(
    size: u64,
    slide: u64,
    size_name: &str,
    slide_name: &str,
) -> Result<(), String> {
    let n = size.div_ceil(slide);
    if n <= MAX_WINDOWS_PER_EVENT {
        Ok(())
    } else {
        Err(format!(
            "{slide_name} is too small: {size_name} {size} / {slide_name} {slide} puts every event in {n} windows, more than {MAX_WINDOWS_PER_EVENT}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: WindowKind) -> WindowConfig {
        WindowConfig::new(kind, vec![AggregateSpec::count_events("n")])
    }

    fn error(c: &WindowConfig) -> String {
        c.validate().unwrap_err()
    }

    #[test]
    fn errors_name_the_field_and_the_value() {
        let tumbling = |size_ms, offset_ms| config(WindowKind::Tumbling { size_ms, offset_ms });
        assert_eq!(
            error(&tumbling(0, 0)),
            "size_ms must be greater than 0, got 0"
        );
        assert_eq!(
            error(&tumbling(10, -10)),
            "offset_ms must be between -size_ms and size_ms (10), exclusive, got -10"
        );
        tumbling(10, -9).validate().unwrap();

        let sliding = |size_ms, slide_ms, offset_ms| {
            config(WindowKind::Sliding {
                size_ms,
                slide_ms,
                offset_ms,
            })
        };
        assert_eq!(
            error(&sliding(10, 0, 0)),
            "slide_ms must be greater than 0, got 0"
        );
        assert_eq!(
            error(&sliding(10, 11, 0)),
            "slide_ms must not exceed size_ms (10), got 11"
        );
        assert_eq!(
            error(&sliding(10, 4, 4)),
            "offset_ms must be between -slide_ms and slide_ms (4), exclusive, got 4"
        );
        assert_eq!(
            error(&sliding(3_600_000, 1000, 0)),
            "slide_ms is too small: size_ms 3600000 / slide_ms 1000 puts every event in 3600 windows, more than 1000"
        );
        sliding(10, 4, -3).validate().unwrap();

        assert_eq!(
            error(&config(WindowKind::Session { gap_ms: -5 })),
            "gap_ms must be greater than 0, got -5"
        );
        let count = |size, slide| config(WindowKind::Count { size, slide });
        assert_eq!(error(&count(0, None)), "size must be greater than 0, got 0");
        assert_eq!(
            error(&count(3, Some(0))),
            "slide must be greater than 0, got 0"
        );
        assert_eq!(
            error(&count(3, Some(4))),
            "slide must not exceed size (3), got 4"
        );
        count(3, Some(2)).validate().unwrap();
    }

    #[test]
    fn time_settings_and_aggregates_are_checked() {
        let base = config(WindowKind::Session { gap_ms: 10 });
        let with = |f: &dyn Fn(&mut WindowConfig)| {
            let mut c = base.clone();
            f(&mut c);
            c.validate()
        };
        assert_eq!(
            with(&|c| c.out_of_orderness_ms = -1).unwrap_err(),
            "out_of_orderness_ms must not be negative, got -1"
        );
        assert_eq!(
            with(&|c| c.idle_timeout_ms = 0).unwrap_err(),
            "idle_timeout_ms must be greater than 0, got 0"
        );
        assert_eq!(
            with(&|c| c.allowed_lateness_ms = -2).unwrap_err(),
            "allowed_lateness_ms must not be negative, got -2"
        );
        assert_eq!(
            with(&|c| c.max_future_skew_ms = -3).unwrap_err(),
            "max_future_skew_ms must not be negative, got -3"
        );
        let sum_without_field = AggregateSpec {
            func: AggFn::Sum,
            field: None,
            output: "s".into(),
        };
        assert_eq!(
            with(&|c| c.aggregates.push(sum_without_field.clone())).unwrap_err(),
            "aggregates[1]: sum needs a field"
        );
        assert_eq!(
            with(&|c| c.aggregates.push(AggregateSpec::new(AggFn::Max, "", "m"))).unwrap_err(),
            "aggregates[1]: field is empty"
        );
        assert_eq!(
            with(&|c| c.aggregates.push(AggregateSpec::new(AggFn::Max, "t", ""))).unwrap_err(),
            "aggregates[1]: output is empty"
        );
        assert_eq!(
            with(&|c| c.aggregates.push(AggregateSpec::new(AggFn::Max, "t", "n"))).unwrap_err(),
            "aggregates[1]: output \"n\" is already used by aggregates[0]"
        );
        assert_eq!(
            with(&|c| c.aggregates.push(AggregateSpec::count_events("error"))).unwrap_err(),
            "aggregates[1]: output \"error\" is reserved for custom aggregate errors"
        );
        with(&|c| {
            c.aggregates
                .push(AggregateSpec::new(AggFn::Count, "t", "c"))
        })
        .unwrap();
    }
}
