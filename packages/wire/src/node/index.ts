export * from './auth';
export * from './metrics';
