// Native tests of bench-filter-map on weir-guest's Harness: `bash plugins/js/test plugins/js/bench-filter-map`.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Harness } from 'weir-guest/testing';
import op from '../src/operator.js';

test('keeps values in range and maps them as the Rust operator does', () => {
  const out = Harness.transform(op, '').run([
    { key: 's', tsMs: 1, fields: { value: 100.0 } },
    { key: 's', tsMs: 2, fields: { value: -1000.5 } },
    { key: 's', tsMs: 3, fields: { value: -40n } },
    { key: 's', tsMs: 4, fields: { value: 1000.0 } },
    { key: 's', tsMs: 5, fields: { other: 1.0 } },
  ]);
  assert.deepEqual(out.events.map((e) => e.fields.value), [212.0, -40.0, 1832.0]);
  assert.deepEqual(out.events.map((e) => e.tsMs), [1, 3, 4]);
});
