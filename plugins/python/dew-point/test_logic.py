"""Native tests of the dew-point logic: `python3 -m unittest` in this folder (or ./test)."""

import math
import unittest

from logic import Config, ConfigError, dew_point, dew_points, numeric, parse_config, take


class ConfigTests(unittest.TestCase):
    def test_empty_config_means_defaults(self):
        for text in ("", "  ", "{}"):
            self.assertEqual(parse_config(text), Config("temp", "humidity", "dew_point"))

    def test_reads_every_key(self):
        cfg = parse_config('{"temperature": "t", "humidity": "rh", "into": "dp"}')
        self.assertEqual(cfg, Config("t", "rh", "dp"))

    def test_rejects_an_unknown_key(self):
        with self.assertRaisesRegex(ConfigError, "unknown config key 'temprature'"):
            parse_config('{"temprature": "t"}')

    def test_rejects_a_wrong_type(self):
        with self.assertRaisesRegex(ConfigError, "'humidity' must be a non-empty string, not 5"):
            parse_config('{"humidity": 5}')
        with self.assertRaisesRegex(ConfigError, "'into' must be a non-empty string"):
            parse_config('{"into": ""}')

    def test_rejects_what_is_not_a_table(self):
        with self.assertRaisesRegex(ConfigError, "must be a table, not list"):
            parse_config("[1]")
        with self.assertRaisesRegex(ConfigError, "not valid JSON"):
            parse_config("{temp")

    def test_rejects_overwriting_an_input(self):
        with self.assertRaisesRegex(ConfigError, "would overwrite an input column"):
            parse_config('{"into": "temp"}')


class FormulaTests(unittest.TestCase):
    def test_saturated_air_has_its_own_temperature_as_dew_point(self):
        for t in (-20.0, 0.0, 15.5, 40.0):
            self.assertAlmostEqual(dew_point(t, 100.0), t, places=9)

    def test_known_values(self):
        # Reference values of the Magnus formula with b = 17.62, c = 243.12 °C.
        self.assertAlmostEqual(dew_point(20.0, 50.0), 9.26, places=2)
        self.assertAlmostEqual(dew_point(25.0, 60.0), 16.69, places=2)
        self.assertAlmostEqual(dew_point(0.0, 80.0), -3.04, places=2)

    def test_drier_air_has_a_lower_dew_point(self):
        self.assertLess(dew_point(20.0, 30.0), dew_point(20.0, 31.0))


class ColumnTests(unittest.TestCase):
    def test_computes_events_with_both_readings_and_passes_the_rest(self):
        dew, rejected = dew_points([20.0, None, 25.0, 10.0], [50.0, 40.0, None, 100.0])
        self.assertEqual(rejected, [])
        self.assertAlmostEqual(dew[0], 9.26, places=2)
        self.assertEqual(dew[1:3], [None, None])
        self.assertAlmostEqual(dew[3], 10.0)

    def test_rejects_humidity_outside_0_to_100(self):
        dew, rejected = dew_points([20.0, 20.0, 20.0, 20.0], [0.0, 100.5, -3.0, math.nan])
        self.assertEqual([i for i, _ in rejected], [0, 1, 2, 3])
        self.assertEqual(rejected[1][1], "humidity 100.5 % is outside (0, 100]")
        self.assertEqual(dew, [None] * 4)

    def test_a_bad_humidity_without_temperature_is_not_computed_so_not_rejected(self):
        self.assertEqual(dew_points([None], [140.0]), ([None], []))

    def test_rejects_temperatures_the_formula_cannot_take(self):
        dew, rejected = dew_points([math.inf, -250.0, 20.0], [50.0, 50.0, 50.0])
        self.assertEqual([i for i, _ in rejected], [0, 1])
        self.assertIn("outside the range of the Magnus formula", rejected[0][1])
        self.assertIsNotNone(dew[2])

    def test_reads_float_and_int_columns_and_not_text(self):
        cols = [("temp", "float", [1.5, None]), ("rh", "int", [50, None]), ("site", "text", ["a", "b"])]
        self.assertEqual(numeric(cols, "temp", 2), [1.5, None])
        self.assertEqual(numeric(cols, "rh", 2), [50.0, None])
        self.assertEqual(numeric(cols, "site", 2), [None, None])
        self.assertEqual(numeric(cols, "absent", 2), [None, None])

    def test_reads_a_field_split_by_type_across_name_and_name_hash_type(self):
        # weir keeps a field whose type changes within a batch apart, under `name#type`.
        cols = [("rh", "float", [50.5, None, None]), ("rh#int", "int", [None, 60, None]),
                ("rh#text", "text", [None, None, "n/a"])]
        self.assertEqual(numeric(cols, "rh", 3), [50.5, 60.0, None])

    def test_take_keeps_the_given_rows_in_order(self):
        self.assertEqual(take(["a", "b", "c", "d"], [0, 2, 3]), ["a", "c", "d"])
        self.assertEqual(take([], []), [])


if __name__ == "__main__":
    unittest.main()
