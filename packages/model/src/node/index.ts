export * from './model-io';
export * from './llama-io';
