export * from './model-io';
