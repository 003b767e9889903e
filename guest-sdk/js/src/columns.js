// The one typing rule for columns (wit/weir-operator.wit, `column`), both ways: the contract's
// columnar `batch` to events and back. No WebAssembly here, so node tests it natively.
//
// Values in events: a float is a JS number, an int a BigInt (as the contract's s64 arrives in
// JavaScript), a text a string, a flag a boolean. `null` and `undefined` mean "no value".

const SUFFIX = /^(.*)#(float|int|text|flag)$/;

/** The kind of a value ('float', 'int', 'text' or 'flag'), or undefined if it has none. */
export function kindOf(value) {
  switch (typeof value) {
    case 'number':
      return 'float';
    case 'bigint':
      return 'int';
    case 'string':
      return 'text';
    case 'boolean':
      return 'flag';
    default:
      return undefined;
  }
}

const familyOf = (kind) => (kind === 'float' || kind === 'int' ? 'number' : kind);

const MIN_S64 = -(2n ** 63n);
const MAX_S64 = 2n ** 63n - 1n;

/**
 * Checks one field of an event an operator emits, and returns its kind (undefined for no value).
 * Throws a TypeError saying what is wrong otherwise.
 */
export function checkField(name, value) {
  if (value === undefined || value === null) return undefined;
  const kind = kindOf(value);
  if (kind === undefined) {
    throw new TypeError(
      `field "${name}" is a ${typeof value}: a value is a number (float), a BigInt (int), a string or a boolean`,
    );
  }
  if (kind === 'int' && (value < MIN_S64 || value > MAX_S64)) {
    throw new TypeError(`field "${name}" is ${value}, outside the 64-bit range of an int`);
  }
  const reserved = name.includes('#') && SUFFIX.exec(name);
  if (reserved && familyOf(reserved[2]) !== familyOf(kind)) {
    throw new TypeError(`field "${name}" holds a ${kind}: names ending in #${reserved[2]} are reserved for ${reserved[2]} values`);
  }
  return kind;
}

/**
 * The events of a batch: `{ key, tsMs, fields }` for each, `key` being what `keyName(id)` gives
 * for the event's key id. A value from a column `base#kind` whose values are of that kind is
 * read under `base`, unless the event has a value under `base` already.
 */
export function batchToEvents(batch, keyName) {
  const n = batch.key.length;
  const plain = new Map();
  for (const c of batch.columns) if (!SUFFIX.test(c.name)) plain.set(c.name, c.values.val);
  const named = batch.columns.map((c) => {
    const m = SUFFIX.exec(c.name);
    return m && m[2] === c.values.tag ? { base: m[1], plainValues: plain.get(m[1]) } : undefined;
  });
  const events = new Array(n);
  for (let i = 0; i < n; i++) {
    const fields = {};
    for (let j = 0; j < batch.columns.length; j++) {
      const value = batch.columns[j].values.val[i];
      if (value === undefined || value === null) continue;
      let name = batch.columns[j].name;
      const s = named[j];
      if (s !== undefined) {
        const taken = s.plainValues?.[i] != null || Object.hasOwn(fields, s.base);
        if (!taken) name = s.base;
      }
      fields[name] = value;
    }
    events[i] = { key: keyName(batch.key[i]), tsMs: Number(batch.tsMs[i]), fields };
  }
  return events;
}

/**
 * The columns of `events` (each `{ fields }`, values checked by `checkField`), by the typing
 * rule: the family (number, text, flag) a field shows first keeps its plain name; each other
 * family goes to `name#kind`. A number column is `int` until it holds a float, then `float`.
 * Returns the contract's `column` records, in the order the columns first appear, for the events
 * kept, and the events refused (index and reason): only an event that gives one column two
 * values (`rh: "x"` where rh is a number, beside `"rh#text": "y"`) is.
 */
export function eventsToColumns(events) {
  const n = events.length;
  const first = new Map(); // plain field name -> the family it showed first
  const columns = new Map(); // slot ("rh", "rh#text", "rh#number") -> column
  const kept = [];
  const refused = [];
  for (let i = 0; i < n; i++) {
    const fields = events[i].fields;
    let plain = true;
    for (const name in fields) {
      if (name.includes('#')) {
        plain = false;
        break;
      }
    }
    const at = kept.length;
    if (plain) {
      // No reserved names: no two fields can share a column.
      for (const name in fields) {
        const value = fields[name];
        const kind = kindOf(value);
        if (kind === undefined) continue;
        const family = familyOf(kind);
        let known = first.get(name);
        if (known === undefined) first.set(name, (known = family));
        if (known === family) put(columns, name, name, false, kind, value, at, n);
        else put(columns, `${name}#${family}`, name, true, kind, value, at, n);
      }
    } else {
      const slots = slotsOf(fields, first);
      if (typeof slots === 'string') {
        refused.push([i, slots]);
        continue;
      }
      for (const [slot, base, suffixed, kind, value] of slots) put(columns, slot, base, suffixed, kind, value, at, n);
    }
    kept.push(events[i]);
  }
  const out = [];
  for (const c of columns.values()) {
    c.val.length = kept.length;
    out.push({ name: c.suffixed ? `${c.base}#${c.kind}` : c.base, values: { tag: c.kind, val: c.val } });
  }
  return { events: kept, columns: out, refused };
}

/** The columns an event with reserved names goes to, or why it cannot (`first` left as it was). */
function slotsOf(fields, first) {
  const slots = [];
  const firstHere = [];
  for (const name in fields) {
    const value = fields[name];
    const kind = kindOf(value);
    if (kind === undefined) continue;
    const family = familyOf(kind);
    const reserved = SUFFIX.exec(name);
    let entry;
    if (reserved) {
      entry = [`${reserved[1]}#${family}`, reserved[1], true, kind, value];
    } else {
      if (!first.has(name)) {
        first.set(name, family);
        firstHere.push(name);
      }
      entry = first.get(name) === family ? [name, name, false, kind, value] : [`${name}#${family}`, name, true, kind, value];
    }
    if (slots.some((s) => s[0] === entry[0])) {
      for (const added of firstHere) first.delete(added);
      return `field "${name}" gives column "${entry[0]}" a second value`;
    }
    slots.push(entry);
  }
  return slots;
}

function put(columns, slot, base, suffixed, kind, value, at, n) {
  let c = columns.get(slot);
  if (c === undefined) {
    c = { base, suffixed, kind, val: new Array(n).fill(undefined) };
    columns.set(slot, c);
  }
  if (c.kind === 'int' && kind === 'float') {
    c.kind = 'float';
    for (let k = 0; k < at; k++) if (c.val[k] !== undefined) c.val[k] = Number(c.val[k]);
  }
  c.val[at] = c.kind === 'float' ? Number(value) : value;
}
