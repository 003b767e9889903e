// One operator instance: the author's functions, called once per event (or message), over the
// contract's batches. It reaches weir through a `host` object, so the same code runs inside a
// component (component.js) and in node tests (testing.js):
//   host.keyName(id), host.keyId(name), host.stateGet(id, name) -> Uint8Array | undefined,
//   host.stateSet(id, name, bytes), host.stateRemove(id, name), host.log(level, message).

import { batchToEvents, checkField, eventsToColumns, kindOf } from './columns.js';
import { OperatorError, parseConfig } from './config.js';

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error'];
const encoder = new TextEncoder();
const utf8 = new TextDecoder();

/** A value as stored state holds it: JSON text in UTF-8, as the Rust SDK stores it. */
export const encodeJson = (value) => encoder.encode(JSON.stringify(value));

/** Stored JSON, or `undefined` if there is none or it is not JSON. */
export function decodeJson(bytes) {
  if (bytes === undefined || bytes.length === 0) return undefined;
  try {
    return JSON.parse(utf8.decode(bytes));
  } catch {
    return undefined;
  }
}

const reasonOf = (e) => (e instanceof Error ? e.message : String(e));

/** The state of one key, read through to weir once per batch and written back at its end. */
class KeyState {
  constructor(cache, id) {
    this.cache = cache;
    this.id = id;
  }

  /** The JSON value stored under `name`, or `undefined`. */
  get(name) {
    return decodeJson(this.cache.get(this.id, name));
  }

  /** Stores `value` (anything JSON.stringify takes) under `name`. */
  set(name, value) {
    this.cache.put(this.id, name, encodeJson(value));
  }

  /** Removes what is stored under `name`. */
  remove(name) {
    this.cache.put(this.id, name, undefined);
  }
}

class StateCache {
  constructor(host) {
    this.host = host;
    this.entries = new Map(); // `${id}\0${name}` -> { id, name, bytes, dirty }
  }

  get(id, name) {
    const slot = `${id}\0${name}`;
    let e = this.entries.get(slot);
    if (e === undefined) {
      e = { id, name, bytes: this.host.stateGet(id, name), dirty: false };
      this.entries.set(slot, e);
    }
    return e.bytes;
  }

  put(id, name, bytes) {
    this.entries.set(`${id}\0${name}`, { id, name, bytes, dirty: true });
  }

  flush() {
    for (const e of this.entries.values()) {
      if (!e.dirty) continue;
      if (e.bytes === undefined) this.host.stateRemove(e.id, e.name);
      else this.host.stateSet(e.id, e.name, e.bytes);
    }
    this.entries.clear();
  }
}

/** What an operator is given with each event: its config, emit, keyed state and the log. */
export class Context {
  constructor(instance) {
    this.config = instance.config;
    this._instance = instance;
    this._emitted = [];
    this._origin = [];
    this._index = -1;
  }

  /** Sends `event` (`{ key, tsMs, fields }`) on: once to pass it, never to drop it, or more. */
  emit(event) {
    if (this._index < 0) throw new OperatorError('internal', 'emit is called from process or decode only');
    if (typeof event?.key !== 'string') throw new TypeError(`an event's key is a string, not ${typeof event?.key}`);
    if (!Number.isSafeInteger(event.tsMs)) throw new TypeError(`an event's tsMs is an integer number of milliseconds, not ${event.tsMs}`);
    const fields = event.fields ?? {};
    for (const name in fields) checkField(name, fields[name]);
    this._emitted.push({ key: event.key, tsMs: event.tsMs, fields });
    this._origin.push(this._index);
  }

  /** The state weir keeps for `key` (a key's text, as in `event.key`): `get`, `set`, `remove`. */
  state(key) {
    return new KeyState(this._instance.cache, this._instance.keyId(key));
  }

  /** Writes `message` to weir's log at `level` (trace, debug, info, warn or error). */
  log(level, message) {
    if (!LEVELS.includes(level)) throw new TypeError(`a log level is one of ${LEVELS.join(', ')}, not ${level}`);
    this._instance.host.log(level, String(message));
  }
}

function checkBatch(batch) {
  const n = batch.key.length;
  const bad = (message) => {
    throw new OperatorError('bad-input', message);
  };
  if (batch.tsMs.length !== n) bad(`batch has ${n} keys but ${batch.tsMs.length} timestamps`);
  for (const c of batch.columns) {
    if (c.values.val.length !== n) bad(`column "${c.name}" has ${c.values.val.length} values for ${n} events`);
  }
}

function callOnce(what, result) {
  if (result !== null && typeof result?.then === 'function') {
    throw new OperatorError('internal', `${what} returned a Promise: operators are synchronous`);
  }
  return result;
}

/** An operator (`{ config, init, process }`, `decode`, or `create`/`add`/`merge`/`finish`) run over the contract. */
export class Instance {
  constructor(op, host) {
    this.op = op;
    this.host = host;
    this.config = undefined;
    this.cache = new StateCache(host);
    this.names = new Map(); // key id -> text
    this.ids = new Map(); // key text -> id
  }

  keyName(id) {
    let name = this.names.get(id);
    if (name === undefined) {
      name = this.host.keyName(id);
      this.names.set(id, name);
      this.ids.set(name, id);
    }
    return name;
  }

  keyId(name) {
    let id = this.ids.get(name);
    if (id === undefined) {
      id = this.host.keyId(name);
      this.ids.set(name, id);
      this.names.set(id, name);
    }
    return id;
  }

  /** The contract's `init`: parses the config and calls the operator's `init`, if any. */
  init(text) {
    this.config = parseConfig(this.op.config ?? {}, text);
    if (this.op.init === undefined) return;
    try {
      callOnce('init', this.op.init(this.config, new Context(this)));
    } catch (e) {
      throw e instanceof OperatorError ? e : new OperatorError('config', reasonOf(e));
    }
  }

  ready() {
    if (this.config === undefined) throw new OperatorError('internal', 'called before init');
  }

  /** Calls `each(input, ctx)` per input; returns the contract's `output`. */
  run(inputs, each) {
    const ctx = new Context(this);
    const rejected = [];
    for (let i = 0; i < inputs.length; i++) {
      ctx._index = i;
      try {
        callOnce('process', each(inputs[i], ctx));
      } catch (e) {
        if (e instanceof OperatorError) throw e;
        rejected.push({ index: i, reason: reasonOf(e) });
      }
    }
    ctx._index = -1;
    const { events, columns, refused } = eventsToColumns(ctx._emitted);
    for (const [j, reason] of refused) rejected.push({ index: ctx._origin[j], reason });
    this.cache.flush();
    return {
      events: {
        key: Uint32Array.from(events, (e) => this.keyId(e.key)),
        tsMs: BigInt64Array.from(events, (e) => BigInt(e.tsMs)),
        columns,
      },
      rejected,
    };
  }

  /** The contract's `transform`. */
  transform(batch) {
    this.ready();
    checkBatch(batch);
    return this.run(batchToEvents(batch, (id) => this.keyName(id)), this.op.process);
  }

  /** The contract's `decode`. */
  decode(messages) {
    this.ready();
    const inputs = messages.map((m) => ({ topic: m.topic, payload: m.payload, receivedMs: Number(m.receivedMs) }));
    return this.run(inputs, this.op.decode);
  }

  /** The contract's aggregate `create`: an empty accumulator (empty bytes: `create()` when read). */
  create() {
    return new Uint8Array(0);
  }

  readAcc(bytes) {
    if (bytes.length === 0) return this.op.create();
    try {
      return JSON.parse(utf8.decode(bytes));
    } catch (e) {
      throw new OperatorError('internal', `accumulator is not JSON: ${e.message}`);
    }
  }

  writeAcc(acc) {
    try {
      return encodeJson(acc);
    } catch (e) {
      throw new OperatorError('internal', `accumulator does not serialise to JSON: ${e.message}`);
    }
  }

  guard(what, f) {
    try {
      return callOnce(what, f());
    } catch (e) {
      throw e instanceof OperatorError ? e : new OperatorError('internal', `${what}: ${reasonOf(e)}`);
    }
  }

  /** The contract's aggregate `add`. */
  add(accumulators, batch, group) {
    this.ready();
    checkBatch(batch);
    if (group.length !== batch.key.length) {
      throw new OperatorError('bad-input', `batch has ${batch.key.length} events but ${group.length} groups`);
    }
    const accs = Array.from(accumulators, (b) => this.readAcc(b));
    const events = batchToEvents(batch, (id) => this.keyName(id));
    for (let i = 0; i < events.length; i++) {
      const g = group[i];
      if (g >= accs.length) throw new OperatorError('bad-input', `event ${i} is in group ${g} of ${accs.length}`);
      const next = this.guard('add', () => this.op.add(accs[g], events[i], this.config));
      if (next !== undefined) accs[g] = next;
    }
    return accs.map((a) => this.writeAcc(a));
  }

  /** The contract's aggregate `merge`. */
  merge(a, b) {
    this.ready();
    const acc = this.readAcc(a);
    const next = this.guard('merge', () => this.op.merge(acc, this.readAcc(b), this.config));
    return this.writeAcc(next === undefined ? acc : next);
  }

  /** The contract's aggregate `finish`: the result's fields, in order, as the contract's `field`s. */
  finish(accumulators) {
    this.ready();
    return Array.from(accumulators, (bytes) => {
      const acc = this.readAcc(bytes);
      const result = this.guard('finish', () => this.op.finish(acc, this.config)) ?? {};
      const fields = [];
      for (const [name, value] of Object.entries(result)) {
        const kind = this.guard('finish', () => checkField(name, value));
        if (kind !== undefined) fields.push({ name, value: { tag: kind, val: value } });
      }
      return fields;
    });
  }
}

/** Checks that `op` has the functions of its kind, and returns it. */
function define(kind, op, needed) {
  for (const f of needed) {
    if (typeof op?.[f] !== 'function') throw new TypeError(`a ${kind} has a function ${f}`);
  }
  return op;
}

/** A transformer: `{ config?, init?(config, ctx), process(event, ctx) }`. */
export const transformer = (op) => define('transformer', op, ['process']);
/** A decoder: `{ config?, init?(config, ctx), decode(message, ctx) }`. */
export const decoder = (op) => define('decoder', op, ['decode']);
/** An aggregator: `{ config?, init?, create(), add(acc, event, config), merge(acc, other, config), finish(acc, config) }`. */
export const aggregator = (op) => define('aggregator', op, ['create', 'add', 'merge', 'finish']);

export { kindOf };
