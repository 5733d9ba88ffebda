export * from './auth';
export * from './request-log';
