export * from './model-io';
export * from './chromium';
export * from './auth';
