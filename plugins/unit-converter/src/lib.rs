//! Converts a numeric field from one unit to another (°C to °F, hPa to psi, km/h to m/s, ...).

use weir_guest::prelude::*;

#[operator]
pub struct UnitConverter {
    field: String,
    from: String,
    to: String,
    /// Writes the result to this field instead of overwriting `field`.
    #[serde(default)]
    into: Option<String>,
    #[serde(skip)]
    conversion: Linear,
}

impl Transform for UnitConverter {
    fn init(&mut self) -> Result<(), String> {
        let cannot =
            |why: String| format!("cannot convert {:?} to {:?}: {why}", self.from, self.to);
        let from = unit(&self.from).map_err(cannot)?;
        let to = unit(&self.to).map_err(cannot)?;
        if from.quantity != to.quantity {
            return Err(cannot(format!(
                "{:?} is a {} unit, {:?} a {} unit",
                from.name, from.quantity, to.name, to.quantity
            )));
        }
        self.conversion = from.to_base.then(to.to_base.inverse());
        Ok(())
    }

    fn process(&mut self, mut event: Event, ctx: &mut Context) -> Result<(), String> {
        if let Some(value) = event.get(&self.field) {
            let x = value
                .as_f64()
                .ok_or_else(|| format!("field {:?} is not a number: {value}", self.field))?;
            let target = self.into.as_deref().unwrap_or(&self.field);
            event.set(target, self.conversion.apply(x));
        }
        ctx.emit(event);
        Ok(())
    }
}

weir_guest::export_transform!(UnitConverter);

/// `y = x * scale + offset`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Linear {
    scale: f64,
    offset: f64,
}

impl Default for Linear {
    fn default() -> Self {
        Linear::scale(1.0)
    }
}

impl Linear {
    const fn scale(scale: f64) -> Self {
        Linear { scale, offset: 0.0 }
    }

    fn apply(self, x: f64) -> f64 {
        x * self.scale + self.offset
    }

    /// `self`, then `next`.
    fn then(self, next: Linear) -> Linear {
        Linear {
            scale: self.scale * next.scale,
            offset: self.offset * next.scale + next.offset,
        }
    }

    fn inverse(self) -> Linear {
        Linear {
            scale: 1.0 / self.scale,
            offset: -self.offset / self.scale,
        }
    }
}

struct Unit {
    name: &'static str,
    quantity: &'static str,
    /// From this unit to its quantity's base unit (°C, Pa, m, m/s).
    to_base: Linear,
}

#[rustfmt::skip]
const UNITS: &[Unit] = &[
    Unit { name: "c", quantity: "temperature", to_base: Linear::scale(1.0) },
    Unit { name: "f", quantity: "temperature", to_base: Linear { scale: 5.0 / 9.0, offset: -160.0 / 9.0 } },
    Unit { name: "k", quantity: "temperature", to_base: Linear { scale: 1.0, offset: -273.15 } },
    Unit { name: "pa", quantity: "pressure", to_base: Linear::scale(1.0) },
    Unit { name: "hpa", quantity: "pressure", to_base: Linear::scale(100.0) },
    Unit { name: "kpa", quantity: "pressure", to_base: Linear::scale(1000.0) },
    Unit { name: "bar", quantity: "pressure", to_base: Linear::scale(100_000.0) },
    Unit { name: "psi", quantity: "pressure", to_base: Linear::scale(6_894.757_293_168) },
    Unit { name: "mm", quantity: "length", to_base: Linear::scale(0.001) },
    Unit { name: "cm", quantity: "length", to_base: Linear::scale(0.01) },
    Unit { name: "m", quantity: "length", to_base: Linear::scale(1.0) },
    Unit { name: "in", quantity: "length", to_base: Linear::scale(0.0254) },
    Unit { name: "ft", quantity: "length", to_base: Linear::scale(0.3048) },
    Unit { name: "m_s", quantity: "speed", to_base: Linear::scale(1.0) },
    Unit { name: "km_h", quantity: "speed", to_base: Linear::scale(1.0 / 3.6) },
    Unit { name: "mph", quantity: "speed", to_base: Linear::scale(0.447_04) },
    Unit { name: "kn", quantity: "speed", to_base: Linear::scale(1852.0 / 3600.0) },
];

fn unit(name: &str) -> Result<&'static Unit, String> {
    UNITS.iter().find(|u| u.name == name).ok_or_else(|| {
        let known: Vec<&str> = UNITS.iter().map(|u| u.name).collect();
        format!("unknown unit {name:?} (known: {})", known.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_guest::testing::Harness;

    fn converter(from: &str, to: &str) -> Harness<UnitConverter> {
        Harness::transform(&format!("field = \"x\"\nfrom = \"{from}\"\nto = \"{to}\"")).unwrap()
    }

    fn convert(from: &str, to: &str, x: f64) -> f64 {
        let out = converter(from, to).run(vec![Event::new("s", 0).with("x", x)]);
        out.events[0].f64("x").unwrap()
    }

    fn assert_close(actual: f64, expected: f64) {
        let tolerance = 1e-9 * expected.abs().max(1.0);
        assert!(
            (actual - expected).abs() <= tolerance,
            "{actual} is not {expected}"
        );
    }

    #[test]
    fn converts_temperatures() {
        assert_close(convert("c", "f", 100.0), 212.0);
        assert_close(convert("c", "f", -40.0), -40.0);
        assert_close(convert("f", "c", 32.0), 0.0);
        assert_close(convert("k", "c", 0.0), -273.15);
        assert_close(convert("f", "k", 212.0), 373.15);
    }

    #[test]
    fn converts_pressures_lengths_and_speeds() {
        assert_close(convert("hpa", "kpa", 1013.25), 101.325);
        assert_close(convert("psi", "kpa", 30.0), 206.842_718_795_04);
        assert_close(convert("bar", "psi", 1.0), 14.503_773_773_022);
        assert_close(convert("in", "mm", 1.0), 25.4);
        assert_close(convert("ft", "cm", 1.0), 30.48);
        assert_close(convert("km_h", "m_s", 36.0), 10.0);
        assert_close(convert("mph", "km_h", 60.0), 96.560_64);
        assert_close(convert("kn", "km_h", 1.0), 1.852);
    }

    #[test]
    fn converts_integers_too() {
        let out = converter("c", "f").run(vec![Event::new("s", 0).with("x", 10_i64)]);
        assert_eq!(out.events[0].get("x"), Some(&Value::Float(50.0)));
    }

    #[test]
    fn writes_into_another_field_when_asked() {
        let mut op = Harness::<UnitConverter>::transform(
            "field = \"temp\"\nfrom = \"c\"\nto = \"f\"\ninto = \"temp_f\"",
        )
        .unwrap();
        let out = op.run(vec![Event::new("s", 0).with("temp", 20.0)]);
        let event = &out.events[0];
        assert_eq!(event.f64("temp"), Some(20.0));
        assert_close(event.f64("temp_f").unwrap(), 68.0);
    }

    #[test]
    fn passes_events_without_the_field_through_unchanged() {
        let event = Event::new("s", 7).with("humidity", 40.0);
        let out = converter("c", "f").run(vec![event.clone()]);
        assert_eq!(out.events, vec![event]);
    }

    #[test]
    fn rejects_an_event_whose_field_is_not_a_number() {
        let out = converter("c", "f").run(vec![
            Event::new("s", 0).with("x", "warm"),
            Event::new("s", 1).with("x", "cold"),
        ]);
        let reasons: Vec<_> = out.rejected.iter().map(|(i, r)| (*i, r.as_str())).collect();
        assert_eq!(
            reasons,
            vec![
                (0, "field \"x\" is not a number: \"warm\""),
                (1, "field \"x\" is not a number: \"cold\"")
            ]
        );
        assert!(out.events.is_empty());
    }

    #[test]
    fn refuses_unknown_units_at_load_time() {
        let err =
            Harness::<UnitConverter>::transform("field = \"x\"\nfrom = \"c\"\nto = \"rankine\"")
                .unwrap_err();
        assert!(
            err.starts_with("cannot convert \"c\" to \"rankine\": unknown unit \"rankine\""),
            "{err}"
        );
    }

    #[test]
    fn refuses_units_of_different_quantities_at_load_time() {
        let err = Harness::<UnitConverter>::transform("field = \"x\"\nfrom = \"c\"\nto = \"hpa\"")
            .unwrap_err();
        assert_eq!(
            err,
            "cannot convert \"c\" to \"hpa\": \"c\" is a temperature unit, \"hpa\" a pressure unit"
        );
    }
}
