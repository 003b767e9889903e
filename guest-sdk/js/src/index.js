// weir-guest: write weir operators in JavaScript over plain objects. See README.md.

export { aggregator, Context, decoder, transformer } from './instance.js';
export { OperatorError, optional, required } from './config.js';
export { batchToEvents, eventsToColumns, kindOf } from './columns.js';

/** A reading as a JS number: a float as it is, an int (BigInt) converted; otherwise undefined. */
export function num(value) {
  if (typeof value === 'number') return value;
  if (typeof value === 'bigint') return Number(value);
  return undefined;
}
