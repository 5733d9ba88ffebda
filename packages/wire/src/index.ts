export * from './frame';
export * from './manifest';
export * from './http';
