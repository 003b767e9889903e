//! Raises one frost alert per sensor when its readings stay below a threshold for N readings in a
//! row, and stays quiet until a reading at or above the threshold ends the cold spell.

use weir_guest::prelude::*;

/// Keyed state: how many readings in a row were below the threshold.
const BELOW: &str = "below";
/// Keyed state: whether this cold spell has been alerted already.
const ALERTED: &str = "alerted";

#[operator]
pub struct FrostDetector {
    /// The field holding the temperature.
    #[serde(default = "default_field")]
    field: String,
    /// Readings strictly below this value count as frost.
    #[serde(default)]
    threshold_c: f64,
    /// How many frost readings in a row raise the alert.
    #[serde(default = "default_consecutive")]
    consecutive: u32,
    /// Also emit every input event, not just the alerts.
    #[serde(default)]
    pass_through: bool,
}

fn default_field() -> String {
    "temp".into()
}

fn default_consecutive() -> u32 {
    3
}

impl Transform for FrostDetector {
    fn init(&mut self) -> Result<(), String> {
        if self.consecutive == 0 {
            return Err("consecutive must be at least 1".into());
        }
        Ok(())
    }

    fn process(&mut self, event: Event, ctx: &mut Context) -> Result<(), String> {
        let alert = match event.f64(&self.field) {
            Some(value) if !value.is_nan() => self.observe(&event, value, ctx),
            _ => None,
        };
        if self.pass_through {
            ctx.emit(event);
        }
        if let Some(alert) = alert {
            ctx.emit(alert);
        }
        Ok(())
    }
}

impl FrostDetector {
    /// Records one reading of the event's sensor; returns the alert it raises, if any.
    fn observe(&self, reading: &Event, value: f64, ctx: &mut Context) -> Option<Event> {
        let mut state = ctx.state(&reading.key);
        if value >= self.threshold_c {
            state.remove(BELOW);
            state.remove(ALERTED);
            return None;
        }
        let below = state.get::<u32>(BELOW).unwrap_or(0).saturating_add(1);
        state.set(BELOW, &below);
        if below < self.consecutive || state.get(ALERTED).unwrap_or(false) {
            return None;
        }
        state.set(ALERTED, &true);
        let alert = Event::new(reading.key.clone(), reading.ts_ms)
            .with("alert", "frost")
            .with("readings", i64::from(below))
            .with("value", value);
        Some(alert)
    }
}

weir_guest::export_transform!(FrostDetector);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_guest::testing::Harness;

    fn reading(key: &str, ts_ms: i64, temp: f64) -> Event {
        Event::new(key, ts_ms).with("temp", temp)
    }

    fn alert(key: &str, ts_ms: i64, readings: i64, value: f64) -> Event {
        Event::new(key, ts_ms)
            .with("alert", "frost")
            .with("readings", readings)
            .with("value", value)
    }

    #[test]
    fn alerts_once_per_cold_spell_across_batches() {
        let mut op = Harness::<FrostDetector>::transform("threshold_c = 0.5").unwrap();
        let out = op.run(vec![reading("a", 1, -1.0), reading("a", 2, -2.0)]);
        assert!(out.events.is_empty());

        let out = op.run(vec![reading("a", 3, 0.0), reading("a", 4, -0.5)]);
        assert_eq!(out.events, vec![alert("a", 3, 3, 0.0)]);

        let out = op.run(vec![reading("a", 5, -3.0), reading("a", 6, -4.0)]);
        assert!(out.events.is_empty(), "alerted twice: {:?}", out.events);

        // At the threshold: the spell is over, and the next one is alerted again.
        let out = op.run(vec![
            reading("a", 7, 0.5),
            reading("a", 8, -1.0),
            reading("a", 9, -1.0),
        ]);
        assert!(out.events.is_empty());
        let out = op.run(vec![reading("a", 10, -1.0)]);
        assert_eq!(out.events, vec![alert("a", 10, 3, -1.0)]);
    }

    #[test]
    fn counts_each_sensor_on_its_own() {
        let mut op = Harness::<FrostDetector>::transform("consecutive = 2").unwrap();
        let out = op.run(vec![
            reading("a", 1, -1.0),
            reading("b", 1, -1.0),
            reading("b", 2, 3.0),
        ]);
        assert!(out.events.is_empty());
        let out = op.run(vec![
            reading("b", 3, -1.0),
            reading("a", 2, -2.0),
            reading("b", 4, 1.0),
        ]);
        assert_eq!(out.events, vec![alert("a", 2, 2, -2.0)]);
        assert_eq!(op.state("a", BELOW).as_deref(), Some(&b"2"[..]));
        assert_eq!(op.state("b", BELOW), None);
    }

    #[test]
    fn ignores_events_without_a_reading() {
        let mut op = Harness::<FrostDetector>::transform("consecutive = 2").unwrap();
        let out = op.run(vec![
            reading("a", 1, -1.0),
            Event::new("a", 2).with("humidity", 90.0),
        ]);
        assert!(out.events.is_empty());
        let out = op.run(vec![Event::new("a", 3).with("temp", "n/a")]);
        assert!(out.events.is_empty());
        let out = op.run(vec![reading("a", 4, -1.0)]);
        assert_eq!(out.events, vec![alert("a", 4, 2, -1.0)]);
    }

    #[test]
    fn passes_readings_through_when_asked() {
        let config = "field = \"air\"\nconsecutive = 1\npass_through = true";
        let mut op = Harness::<FrostDetector>::transform(config).unwrap();
        let cold = Event::new("a", 1).with("air", -0.1);
        let other = Event::new("a", 2).with("humidity", 90.0);
        let out = op.run(vec![cold.clone(), other.clone()]);
        assert_eq!(out.events, vec![cold, alert("a", 1, 1, -0.1), other]);
    }

    #[test]
    fn refuses_zero_consecutive_readings() {
        let err = Harness::<FrostDetector>::transform("consecutive = 0").unwrap_err();
        assert_eq!(err, "consecutive must be at least 1");
    }
}
