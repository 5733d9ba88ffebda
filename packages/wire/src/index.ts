export * from './codecs';
export * from './errors';
export * from './frame';
export * from './messages';
export * from './manifest';
export * from './http';
export * from './waiter';
