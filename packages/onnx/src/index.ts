export * from './proto';
export * from './graph-builder';
export * from './ops/lora-linear';
export * from './ops/layernorm';
export * from './ops/gelu';
export * from './ops/attention';
export * from './ops/cross-entropy';
export * from './segment-graphs';
