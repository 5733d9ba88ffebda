export * from './model-io';
export * from './llama-io';
export * from './family-io';
