// The bridge to weir's WIT contract for aggregators (world `aggregator` of weir:operator@0.2.0,
// which has no keyed state): the `weir:operator/...` imports componentize-js provides. A
// plugin's glue is:
//
//   import { exportAggregate } from 'weir-guest/aggregate';
//   import op from './logic.js';
//   export const aggregate = exportAggregate(op);

import * as keys from 'weir:operator/keys@0.2.0';
import { log } from 'weir:operator/log@0.2.0';
import { OperatorError } from './config.js';
import { Instance } from './instance.js';

const noState = () => {
  throw new OperatorError('internal', 'aggregators have no keyed state');
};

/** The `aggregate` export of an aggregator component, for `op` (see `aggregator`). */
export function exportAggregate(op) {
  const instance = new Instance(op, {
    keyName: keys.name,
    keyId: keys.id,
    stateGet: noState,
    stateSet: noState,
    stateRemove: noState,
    log,
  });
  return {
    init: (config) => instance.init(config),
    create: () => instance.create(),
    add: (accumulators, events, group) => instance.add(accumulators, events, group),
    merge: (a, b) => instance.merge(a, b),
    finish: (accumulators) => instance.finish(accumulators),
  };
}
