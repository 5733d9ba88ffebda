export * from './app';
export * from './coordinator';
export * from './store';
