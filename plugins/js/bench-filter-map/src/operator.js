// bench-filter-map: the operator `weir bench` runs, in JavaScript. It keeps events whose `value`
// lies in [min, max] and maps it to `value * scale + offset` (by default °C to °F), as
// plugins/bench-filter-map does in Rust, event by event.
import { num, transformer } from 'weir-guest';

export default transformer({
  config: { min: -1000.0, max: 1000.0, scale: 1.8, offset: 32.0 },

  process(event, ctx) {
    const { min, max, scale, offset } = ctx.config;
    const x = num(event.fields.value);
    if (x !== undefined && x >= min && x <= max) {
      event.fields.value = x * scale + offset;
      ctx.emit(event);
    }
  },
});
