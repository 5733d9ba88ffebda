export * from './gpu';
export * from './headless';
