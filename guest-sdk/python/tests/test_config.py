"""Typed config: the step's JSON read into an operator's dataclass fields."""

import unittest
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from weir_guest import ConfigError, parse_config


@dataclass
class Limits:
    low: float
    high: float = 100.0


@dataclass
class Op:
    field: str
    min: float = 0.0
    every: int = 1
    strict: bool = False
    label: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    limits: Optional[Limits] = None
    units: Dict[str, str] = field(default_factory=dict)
    seen: int = field(default=0, init=False)  # not config: state of the instance

    def init(self):
        if not self.field:
            raise ValueError("field must not be empty")


class ConfigTests(unittest.TestCase):
    def test_reads_every_type_and_applies_defaults(self):
        op = parse_config(
            Op,
            '{"field": "rh", "min": 5, "strict": true, "label": "x", "tags": ["a"],'
            ' "limits": {"low": -1}, "units": {"rh": "%"}}',
        )
        self.assertEqual(op, Op("rh", 5.0, 1, True, "x", ["a"], Limits(-1.0, 100.0), {"rh": "%"}))
        self.assertIsInstance(op.min, float)

    def test_empty_config_is_an_empty_table(self):
        @dataclass
        class NoConfig:
            pass

        for text in ("", "  ", "{}"):
            self.assertEqual(parse_config(NoConfig, text), NoConfig())

    def test_unknown_key(self):
        with self.assertRaisesRegex(
            ConfigError,
            r"^unknown config key 'feild'; expected one of field, min, every, strict, label, tags, limits, units$",
        ):
            parse_config(Op, '{"feild": "rh"}')
        with self.assertRaisesRegex(ConfigError, "unknown config key 'seen'"):
            parse_config(Op, '{"field": "rh", "seen": 3}')
        with self.assertRaisesRegex(ConfigError, "unknown config key 'limits.hi'"):
            parse_config(Op, '{"field": "rh", "limits": {"low": 1, "hi": 2}}')

    def test_missing_key(self):
        with self.assertRaisesRegex(ConfigError, "^missing config key 'field'$"):
            parse_config(Op, "{}")
        with self.assertRaisesRegex(ConfigError, "^missing config key 'limits.low'$"):
            parse_config(Op, '{"field": "rh", "limits": {}}')

    def test_wrong_types(self):
        cases = [
            ('{"field": 5}', "config key 'field' must be a string, not 5"),
            ('{"field": "rh", "min": "low"}', "config key 'min' must be a number, not 'low'"),
            ('{"field": "rh", "every": 1.5}', "config key 'every' must be an integer, not 1.5"),
            ('{"field": "rh", "every": true}', "config key 'every' must be an integer, not True"),
            ('{"field": "rh", "strict": 1}', "config key 'strict' must be true or false, not 1"),
            ('{"field": "rh", "tags": "a"}', "config key 'tags' must be a list, not 'a'"),
            ('{"field": "rh", "tags": [1]}', r"config key 'tags\[0\]' must be a string, not 1"),
        ]
        for text, message in cases:
            with self.subTest(text), self.assertRaisesRegex(ConfigError, message):
                parse_config(Op, text)

    def test_init_refuses_a_config(self):
        with self.assertRaisesRegex(ConfigError, "^field must not be empty$"):
            parse_config(Op, '{"field": ""}')

    def test_not_a_table_or_not_json(self):
        with self.assertRaisesRegex(ConfigError, "must be a table, not list"):
            parse_config(Op, "[1]")
        with self.assertRaisesRegex(ConfigError, "not valid JSON"):
            parse_config(Op, "{field")


if __name__ == "__main__":
    unittest.main()
