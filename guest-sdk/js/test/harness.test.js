// The operator runtime, through the native Harness: per-event process/decode, rejections,
// keyed state in the Rust SDK's format, logging, aggregators.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { aggregator, decoder, num, OperatorError, required, transformer } from '../src/index.js';
import { Instance } from '../src/instance.js';
import { Harness } from '../src/testing.js';

const ev = (key, tsMs, fields) => ({ key, tsMs, fields });

const scale = transformer({
  config: { field: 'value', factor: 1.0, max: required('number') },
  init(config, ctx) {
    if (config.factor === 0) throw new Error('factor must not be 0');
    ctx.log('info', `scale ready: ${config.field}`);
  },
  process(event, ctx) {
    const x = num(event.fields[ctx.config.field]);
    if (x === undefined) return; // filter
    if (x > ctx.config.max) throw new Error(`${ctx.config.field} ${x} is over ${ctx.config.max}`);
    event.fields[ctx.config.field] = x * ctx.config.factor;
    ctx.emit(event);
  },
});

test('process maps, filters and rejects one event at a time', () => {
  const h = Harness.transform(scale, { field: 't', factor: 2, max: 100 });
  assert.deepEqual(h.takeLogs(), [['info', 'scale ready: t']]);
  const out = h.run([ev('a', 1, { t: 1.5, unit: 'C' }), ev('b', 2, { other: true }), ev('a', 3, { t: 500n }), ev('c', 4, { t: 3n })]);
  assert.deepEqual(out.events, [ev('a', 1, { t: 3, unit: 'C' }), ev('c', 4, { t: 6 })]);
  assert.deepEqual(out.rejected, [[2, 't 500 is over 100']]);
});

test('config errors and init errors are config errors', () => {
  assert.throws(() => Harness.transform(scale, {}), { message: 'missing config key "max" (a number)' });
  assert.throws(() => Harness.transform(scale, { max: 1, factor: 0 }), (e) => e.payload.tag === 'config' && e.message === 'factor must not be 0');
});

test('an emitted event with a bad value rejects its input, naming the field', () => {
  const bad = transformer({ process: (e, ctx) => ctx.emit({ ...e, fields: { when: new Date(0) } }) });
  const h = Harness.transform(bad, '');
  const out = h.run([ev('a', 1, {})]);
  assert.deepEqual(out.events, []);
  assert.equal(out.rejected[0][0], 0);
  assert.match(out.rejected[0][1], /field "when" is a object/);
});

test('an OperatorError fails the whole batch; an async process is refused', () => {
  const whole = transformer({ process() { throw new OperatorError('bad-input', 'no'); } });
  assert.throws(() => Harness.transform(whole).run([ev('a', 1, {})]), { message: 'no' });
  const later = transformer({ async process() {} });
  assert.throws(() => Harness.transform(later).run([ev('a', 1, {})]), /returned a Promise/);
});

test('flat-map and new keys', () => {
  const split = transformer({
    process(event, ctx) {
      for (const [name, value] of Object.entries(event.fields)) ctx.emit({ key: `${event.key}/${name}`, tsMs: event.tsMs, fields: { value } });
    },
  });
  const out = Harness.transform(split).run([ev('s', 5, { t: 1.5, rh: 40n })]);
  assert.deepEqual(out.events, [ev('s/t', 5, { value: 1.5 }), ev('s/rh', 5, { value: 40 })]);
});

const counter = transformer({
  process(event, ctx) {
    const state = ctx.state(event.key);
    const seen = (state.get('seen') ?? 0) + 1;
    state.set('seen', seen);
    if (event.fields.reset) state.remove('seen');
    ctx.emit({ ...event, fields: { seen: BigInt(seen) } });
  },
});

test('keyed state carries across batches, as JSON the Rust SDK reads', () => {
  const h = Harness.transform(counter);
  h.setState('b', 'seen', 41);
  const first = h.run([ev('a', 1, {}), ev('b', 2, {}), ev('a', 3, {})]);
  assert.deepEqual(first.events.map((e) => e.fields.seen), [1n, 42n, 2n]);
  assert.deepEqual(new TextDecoder().decode(h.stateBytes('a', 'seen')), '2');
  h.run([ev('a', 4, { reset: true })]);
  assert.equal(h.stateBytes('a', 'seen'), undefined);
  h.setStateBytes('c', 'seen', new TextEncoder().encode('not json'));
  assert.deepEqual(h.run([ev('c', 5, {})]).events[0].fields, { seen: 1n });
});

test('state is read once and written once per key and batch', () => {
  const calls = [];
  const store = new Map();
  const names = ['a', 'b'];
  const host = {
    keyName: (id) => names[id],
    keyId: (name) => names.indexOf(name),
    stateGet: (id, name) => (calls.push(['get', id]), store.get(`${id}${name}`)),
    stateSet: (id, name, bytes) => (calls.push(['set', id]), store.set(`${id}${name}`, bytes)),
    stateRemove: () => assert.fail('nothing is removed'),
    log: () => {},
  };
  const instance = new Instance(counter, host);
  instance.init('');
  const out = instance.transform({ key: Uint32Array.of(0, 1, 0, 0), tsMs: BigInt64Array.of(1n, 2n, 3n, 4n), columns: [] });
  assert.deepEqual(calls, [['get', 0], ['get', 1], ['set', 0], ['set', 1]]);
  assert.deepEqual(out.events.columns, [{ name: 'seen', values: { tag: 'int', val: [1n, 1n, 2n, 3n] } }]);
  assert.deepEqual([...out.events.key], [0, 1, 0, 0]);
  assert.deepEqual([...out.events.tsMs], [1n, 2n, 3n, 4n]);
});

test('a malformed batch is the bad-input error', () => {
  const instance = new Instance(counter, { keyName: String, keyId: Number });
  instance.init('');
  const batch = { key: Uint32Array.of(0, 1), tsMs: BigInt64Array.of(1n, 2n), columns: [{ name: 't', values: { tag: 'float', val: [1] } }] };
  assert.throws(() => instance.transform(batch), (e) => e.payload.tag === 'bad-input' && e.message === 'column "t" has 1 values for 2 events');
});

test('decode: one message in, any events out; a throw rejects the message', () => {
  const csv = decoder({
    config: { separator: ',' },
    decode(message, ctx) {
      const [key, t] = new TextDecoder().decode(message.payload).split(ctx.config.separator);
      if (t === undefined) throw new Error(`no reading in ${message.topic}`);
      ctx.emit({ key, tsMs: message.receivedMs, fields: { t: Number(t) } });
    },
  });
  const out = Harness.decoder(csv, { separator: ';' }).decode([
    { topic: 'x/1', payload: 's1;20.5', receivedMs: 7 },
    { topic: 'x/2', payload: 'garbage', receivedMs: 8 },
  ]);
  assert.deepEqual(out.events, [ev('s1', 7, { t: 20.5 })]);
  assert.deepEqual(out.rejected, [[1, 'no reading in x/2']]);
});

const mean = aggregator({
  config: { field: 'value' },
  create: () => ({ sum: 0, n: 0 }),
  add(acc, event, config) {
    const x = num(event.fields[config.field]);
    if (x !== undefined) {
      acc.sum += x;
      acc.n += 1;
    }
  },
  merge: (acc, other) => ({ sum: acc.sum + other.sum, n: acc.n + other.n }),
  finish: (acc) => ({ mean: acc.n === 0 ? undefined : acc.sum / acc.n, n: BigInt(acc.n) }),
});

test('aggregate: add, merge and finish over a JSON accumulator', () => {
  const h = Harness.aggregator(mean, { field: 't' });
  assert.deepEqual(h.aggregate([ev('a', 1, { t: 1.0 }), ev('a', 2, { t: 2n }), ev('a', 3, {})]), { mean: 1.5, n: 2n });
  assert.deepEqual(h.aggregateMerged([ev('a', 1, { t: 1.0 })], [ev('a', 2, { t: 5.0 })]), { mean: 3, n: 2n });
  assert.deepEqual(h.aggregate([]), { n: 0n });
});
