export * from './runner';
export * from './segments';
export * from './memory';
