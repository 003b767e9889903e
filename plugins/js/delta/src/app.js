// The component (world `transformer`): weir-guest's bridge to the contract, around delta.js.
import { exportTransform } from 'weir-guest/component';
import delta from './delta.js';

export const transform = exportTransform(delta);
