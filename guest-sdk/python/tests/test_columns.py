"""The column typing rule (`weir_guest.columns`), both ways, with every example of the rule."""

import unittest

from weir_guest.columns import field_problem, to_columns, to_rows


def round_trip(rows):
    columns = to_columns(rows)
    return columns, to_rows(columns, len(rows))


class ExamplesOfTheRule(unittest.TestCase):
    def test_ints_then_a_float_make_one_float_column(self):
        columns, back = round_trip([{"rh": 60}, {"rh": 60.5}])
        self.assertEqual(columns, [("rh", "float", [60.0, 60.5])])
        self.assertEqual(back, [{"rh": 60.0}, {"rh": 60.5}])
        self.assertIsInstance(back[0]["rh"], float)

    def test_a_text_among_ints_goes_to_name_hash_text(self):
        columns, back = round_trip([{"rh": 60}, {"rh": "n/a"}, {"rh": 61}])
        self.assertEqual(
            columns, [("rh", "int", [60, None, 61]), ("rh#text", "text", [None, "n/a", None])]
        )
        self.assertEqual(back, [{"rh": 60}, {"rh": "n/a"}, {"rh": 61}])
        self.assertIsInstance(back[0]["rh"], int)

    def test_the_family_seen_first_keeps_the_plain_name(self):
        columns, back = round_trip([{"rh": "n/a"}, {"rh": 60}, {"rh": 60.5}])
        self.assertEqual(
            columns,
            [("rh", "text", ["n/a", None, None]), ("rh#float", "float", [None, 60.0, 60.5])],
        )
        self.assertEqual(back, [{"rh": "n/a"}, {"rh": 60.0}, {"rh": 60.5}])

    def test_a_flag_then_an_int(self):
        columns, back = round_trip([{"ok": True}, {"ok": 1}])
        self.assertEqual(columns, [("ok", "flag", [True, None]), ("ok#int", "int", [None, 1])])
        self.assertEqual(back, [{"ok": True}, {"ok": 1}])
        self.assertIs(back[0]["ok"], True)
        self.assertIsInstance(back[1]["ok"], int)
        self.assertNotIsInstance(back[1]["ok"], bool)


class ColumnsFromEvents(unittest.TestCase):
    def test_ints_stay_ints_and_absent_values_are_none(self):
        self.assertEqual(to_columns([{"n": 1}, {}, {"n": 3}]), [("n", "int", [1, None, 3])])

    def test_a_suffixed_number_column_is_int_until_it_holds_a_float(self):
        columns = to_columns([{"rh": "x"}, {"rh": 1}, {"rh": 2}])
        self.assertEqual(columns[1], ("rh#int", "int", [None, 1, 2]))
        columns = to_columns([{"rh": "x"}, {"rh": 1}, {"rh": 2.5}])
        self.assertEqual(columns[1], ("rh#float", "float", [None, 1.0, 2.5]))

    def test_every_family_gets_its_own_column_and_nothing_is_dropped(self):
        columns = to_columns([{"v": 1}, {"v": "a"}, {"v": False}, {"v": 2.0}])
        self.assertEqual(
            columns,
            [
                ("v", "float", [1.0, None, None, 2.0]),
                ("v#text", "text", [None, "a", None, None]),
                ("v#flag", "flag", [None, None, False, None]),
            ],
        )

    def test_columns_come_in_the_order_fields_are_first_seen(self):
        names = [c[0] for c in to_columns([{"b": 1, "a": "x"}, {"c": True, "b": "y"}])]
        self.assertEqual(names, ["b", "a", "c", "b#text"])

    def test_reserved_names_are_refused_unless_they_hold_their_own_kind(self):
        self.assertIn("reserved", field_problem("rh#int", "n/a"))
        self.assertIn("reserved", field_problem("rh#float", 60))
        self.assertIsNone(field_problem("rh#float", 60.5))
        self.assertIsNone(field_problem("rh#", 1))  # not one of the four kinds
        self.assertIsNone(field_problem("a#b", 1))

    def test_values_no_column_can_hold(self):
        self.assertIn("64-bit", field_problem("n", 2**63))
        self.assertIn("not a float, int, text or flag", field_problem("n", [1]))


class EventsFromColumns(unittest.TestCase):
    def test_a_suffixed_column_keeps_its_name_where_the_event_has_the_plain_one(self):
        # Only a hand-built batch has both in one event.
        columns = [("rh", "text", ["n/a", None]), ("rh#float", "float", [60.5, 61.0])]
        rows = to_rows(columns, 2)
        self.assertEqual(rows, [{"rh": "n/a", "rh#float": 60.5}, {"rh": 61.0}])
        self.assertEqual(to_rows(to_columns(rows), 2), rows)

    def test_a_suffix_that_does_not_match_the_column_kind_is_just_a_name(self):
        self.assertEqual(to_rows([("rh#int", "float", [1.5])], 1), [{"rh#int": 1.5}])

    def test_a_plain_column_after_a_suffixed_one_still_wins_the_name(self):
        columns = [("rh#text", "text", ["n/a", "x"]), ("rh", "int", [60, None])]
        self.assertEqual(to_rows(columns, 2), [{"rh#text": "n/a", "rh": 60}, {"rh": "x"}])

    def test_fields_come_in_column_order(self):
        columns = [("b", "int", [1]), ("a#text", "text", ["x"]), ("c", "flag", [True])]
        self.assertEqual(list(to_rows(columns, 1)[0].items()), [("b", 1), ("a", "x"), ("c", True)])

    def test_a_column_of_the_wrong_length_is_refused(self):
        with self.assertRaisesRegex(ValueError, "column 'x' has 1 values for 2 events"):
            to_rows([("x", "int", [1])], 2)


if __name__ == "__main__":
    unittest.main()
