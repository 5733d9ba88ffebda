export * from './trainer';
export * from './engines/reference';
export * from './engines/wgsl';
// types only: the wasm engine (and onnxruntime-web) is loaded by createUserTrainer on first use
export type { OnnxWasmOptions } from './engines/wasm';
export * from './create-trainer';
export * from './errors';
export * from './client';
export * from './generate';
