/** WGSL kernels and the user-segment engine. Browser-safe; Node's device comes from './node'. */
export * from './gpu';
export * from './engine';
export * from './kernels/matmul';
export * from './kernels/lora-linear';
export * from './kernels/layernorm';
export * from './kernels/gelu';
export * from './kernels/attention';
export * from './kernels/embedding';
export * from './kernels/residual';
export * from './kernels/adamw';
export * from './kernels/head';
export * from './variants';
export * from './kernels/rmsnorm';
export * from './kernels/rope';
export * from './kernels/swiglu';
export * from './kernels/gqa-attention';
