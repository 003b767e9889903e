// Typed config: an operator declares its settings, the step's JSON config is checked against
// them once, at init, and every mistake is reported as the contract's `config` error.

/** An error that weir receives as the contract's `error` variant: `config`, `bad-input` or `internal`. */
export class OperatorError extends Error {
  constructor(tag, message) {
    super(message);
    this.payload = { tag, val: message };
  }
}

const TYPES = ['number', 'integer', 'string', 'boolean', 'array', 'object'];
const SETTING = Symbol('weir-guest setting');

function setting(type, required) {
  if (!TYPES.includes(type)) throw new TypeError(`a setting's type is one of ${TYPES.join(', ')}, not ${type}`);
  return { [SETTING]: true, type, required };
}

/** A setting that must be given, of `type`: number, integer, string, boolean, array or object. */
export const required = (type) => setting(type, true);

/** A setting that may be left out (it is then `undefined`), of `type`. */
export const optional = (type) => setting(type, false);

function typeOf(value) {
  if (Array.isArray(value)) return 'array';
  if (value === null) return 'null';
  return typeof value;
}

function fits(type, value) {
  if (type === 'integer') return Number.isInteger(value);
  return typeOf(value) === type;
}

/**
 * Reads the step's config (JSON text: "" and "{}" mean all defaults) against `schema`, an
 * object whose values are the defaults (their types are the settings' types) or `required(type)`
 * / `optional(type)`. Returns a fresh object with every setting; throws the `config` error.
 */
export function parseConfig(schema, text) {
  const fail = (message) => {
    throw new OperatorError('config', message);
  };
  let table;
  try {
    table = JSON.parse(text.trim() === '' ? '{}' : text);
  } catch (e) {
    fail(`config is not valid JSON: ${e.message}`);
  }
  if (typeOf(table) !== 'object') fail(`config must be a table, not ${JSON.stringify(table)}`);
  const known = Object.keys(schema);
  for (const name of Object.keys(table)) {
    if (!known.includes(name)) {
      fail(known.length === 0 ? `unknown config key "${name}": this operator takes no config`
        : `unknown config key "${name}"; expected one of ${known.join(', ')}`);
    }
  }
  const config = {};
  for (const [name, spec] of Object.entries(schema)) {
    const declared = spec !== null && typeof spec === 'object' && spec[SETTING];
    const type = declared ? spec.type : typeOf(spec);
    if (!Object.hasOwn(table, name)) {
      if (declared && spec.required) fail(`missing config key "${name}" (${article(type)})`);
      config[name] = declared ? undefined : JSON.parse(JSON.stringify(spec));
      continue;
    }
    const value = table[name];
    if (!fits(type, value)) fail(`config key "${name}" must be ${article(type)}, not ${JSON.stringify(value)}`);
    config[name] = value;
  }
  return config;
}

const article = (type) => (type === 'array' || type === 'integer' || type === 'object' ? `an ${type}` : `a ${type}`);
