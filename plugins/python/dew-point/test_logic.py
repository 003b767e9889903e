"""Native tests of dew-point on the weir_guest harness: ./test (no WebAssembly needed)."""

import math
import unittest

from weir_guest import ConfigError, Event, Level
from weir_guest.testing import Harness

from logic import DewPoint


def run(events, config=None):
    return Harness.transform(DewPoint, config).run(events)


def dew(temp, rh):
    out = run([Event("s1", 0, {"temp": temp, "humidity": rh})])
    assert out.rejected == [], out.rejected
    return out.events[0]["dew_point"]


class ConfigTests(unittest.TestCase):
    def test_empty_config_means_defaults_and_logs_once(self):
        for config in ("", "{}", None):
            op = Harness.transform(DewPoint, config)
            self.assertEqual(op.operator, DewPoint("temp", "humidity", "dew_point"))
        self.assertEqual(
            op.logs, [(Level.INFO, "dew-point ready: temp=temp, humidity=humidity, into=dew_point")]
        )

    def test_reads_every_key(self):
        op = Harness.transform(DewPoint, {"temperature": "t", "humidity": "rh", "into": "dp"})
        self.assertEqual(op.operator, DewPoint("t", "rh", "dp"))

    def test_rejects_an_unknown_key(self):
        with self.assertRaisesRegex(
            ConfigError, "^unknown config key 'temprature'; expected one of temperature, humidity, into$"
        ):
            Harness.transform(DewPoint, {"temprature": "t"})

    def test_rejects_a_wrong_type_or_an_empty_name(self):
        with self.assertRaisesRegex(ConfigError, "config key 'humidity' must be a string, not 5"):
            Harness.transform(DewPoint, {"humidity": 5})
        with self.assertRaisesRegex(ConfigError, "names must be non-empty"):
            Harness.transform(DewPoint, {"into": ""})

    def test_rejects_overwriting_an_input(self):
        with self.assertRaisesRegex(ConfigError, "into must not name an input"):
            Harness.transform(DewPoint, {"into": "temp"})


class FormulaTests(unittest.TestCase):
    def test_saturated_air_has_its_own_temperature_as_dew_point(self):
        for t in (-20.0, 0.0, 15.5, 40.0):
            self.assertAlmostEqual(dew(t, 100.0), t, places=9)

    def test_known_values(self):
        # Reference values of the Magnus formula with b = 17.62, c = 243.12 °C.
        self.assertAlmostEqual(dew(20.0, 50.0), 9.26, places=2)
        self.assertAlmostEqual(dew(25.0, 60.0), 16.69, places=2)
        self.assertAlmostEqual(dew(0.0, 80.0), -3.04, places=2)

    def test_drier_air_has_a_lower_dew_point(self):
        self.assertLess(dew(20.0, 30.0), dew(20.0, 31.0))


class EventTests(unittest.TestCase):
    def test_computes_events_with_both_readings_and_passes_the_rest(self):
        out = run([
            Event("s1", 1, {"temp": 20.0, "humidity": 50.0}),
            Event("s1", 2, {"humidity": 40.0}),
            Event("s2", 3, {"temp": 25.0}),
            Event("s2", 4, {"temp": 10.0, "humidity": 100}),
        ])
        self.assertEqual(out.rejected, [])
        dews = [e.get("dew_point") for e in out.events]
        self.assertAlmostEqual(dews[0], 9.26, places=2)
        self.assertEqual(dews[1:3], [None, None])
        self.assertAlmostEqual(dews[3], 10.0)
        self.assertEqual([e.ts_ms for e in out.events], [1, 2, 3, 4])

    def test_rejects_humidity_outside_0_to_100(self):
        out = run([Event("s1", i, {"temp": 20.0, "humidity": rh})
                   for i, rh in enumerate([0.0, 100.5, -3.0, math.nan, 50.0])])
        self.assertEqual([i for i, _ in out.rejected], [0, 1, 2, 3])
        self.assertEqual(out.rejected[1][1], "humidity 100.5 % is outside (0, 100]")
        self.assertEqual([e.ts_ms for e in out.events], [4])

    def test_a_bad_humidity_without_temperature_is_not_computed_so_not_rejected(self):
        out = run([Event("s1", 0, {"humidity": 140.0})])
        self.assertEqual((out.rejected, out.events[0].fields), ([], {"humidity": 140.0}))

    def test_rejects_temperatures_the_formula_cannot_take(self):
        out = run([Event("s1", i, {"temp": t, "humidity": 50.0})
                   for i, t in enumerate([math.inf, -250.0, 20.0])])
        self.assertEqual([i for i, _ in out.rejected], [0, 1])
        self.assertIn("outside the range of the Magnus formula", out.rejected[0][1])
        self.assertIn("dew_point", out.events[0])

    def test_reads_ints_and_not_text(self):
        out = run([Event("s1", 0, {"temp": 20, "humidity": 50}), Event("s1", 1, {"temp": "hot", "humidity": 50})])
        self.assertAlmostEqual(out.events[0]["dew_point"], 9.26, places=2)
        self.assertNotIn("dew_point", out.events[1])

    def test_reads_a_field_whose_type_changes_within_a_batch(self):
        # By the typing rule these travel as rh (float), rh#int and rh#text, and read back as rh.
        out = run([Event("s1", i, {"temp": 20.0, "rh": rh}) for i, rh in enumerate([50.5, "n/a", 60])],
                  {"humidity": "rh"})
        self.assertEqual([e.get("dew_point") is not None for e in out.events], [True, False, True])

    def test_replaces_an_existing_output_field(self):
        out = run([Event("s1", 0, {"temp": 20.0, "humidity": 50.0, "dew_point": "old"}),
                   Event("s1", 1, {"temp": 20.0, "dew_point": "old"})])
        self.assertAlmostEqual(out.events[0]["dew_point"], 9.26, places=2)
        self.assertNotIn("dew_point", out.events[1])


if __name__ == "__main__":
    unittest.main()
