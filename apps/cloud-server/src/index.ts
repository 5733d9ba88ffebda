export * from './app';
export * from './edge-registry';
export * from './errors';
export * from './rounds';
export * from './store';
export * from './versions';
