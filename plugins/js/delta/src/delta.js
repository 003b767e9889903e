// The delta operator: per key, the difference between a reading and the key's previous one,
// kept in weir's keyed state so that it carries across batches, restarts and hot swaps.
import { num, optional, transformer } from 'weir-guest';

export default transformer({
  config: { field: 'value', into: optional('string') },

  init(config, ctx) {
    config.into ??= `${config.field}_delta`;
    for (const name of ['field', 'into']) {
      if (config[name] === '') throw new Error(`config key "${name}" must not be empty`);
    }
    if (config.into === config.field) throw new Error(`into ("${config.into}") would overwrite the field it is computed from`);
    ctx.log('info', `delta ready: field=${config.field}, into=${config.into}`);
  },

  process(event, ctx) {
    const { field, into } = ctx.config;
    const x = num(event.fields[field]);
    delete event.fields[into];
    if (Number.isFinite(x)) {
      const state = ctx.state(event.key);
      const before = state.get(`previous:${field}`);
      if (Number.isFinite(before)) event.fields[into] = x - before;
      state.set(`previous:${field}`, x);
    }
    ctx.emit(event);
  },
});
