// The component (world `transformer`): weir-guest's bridge to the contract, around operator.js.
import { exportTransform } from 'weir-guest/component';
import op from './operator.js';

export const transform = exportTransform(op);
