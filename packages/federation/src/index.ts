export * from './strategy';
export * from './fedavg';
export * from './registry';
export * from './update-checks';
export * from './train-state';
