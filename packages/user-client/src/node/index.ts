export * from './gpu';
export * from './headless';
export * from './link';
