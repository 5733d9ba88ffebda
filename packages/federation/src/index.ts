export * from './strategy';
export * from './fedavg';
export * from './robust';
export * from './registry';
export * from './update-checks';
export * from './train-state';
export * from './held-bytes';
