export * from './trainers';
export * from './client';
