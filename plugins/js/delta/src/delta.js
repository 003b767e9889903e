// The delta operator's logic, in plain JavaScript: no WebAssembly, no generated bindings.
//
// `app.js` is the thin glue between these functions and the WIT contract; everything here works
// on plain values (batches shaped as the contract's `batch` record) and a `store` with the same
// `get(key, name)` / `set(key, name, bytes)` functions as weir's `state` import, so
// `node --test` tests it natively with a store kept in a Map.

/** An error that the component returns as the contract's `error` variant (`payload`). */
export class OperatorError extends Error {
  constructor(tag, message) {
    super(message);
    this.payload = { tag, val: message };
  }
}

const KNOWN = ['field', 'into'];

/** Reads the step's config table, given as JSON ("" and "{}" mean all defaults). */
export function parseConfig(text) {
  const fail = (message) => {
    throw new OperatorError('config', message);
  };
  let table;
  try {
    table = JSON.parse(text.trim() === '' ? '{}' : text);
  } catch (e) {
    fail(`config is not valid JSON: ${e.message}`);
  }
  if (table === null || typeof table !== 'object' || Array.isArray(table)) {
    fail(`config must be a table, not ${JSON.stringify(table)}`);
  }
  for (const [name, value] of Object.entries(table)) {
    if (!KNOWN.includes(name)) {
      fail(`unknown config key "${name}"; expected one of ${KNOWN.join(', ')}`);
    }
    if (typeof value !== 'string' || value === '') {
      fail(`config key "${name}" must be a non-empty string, not ${JSON.stringify(value)}`);
    }
  }
  const field = table.field ?? 'value';
  const into = table.into ?? `${field}_delta`;
  if (into === field) fail(`into ("${into}") would overwrite the field it is computed from`);
  return { field, into, stateName: `previous:${field}` };
}

/**
 * The readings of field `name` for `n` events: numbers, `undefined` for events without one.
 * Int columns count (their BigInts become numbers); text and flag columns do not. weir stores a
 * field whose type changes within a batch (60, then 60.5) under `name#int` or `name#float`
 * beside `name`, so those columns are read too.
 */
export function numbers(columns, name, n) {
  const wanted = [name, `${name}#float`, `${name}#int`];
  const found = columns.filter((c) => wanted.includes(c.name) && (c.values.tag === 'float' || c.values.tag === 'int'));
  if (found.length === 1 && found[0].values.tag === 'float') return found[0].values.val;
  const out = new Array(n).fill(undefined);
  for (const { values } of found) {
    values.val.forEach((x, i) => {
      if (x !== undefined && x !== null && out[i] === undefined) out[i] = Number(x);
    });
  }
  return out;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The stored form of a reading: its JSON text as UTF-8 ("21.5"), readable from any language. */
export function encodeReading(x) {
  return encoder.encode(JSON.stringify(x));
}

/** A stored reading, or `undefined` if there is none or it is not a finite number. */
export function decodeReading(bytes) {
  if (bytes === undefined) return undefined;
  try {
    const x = JSON.parse(decoder.decode(bytes));
    return typeof x === 'number' && Number.isFinite(x) ? x : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The delta of each event (`key` holds each event's key id): its reading minus the previous
 * reading of the same key, from this batch or, through `store`, from earlier ones; `undefined`
 * for a key's first reading and for events without a finite reading (they leave the previous
 * reading as it is). Reads each key's stored reading once, and stores each key's last reading
 * once, at the end.
 */
export function deltas(key, values, store, stateName) {
  const previous = new Map(); // key id -> last reading (undefined: none)
  const changed = new Set();
  const out = new Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const k = key[i];
    if (!previous.has(k)) previous.set(k, decodeReading(store.get(k, stateName)));
    const x = values[i];
    if (x === undefined || x === null || !Number.isFinite(x)) {
      out[i] = undefined;
      continue;
    }
    const before = previous.get(k);
    out[i] = before === undefined ? undefined : x - before;
    previous.set(k, x);
    changed.add(k);
  }
  for (const k of changed) store.set(k, stateName, encodeReading(previous.get(k)));
  return out;
}

/** Checks that a batch's lists agree in length, or throws the `bad-input` error saying why not. */
export function checkBatch(batch) {
  const n = batch.key.length;
  const bad = (message) => {
    throw new OperatorError('bad-input', message);
  };
  if (batch.tsMs.length !== n) bad(`batch has ${n} keys but ${batch.tsMs.length} timestamps`);
  for (const c of batch.columns) {
    if (c.values.val.length !== n) bad(`column "${c.name}" has ${c.values.val.length} values for ${n} events`);
  }
}

/** The whole transform: the input batch with the delta column added (or replaced). */
export function transformBatch(config, batch, store) {
  checkBatch(batch);
  const n = batch.key.length;
  const values = numbers(batch.columns, config.field, n);
  const delta = deltas(batch.key, values, store, config.stateName);
  const columns = batch.columns.filter((c) => c.name !== config.into);
  columns.push({ name: config.into, values: { tag: 'float', val: delta } });
  return { events: { ...batch, columns }, rejected: [] };
}
