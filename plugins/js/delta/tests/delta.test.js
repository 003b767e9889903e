// Native tests of the delta logic: `node --test tests/*.test.js` in this folder (or ./test).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { decodeReading, encodeReading, numbers, parseConfig, transformBatch } from '../src/delta.js';

/** weir's interned keys, for the tests: each key's id is its index here. */
const KEYS = ['a', 'b', 's1', 's2'];

/** weir's keyed state, in memory: the same get/set as the `state` import (by key id). */
function memoryStore() {
  const map = new Map();
  return {
    map,
    get: (key, name) => map.get(`${key}\u0000${name}`),
    set: (key, name, value) => void map.set(`${key}\u0000${name}`, value),
  };
}

/** A batch as the contract passes it to JavaScript: typed arrays, BigInt times. */
function batch(events, columns) {
  return {
    key: Uint32Array.from(events.map(([k]) => KEYS.indexOf(k))),
    tsMs: BigInt64Array.from(events.map(([, ts]) => BigInt(ts))),
    columns,
  };
}

const float = (name, val) => ({ name, values: { tag: 'float', val } });
const delta = (out, name = 'value_delta') => out.events.columns.find((c) => c.name === name).values.val;

test('empty config means defaults', () => {
  for (const text of ['', ' ', '{}']) {
    assert.deepEqual(parseConfig(text), { field: 'value', into: 'value_delta', stateName: 'previous:value' });
  }
  assert.deepEqual(parseConfig('{"field":"temp"}').into, 'temp_delta');
  assert.deepEqual(parseConfig('{"field":"temp","into":"dt"}').into, 'dt');
});

test('config errors are the config case of the error variant', () => {
  const cases = [
    ['{"feild":"x"}', 'unknown config key "feild"; expected one of field, into'],
    ['{"field":3}', 'config key "field" must be a non-empty string, not 3'],
    ['{"into":""}', 'config key "into" must be a non-empty string, not ""'],
    ['[]', 'config must be a table, not []'],
    ['{"field":"t","into":"t"}', 'into ("t") would overwrite the field it is computed from'],
  ];
  for (const [text, message] of cases) {
    assert.throws(() => parseConfig(text), (e) => {
      assert.deepEqual(e.payload, { tag: 'config', val: message });
      return true;
    });
  }
  assert.throws(() => parseConfig('{field'), (e) => e.payload.tag === 'config' && /not valid JSON/.test(e.payload.val));
});

test('per key, the difference from the previous reading; none for the first', () => {
  const store = memoryStore();
  const out = transformBatch(
    parseConfig(''),
    batch(
      [['a', 1], ['b', 2], ['a', 3], ['a', 4], ['b', 5]],
      [float('value', [20, 5, 21.5, 21, 4.5])],
    ),
    store,
  );
  assert.deepEqual(delta(out), [undefined, undefined, 1.5, -0.5, -0.5]);
  assert.deepEqual(out.rejected, []);
  // The input passes through, with the new column after its own.
  assert.deepEqual(out.events.columns.map((c) => c.name), ['value', 'value_delta']);
  assert.deepEqual([...out.events.tsMs], [1n, 2n, 3n, 4n, 5n]);
});

test('state carries across batches and is stored as JSON text', () => {
  const store = memoryStore();
  const config = parseConfig('{"field":"temp"}');
  transformBatch(config, batch([['s1', 1]], [float('temp', [21.5])]), store);
  assert.equal(new TextDecoder().decode(store.get(KEYS.indexOf('s1'), 'previous:temp')), '21.5');

  const out = transformBatch(config, batch([['s2', 2], ['s1', 3]], [float('temp', [7, 23])]), store);
  assert.deepEqual(delta(out, 'temp_delta'), [undefined, 1.5]);
  assert.equal(new TextDecoder().decode(store.get(KEYS.indexOf('s1'), 'previous:temp')), '23');
});

test('events without a reading get no delta and keep the previous reading', () => {
  const store = memoryStore();
  const out = transformBatch(
    parseConfig(''),
    batch([['a', 1], ['a', 2], ['a', 3], ['b', 4]], [float('value', [10, undefined, 12, NaN])]),
    store,
  );
  assert.deepEqual(delta(out), [undefined, undefined, 2, undefined]);
  assert.equal(store.get(KEYS.indexOf('b'), 'previous:value'), undefined);
});

test('an int column is read as numbers; a batch without the column passes through', () => {
  const store = memoryStore();
  const ints = { name: 'value', values: { tag: 'int', val: [3n, undefined, 10n] } };
  const out = transformBatch(parseConfig(''), batch([['a', 1], ['a', 2], ['a', 3]], [ints]), store);
  assert.deepEqual(delta(out), [undefined, undefined, 7]);

  const none = transformBatch(parseConfig(''), batch([['a', 4]], [float('other', [1])]), store);
  assert.deepEqual(delta(none), [undefined]);
});

test('a field split by type across name and name#type is read whole', () => {
  // weir keeps a field whose type changes within a batch apart, under `name#type`.
  const columns = [
    float('value', [1.5, undefined, undefined]),
    { name: 'value#int', values: { tag: 'int', val: [undefined, 2n, undefined] } },
    { name: 'value#text', values: { tag: 'text', val: [undefined, undefined, 'n/a'] } },
  ];
  assert.deepEqual(numbers(columns, 'value', 3), [1.5, 2, undefined]);
  assert.deepEqual(numbers([{ name: 'value', values: { tag: 'flag', val: [true] } }], 'value', 1), [undefined]);
});

test('an existing column of the output name is replaced', () => {
  const out = transformBatch(
    parseConfig(''),
    batch([['a', 1]], [float('value_delta', [99]), float('value', [1])]),
    memoryStore(),
  );
  assert.deepEqual(out.events.columns.map((c) => c.name), ['value', 'value_delta']);
});

test('a stored value that is not a number reads as absent', () => {
  assert.equal(decodeReading(new TextEncoder().encode('"x"')), undefined);
  assert.equal(decodeReading(new TextEncoder().encode('{')), undefined);
  assert.equal(decodeReading(undefined), undefined);
  assert.equal(decodeReading(encodeReading(-0.25)), -0.25);
});

test('a malformed batch is the bad-input case', () => {
  const bad = batch([['a', 1], ['a', 2]], [float('value', [1])]);
  assert.throws(() => transformBatch(parseConfig(''), bad, memoryStore()), (e) => {
    assert.deepEqual(e.payload, { tag: 'bad-input', val: 'column "value" has 1 values for 2 events' });
    return true;
  });
});
