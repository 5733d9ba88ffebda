export * from './app';
export * from './edge';
