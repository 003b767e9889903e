"""Native tests of bench-filter-map on the weir_guest harness: ./test (no WebAssembly needed)."""

import unittest

from weir_guest import Event
from weir_guest.testing import Harness

from logic import BenchFilterMap


class BenchFilterMapTests(unittest.TestCase):
    def test_keeps_values_in_range_and_maps_them_as_the_rust_operator_does(self):
        out = Harness.transform(BenchFilterMap, "").run(
            [
                Event("s", 1, {"value": 100.0}),
                Event("s", 2, {"value": -1000.5}),
                Event("s", 3, {"value": -40}),
                Event("s", 4, {"value": 1000.0}),
                Event("s", 5, {"other": 1.0}),
            ]
        )
        self.assertEqual([e["value"] for e in out.events], [212.0, -40.0, 1832.0])
        self.assertEqual([e.ts_ms for e in out.events], [1, 3, 4])


if __name__ == "__main__":
    unittest.main()
