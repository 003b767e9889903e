// The bridge to weir's WIT contract for transformers and decoders (worlds `transformer` and
// `decoder` of weir:operator@0.2.0): the only module with `weir:operator/...` imports, which
// componentize-js provides when it builds the component. A plugin's glue is:
//
//   import { exportTransform } from 'weir-guest/component';
//   import op from './logic.js';
//   export const transform = exportTransform(op);

import * as keys from 'weir:operator/keys@0.2.0';
import * as state from 'weir:operator/state@0.2.0';
import { log } from 'weir:operator/log@0.2.0';
import { Instance } from './instance.js';

const host = {
  keyName: keys.name,
  keyId: keys.id,
  stateGet: state.get,
  stateSet: state.set,
  stateRemove: state.remove,
  log,
};

/** The `transform` export of a transformer component, for `op` (see `transformer`). */
export function exportTransform(op) {
  const instance = new Instance(op, host);
  return {
    init: (config) => instance.init(config),
    transform: (events) => instance.transform(events),
  };
}

/** The `decode` export of a decoder component, for `op` (see `decoder`). */
export function exportDecode(op) {
  const instance = new Instance(op, host);
  return {
    init: (config) => instance.init(config),
    decode: (messages) => instance.decode(messages),
  };
}
