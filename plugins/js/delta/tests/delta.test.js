// Native tests of the delta logic on weir-guest's Harness: `node --test tests/*.test.js` here (or ./test).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Harness } from 'weir-guest/testing';
import delta from '../src/delta.js';

const ev = (key, tsMs, fields) => ({ key, tsMs, fields });
const deltas = (out, into = 'value_delta') => out.events.map((e) => e.fields[into]);

test('empty config means defaults; into follows field', () => {
  assert.deepEqual(Harness.transform(delta, '').config, { field: 'value', into: 'value_delta' });
  assert.equal(Harness.transform(delta, { field: 'temp' }).config.into, 'temp_delta');
  assert.equal(Harness.transform(delta, { field: 'temp', into: 'dt' }).config.into, 'dt');
  const h = Harness.transform(delta, { field: 'temp' });
  assert.deepEqual(h.takeLogs(), [['info', 'delta ready: field=temp, into=temp_delta']]);
});

test('config errors are the config case of the error variant', () => {
  const cases = [
    [{ feild: 'x' }, 'unknown config key "feild"; expected one of field, into'],
    [{ field: 3 }, 'config key "field" must be a string, not 3'],
    [{ into: '' }, 'config key "into" must not be empty'],
    [[], 'config must be a table, not []'],
    [{ field: 't', into: 't' }, 'into ("t") would overwrite the field it is computed from'],
  ];
  for (const [config, message] of cases) {
    assert.throws(() => Harness.transform(delta, config), (e) => {
      assert.deepEqual(e.payload, { tag: 'config', val: message });
      return true;
    });
  }
});

test('per key, the difference from the previous reading; none for the first', () => {
  const h = Harness.transform(delta, '');
  const out = h.run([ev('a', 1, { value: 20.0 }), ev('b', 2, { value: 5.0 }), ev('a', 3, { value: 21.5 }), ev('a', 4, { value: 21.0 }), ev('b', 5, { value: 4.5 })]);
  assert.deepEqual(deltas(out), [undefined, undefined, 1.5, -0.5, -0.5]);
  assert.deepEqual(out.rejected, []);
  // The input passes through, with the new field after its own.
  assert.deepEqual(Object.keys(out.events[2].fields), ['value', 'value_delta']);
  assert.deepEqual(out.events.map((e) => e.tsMs), [1, 2, 3, 4, 5]);
});

test('state carries across batches and is stored as JSON text', () => {
  const h = Harness.transform(delta, { field: 'temp' });
  h.run([ev('s1', 1, { temp: 21.5 })]);
  assert.equal(new TextDecoder().decode(h.stateBytes('s1', 'previous:temp')), '21.5');
  const out = h.run([ev('s2', 2, { temp: 7.0 }), ev('s1', 3, { temp: 23.0 })]);
  assert.deepEqual(deltas(out, 'temp_delta'), [undefined, 1.5]);
  assert.equal(new TextDecoder().decode(h.stateBytes('s1', 'previous:temp')), '23');
});

test('events without a reading get no delta and keep the previous reading', () => {
  const h = Harness.transform(delta, '');
  const out = h.run([ev('a', 1, { value: 10.0 }), ev('a', 2, {}), ev('a', 3, { value: 12.0 }), ev('b', 4, { value: NaN }), ev('b', 5, { value: 'n/a' })]);
  assert.deepEqual(deltas(out), [undefined, undefined, 2, undefined, undefined]);
  assert.equal(h.stateBytes('b', 'previous:value'), undefined);
});

test('ints are readings too, also where the field changes type within a batch', () => {
  const h = Harness.transform(delta, '');
  assert.deepEqual(deltas(h.run([ev('a', 1, { value: 3n }), ev('a', 2, {}), ev('a', 3, { value: 10n })])), [undefined, undefined, 7]);
  // "n/a" first: the numbers travel in value#float and are read under `value` all the same.
  const mixed = h.run([ev('b', 4, { value: 'n/a' }), ev('b', 5, { value: 2n }), ev('b', 6, { value: 2.5 })]);
  assert.deepEqual(deltas(mixed), [undefined, undefined, 0.5]);
  assert.deepEqual(mixed.events.map((e) => e.fields.value), ['n/a', 2, 2.5]);
});

test('an existing field of the output name is replaced', () => {
  const out = Harness.transform(delta, '').run([ev('a', 1, { value_delta: 99.0, value: 1.0 }), ev('a', 2, { value: 3.0 })]);
  assert.deepEqual(out.events.map((e) => e.fields), [{ value: 1 }, { value: 3, value_delta: 2 }]);
});

test('a stored value that is not a number reads as absent', () => {
  const h = Harness.transform(delta, '');
  h.setState('a', 'previous:value', 'x');
  h.setStateBytes('b', 'previous:value', new TextEncoder().encode('{'));
  h.setState('c', 'previous:value', -0.25);
  assert.deepEqual(deltas(h.run([ev('a', 1, { value: 1.0 }), ev('b', 2, { value: 1.0 }), ev('c', 3, { value: 1.0 })])), [undefined, undefined, 1.25]);
});
