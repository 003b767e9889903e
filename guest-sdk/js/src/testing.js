// Run an operator natively, in `node --test`, through the same batch conversion its component
// uses (the typing rule both ways, keyed state read and written once per batch), with keys and
// state kept in memory.

import { batchToEvents, eventsToColumns } from './columns.js';
import { decodeJson, encodeJson, Instance } from './instance.js';

const encoder = new TextEncoder();

class MemoryHost {
  constructor() {
    this.keys = []; // id -> text
    this.state = new Map(); // `${key text}\0${name}` -> bytes
    this.logs = [];
  }

  keyName(id) {
    return this.keys[id];
  }

  keyId(name) {
    let id = this.keys.indexOf(name);
    if (id < 0) id = this.keys.push(name) - 1;
    return id;
  }

  stateGet(id, name) {
    return this.state.get(`${this.keys[id]}\0${name}`);
  }

  stateSet(id, name, bytes) {
    this.state.set(`${this.keys[id]}\0${name}`, Uint8Array.from(bytes));
  }

  stateRemove(id, name) {
    this.state.delete(`${this.keys[id]}\0${name}`);
  }

  log(level, message) {
    this.logs.push([level, message]);
  }
}

const configText = (config) => (typeof config === 'string' ? config : JSON.stringify(config ?? {}));

/**
 * An operator configured as a pipeline would configure it (`config`: the step's table as an
 * object, or as JSON text). The constructors throw the `OperatorError` weir would report.
 */
export class Harness {
  constructor(op, config) {
    this.host = new MemoryHost();
    this.instance = new Instance(op, this.host);
    this.instance.init(configText(config));
  }

  static transform(op, config) {
    return new Harness(op, config);
  }

  static decoder(op, config) {
    return new Harness(op, config);
  }

  static aggregator(op, config) {
    return new Harness(op, config);
  }

  /** The parsed config the operator sees (`ctx.config`). */
  get config() {
    return this.instance.config;
  }

  /** Log lines written so far, as `[level, message]`; reading them empties the list. */
  takeLogs() {
    return this.host.logs.splice(0);
  }

  /** A batch of `events` as weir passes it in (columns by the typing rule, key ids). */
  batch(events) {
    const { columns } = eventsToColumns(events);
    return {
      key: Uint32Array.from(events, (e) => this.host.keyId(e.key)),
      tsMs: BigInt64Array.from(events, (e) => BigInt(e.tsMs)),
      columns,
    };
  }

  outcome(output) {
    const events = batchToEvents(output.events, (id) => this.host.keyName(id));
    return { events, rejected: output.rejected.map((r) => [r.index, r.reason]), logs: this.takeLogs() };
  }

  /** Runs one batch of events (`{ key, tsMs, fields }`) through the transformer: `{ events, rejected, logs }`. */
  run(events) {
    return this.outcome(this.instance.transform(this.batch(events)));
  }

  /** Decodes one batch of messages (`{ topic, payload, receivedMs }`, payload a string or bytes). */
  decode(messages) {
    const wit = messages.map((m) => ({
      topic: m.topic ?? '',
      payload: typeof m.payload === 'string' ? encoder.encode(m.payload) : m.payload,
      receivedMs: BigInt(m.receivedMs ?? 0),
    }));
    return this.outcome(this.instance.decode(wit));
  }

  /** Aggregates `events` as one window: creates an accumulator, adds them, finishes. */
  aggregate(events) {
    const [acc] = this.instance.add([this.instance.create()], this.batch(events), new Uint32Array(events.length));
    return this.fields(this.instance.finish([acc])[0]);
  }

  /** Aggregates two parts of a window separately and merges them, as session windows do. */
  aggregateMerged(a, b) {
    const [accA] = this.instance.add([this.instance.create()], this.batch(a), new Uint32Array(a.length));
    const [accB] = this.instance.add([this.instance.create()], this.batch(b), new Uint32Array(b.length));
    return this.fields(this.instance.finish([this.instance.merge(accA, accB)])[0]);
  }

  fields(list) {
    return Object.fromEntries(list.map((f) => [f.name, f.value.val]));
  }

  /** The JSON value stored for `key` under `name`, or undefined. */
  state(key, name) {
    return decodeJson(this.host.state.get(`${key}\0${name}`));
  }

  /** The bytes stored for `key` under `name`, or undefined. */
  stateBytes(key, name) {
    return this.host.state.get(`${key}\0${name}`);
  }

  /** Stores `value` as JSON for `key` under `name`, as an earlier version or batch would have. */
  setState(key, name, value) {
    this.host.state.set(`${key}\0${name}`, encodeJson(value));
  }

  /** Stores raw bytes for `key` under `name`. */
  setStateBytes(key, name, bytes) {
    this.host.state.set(`${key}\0${name}`, Uint8Array.from(bytes));
  }
}
