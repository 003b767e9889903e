// Typed config: defaults by example, required and optional settings, and the errors weir reports.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { OperatorError, optional, parseConfig, required } from '../src/config.js';

const schema = { field: 'value', factor: 1.0, max: required('number'), into: optional('string'), tags: [], count: required('integer') };

test('defaults fill what the step leaves out; given values win', () => {
  assert.deepEqual(parseConfig(schema, '{"max": 5, "count": 2}'), { field: 'value', factor: 1, max: 5, into: undefined, tags: [], count: 2 });
  assert.deepEqual(parseConfig(schema, '{"max": 5.5, "count": 2, "into": "x", "tags": ["a"], "factor": 3}'), {
    field: 'value', factor: 3, max: 5.5, into: 'x', tags: ['a'], count: 2,
  });
  assert.deepEqual(parseConfig({ a: 1 }, ''), { a: 1 });
  assert.deepEqual(parseConfig({}, '{}'), {});
});

test('defaults are not shared between instances', () => {
  const a = parseConfig({ tags: [] }, '');
  a.tags.push('x');
  assert.deepEqual(parseConfig({ tags: [] }, '').tags, []);
});

test('every mistake is the config error, naming the key', () => {
  const cases = [
    ['{"feild": "x", "max": 1, "count": 1}', 'unknown config key "feild"; expected one of field, factor, max, into, tags, count'],
    ['{"field": 3, "max": 1, "count": 1}', 'config key "field" must be a string, not 3'],
    ['{"max": "5", "count": 1}', 'config key "max" must be a number, not "5"'],
    ['{"max": 1, "count": 1.5}', 'config key "count" must be an integer, not 1.5'],
    ['{"count": 1}', 'missing config key "max" (a number)'],
    ['{"max": 1, "count": 1, "tags": {}}', 'config key "tags" must be an array, not {}'],
    ['[]', 'config must be a table, not []'],
  ];
  for (const [text, message] of cases) {
    assert.throws(() => parseConfig(schema, text), (e) => {
      assert.ok(e instanceof OperatorError);
      assert.deepEqual(e.payload, { tag: 'config', val: message });
      return true;
    });
  }
  assert.throws(() => parseConfig({}, '{"a": 1}'), { message: 'unknown config key "a": this operator takes no config' });
  assert.throws(() => parseConfig({}, '{a'), (e) => e.payload.tag === 'config' && /not valid JSON/.test(e.message));
});
