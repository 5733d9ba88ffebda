export * from './trainers';
export * from './client';
export * from './generate';
