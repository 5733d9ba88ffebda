export * from './app';
export * from './edge';
export * from './errors';
