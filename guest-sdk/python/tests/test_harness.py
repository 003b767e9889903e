"""The harness runs operators through the component's loops: emit, reject, state, log, kinds."""

import json
import unittest
from dataclasses import dataclass

from weir_guest import ConfigError, Event, Level, Message, Reject
from weir_guest.testing import Harness


@dataclass
class CountPerSensor:
    field: str = "temp"

    def process(self, event, ctx):
        if event.number(self.field) is None:
            raise Reject(f"no {self.field}")
        state = ctx.state(event.key)
        seen = state.get("seen", 0) + 1
        state.set("seen", seen)
        event["seen"] = seen
        ctx.emit(event)
        if seen == 2:
            ctx.log(Level.INFO, f"{event.key} seen twice")


@dataclass
class Splitter:
    def process(self, event, ctx):
        if event.get("n") == 0:
            return Reject("zero")
        for i in range(event.get("n", 1)):
            ctx.emit(Event(event.key, event.ts_ms + i, {"i": i}))
        if event.get("n") == 3:
            ctx.emit(Event(event.key, 0, {"bad#int": "x"}))


@dataclass
class Csv:
    field: str

    def decode(self, message, ctx):
        parts = message.payload.decode().split(",")
        if len(parts) != 3:
            raise Reject(f"expected key,ts_ms,value in {message.topic}")
        ctx.emit(Event(parts[0], int(parts[1]), {self.field: float(parts[2])}))


@dataclass
class Mean:
    field: str

    def create(self):
        return {"sum": 0.0, "n": 0}

    def add(self, acc, event):
        x = event.number(self.field)
        if x is not None:
            acc["sum"] += x
            acc["n"] += 1

    def merge(self, acc, other):
        return {"sum": acc["sum"] + other["sum"], "n": acc["n"] + other["n"]}

    def finish(self, acc):
        return {"mean": acc["sum"] / acc["n"], "n": acc["n"]} if acc["n"] else {"n": 0}


class TransformTests(unittest.TestCase):
    def test_emits_keeps_state_in_json_and_logs(self):
        op = Harness.transform(CountPerSensor)
        out = op.run([Event("s1", 1, {"temp": 20}), Event("s2", 2, {"temp": 1.5}), Event("s1", 3, {"rh": 5})])
        self.assertEqual([e.fields.get("seen") for e in out.events], [1, 1])
        self.assertEqual(out.rejected, [(2, "no temp")])
        self.assertEqual(op.state("s1", "seen"), b"1")
        out = op.run([Event("s1", 4, {"temp": 21})])
        self.assertEqual(out.events, [Event("s1", 4, {"temp": 21, "seen": 2})])
        self.assertEqual(out.logs, [(Level.INFO, "s1 seen twice")])

    def test_reads_state_another_version_wrote(self):
        op = Harness.transform(CountPerSensor, '{"field": "t"}')
        op.set_state("s1", "seen", json.dumps(41).encode())
        self.assertEqual(op.run([Event("s1", 1, {"t": 0.0})]).events[0]["seen"], 42)
        self.assertEqual(op.state("s1", "seen"), b"42")

    def test_state_is_stored_as_the_rust_sdk_stores_it(self):
        @dataclass
        class Keep:
            def process(self, event, ctx):
                ctx.state(event.key).set("v", {"mean": 1.5, "names": ["é"], "ok": True})
                ctx.state(event.key).set("gone", 1)
                ctx.state(event.key).remove("gone")

        op = Harness.transform(Keep)
        op.run([Event("s1", 0)])
        self.assertEqual(op.state("s1", "v"), '{"mean":1.5,"names":["é"],"ok":true}'.encode())
        self.assertIsNone(op.state("s1", "gone"))

    def test_flat_map_filter_and_rejections(self):
        out = Harness.transform(Splitter).run(
            [Event("a", 10, {"n": 2}), Event("b", 20, {"n": 0}), Event("c", 30, {"n": 3})]
        )
        self.assertEqual([(e.key, e.ts_ms, e.fields) for e in out.events],
                         [("a", 10, {"i": 0}), ("a", 11, {"i": 1})])
        self.assertEqual(out.rejected[0], (1, "zero"))
        self.assertEqual(out.rejected[1][0], 2)  # what it emitted cannot go into a column
        self.assertIn("'bad#int' is reserved", out.rejected[1][1])

    def test_types_change_within_a_batch_without_losing_values(self):
        @dataclass
        class Pass:
            def process(self, event, ctx):
                ctx.emit(event)

        out = Harness.transform(Pass).run(
            [Event("s", 0, {"rh": 60}), Event("s", 1, {"rh": "n/a"}), Event("s", 2, {"rh": 61})]
        )
        self.assertEqual([e.fields for e in out.events], [{"rh": 60}, {"rh": "n/a"}, {"rh": 61}])

    def test_a_bad_config_is_refused(self):
        with self.assertRaisesRegex(ConfigError, "unknown config key 'feild'"):
            Harness.transform(CountPerSensor, {"feild": "x"})

    def test_any_other_exception_fails_the_batch(self):
        @dataclass
        class Broken:
            def process(self, event, ctx):
                raise KeyError("x")

        with self.assertRaises(KeyError):
            Harness.transform(Broken).run([Event("s", 0)])


class DecodeTests(unittest.TestCase):
    def test_decodes_and_rejects_messages(self):
        op = Harness.decoder(Csv, {"field": "temp"})
        out = op.decode([Message("sensors/s1", b"s1,1700000000000,21.5"), Message("sensors/s1", b"garbage")])
        self.assertEqual(out.events, [Event("s1", 1700000000000, {"temp": 21.5})])
        self.assertEqual(out.rejected, [(1, "expected key,ts_ms,value in sensors/s1")])


class AggregateTests(unittest.TestCase):
    def test_aggregates_a_window_and_merges_two(self):
        op = Harness.aggregator(Mean, {"field": "temp"})
        events = [Event("s", 1, {"temp": 1}), Event("s", 2, {"temp": 3.0}), Event("s", 3, {"rh": 1})]
        self.assertEqual(op.aggregate(events), [("mean", 2.0), ("n", 2)])
        self.assertEqual(op.aggregate_merged(events[:1], events[1:]), [("mean", 2.0), ("n", 2)])
        self.assertEqual(op.aggregate([]), [("n", 0)])


if __name__ == "__main__":
    unittest.main()
