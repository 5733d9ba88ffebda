export * from './app';
export * from './edge-registry';
export * from './errors';
export { GATE_BATCHES, heldoutScorer } from './gate';
export * from './rounds';
export * from './store';
export * from './versions';
