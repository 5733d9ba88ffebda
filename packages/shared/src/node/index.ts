export * from './model-io';
export * from './chromium';
