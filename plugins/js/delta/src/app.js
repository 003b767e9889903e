// The delta operator as a weir transformer component (world `transformer`): thin glue between
// the WIT contract and `delta.js`, which holds everything worth testing. componentize-js
// provides the imports as modules named after the interfaces, and exports the `transform`
// interface from the object of that name.

import * as state from 'weir:operator/state@0.2.0';
import { log } from 'weir:operator/log@0.2.0';
import { OperatorError, parseConfig, transformBatch } from './delta.js';

// One instance serves one pipeline step: its config lives here between calls.
let config;

export const transform = {
  init(text) {
    config = parseConfig(text); // throws the `config` error
    log('info', `delta ready: field=${config.field}, into=${config.into}`);
  },

  transform(events) {
    if (config === undefined) throw new OperatorError('internal', 'called before init');
    return transformBatch(config, events, state);
  },
};
