// The typing rule (wit/weir-operator.wit, `column`), both ways, on every example it states.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { batchToEvents, eventsToColumns } from '../src/columns.js';

const ev = (fields) => ({ key: 'k', tsMs: 0, fields });
const cols = (...fields) => eventsToColumns(fields.map(ev)).columns;
const col = (name, tag, val) => ({ name, values: { tag, val } });
const back = (columns) => batchToEvents({ key: columns[0].values.val.map(() => 0), tsMs: columns[0].values.val.map(() => 0n), columns }, () => 'k').map((e) => e.fields);

test('ints and floats share a column, float as soon as one value is a float', () => {
  const columns = cols({ rh: 60n }, { rh: 60.5 });
  assert.deepEqual(columns, [col('rh', 'float', [60, 60.5])]);
  assert.deepEqual(back(columns), [{ rh: 60 }, { rh: 60.5 }]);
});

test('an all-int column stays int (BigInt values)', () => {
  const columns = cols({ n: 1n }, {}, { n: -7n });
  assert.deepEqual(columns, [col('n', 'int', [1n, undefined, -7n])]);
  assert.deepEqual(back(columns), [{ n: 1n }, {}, { n: -7n }]);
});

test('a later family goes to name#kind; events read back as they were', () => {
  const columns = cols({ rh: 60n }, { rh: 'n/a' }, { rh: 61n });
  assert.deepEqual(columns, [col('rh', 'int', [60n, undefined, 61n]), col('rh#text', 'text', [undefined, 'n/a', undefined])]);
  assert.deepEqual(back(columns), [{ rh: 60n }, { rh: 'n/a' }, { rh: 61n }]);
});

test('the family seen first keeps the plain name; a suffixed number column turns #float', () => {
  const columns = cols({ rh: 'n/a' }, { rh: 60n }, { rh: 60.5 });
  assert.deepEqual(columns, [col('rh', 'text', ['n/a', undefined, undefined]), col('rh#float', 'float', [undefined, 60, 60.5])]);
  assert.deepEqual(back(columns), [{ rh: 'n/a' }, { rh: 60 }, { rh: 60.5 }]);
});

test('flags first, then an int: ok#int', () => {
  const columns = cols({ ok: true }, { ok: 1n });
  assert.deepEqual(columns, [col('ok', 'flag', [true, undefined]), col('ok#int', 'int', [undefined, 1n])]);
  assert.deepEqual(back(columns), [{ ok: true }, { ok: 1n }]);
});

test('three families of one field: nothing is dropped', () => {
  const fields = [{ x: 1.5 }, { x: 'a' }, { x: false }, { x: 2n }];
  const columns = cols(...fields);
  assert.deepEqual(columns.map((c) => c.name), ['x', 'x#text', 'x#flag']);
  assert.deepEqual(back(columns), [{ x: 1.5 }, { x: 'a' }, { x: false }, { x: 2 }]);
});

test('fields keep column order; null and undefined are no value', () => {
  const columns = cols({ a: 1.0, b: 'x', c: null }, { b: 'y', a: undefined, d: true });
  assert.deepEqual(columns.map((c) => c.name), ['a', 'b', 'd']);
  assert.deepEqual(back(columns).map(Object.keys), [['a', 'b'], ['b', 'd']]);
});

test('a suffixed column keeps its name where the event has the plain one (hand-built batch)', () => {
  const columns = [col('rh#text', 'text', ['a', 'b']), col('rh', 'float', [1, undefined])];
  assert.deepEqual(back(columns), [{ 'rh#text': 'a', rh: 1 }, { rh: 'b' }]);
  // ... and goes back to where it came from.
  const again = eventsToColumns(back(columns).map(ev)).columns;
  assert.deepEqual(again, [col('rh#text', 'text', ['a', 'b']), col('rh', 'float', [1, undefined])]);
});

test('a column named like a kind it does not hold is read under its own name', () => {
  const columns = [col('rh#text', 'float', [1.5])];
  assert.deepEqual(back(columns), [{ 'rh#text': 1.5 }]);
});

test('an event giving one column two values is refused, the others kept', () => {
  const { events, columns, refused } = eventsToColumns([ev({ rh: 1.0 }), ev({ rh: 'x', 'rh#text': 'y' }), ev({ rh: 2.0 })]);
  assert.equal(events.length, 2);
  assert.deepEqual(columns, [col('rh', 'float', [1, 2])]);
  assert.deepEqual(refused, [[1, 'field "rh#text" gives column "rh#text" a second value']]);
});
