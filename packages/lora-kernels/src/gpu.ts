/// <reference types="@webgpu/types" />
/**
 * The one place that talks to a GPUDevice: buffers, pipelines (compiled once, cached by key),
 * bind groups, dispatches and read-back. Kernels and the engine go through this class, so the
 * same code runs in a browser Web Worker and in Node (the `webgpu` package, see `node.ts`).
 *
 * Browser-safe: no Node API here.
 */
import { CodedError } from '@splitllm/model';

export class GpuError extends CodedError<'NO_WEBGPU' | 'NO_ADAPTER' | 'DOES_NOT_FIT' | 'GPU_VALIDATION' | 'GPU_LOST'> {}

/** What a kernel needs to know about the device it runs on. */
export interface AdapterSummary {
  /** vendor / architecture / device / description, as the adapter reports them */
  name: string;
  isFallbackAdapter: boolean;
  /** compatibility-mode adapters (OpenGL ES backends) have lower default limits */
  featureLevel: 'core' | 'compatibility';
  maxComputeInvocationsPerWorkgroup: number;
  maxComputeWorkgroupStorageSize: number;
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  maxStorageBuffersPerShaderStage: number;
  maxComputeWorkgroupsPerDimension: number;
}

/**
 * Requests a device with the adapter's own limits for what kernels care about: a compatibility
 * adapter gives 128 invocations per workgroup unless more is asked for.
 */
export async function requestKernelDevice(
  gpu: GPU,
  opts: { featureLevel?: 'core' | 'compatibility'; powerPreference?: GPUPowerPreference } = {},
): Promise<GpuContext> {
  const featureLevel = opts.featureLevel ?? 'core';
  const adapter = await gpu.requestAdapter({
    featureLevel,
    powerPreference: opts.powerPreference ?? 'high-performance',
  } as GPURequestAdapterOptions);
  if (!adapter) throw new GpuError('NO_ADAPTER', `no WebGPU adapter (featureLevel ${featureLevel})`);
  const l = adapter.limits;
  const device = await adapter.requestDevice({
    requiredLimits: {
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupSizeY: l.maxComputeWorkgroupSizeY,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
    },
  });
  const info = adapter.info;
  const name =
    [info.vendor, info.architecture, info.device, info.description].filter((s) => s).join(' / ') || 'unknown adapter';
  const isFallback =
    (info as { isFallbackAdapter?: boolean }).isFallbackAdapter ??
    (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter ??
    false;
  const dl = device.limits;
  return new GpuContext(device, {
    name,
    isFallbackAdapter: isFallback,
    featureLevel,
    maxComputeInvocationsPerWorkgroup: dl.maxComputeInvocationsPerWorkgroup,
    maxComputeWorkgroupStorageSize: dl.maxComputeWorkgroupStorageSize,
    maxStorageBufferBindingSize: dl.maxStorageBufferBindingSize,
    maxBufferSize: dl.maxBufferSize,
    maxStorageBuffersPerShaderStage: dl.maxStorageBuffersPerShaderStage,
    maxComputeWorkgroupsPerDimension: dl.maxComputeWorkgroupsPerDimension,
  });
}

export type TypedData = Float32Array | Int32Array | Uint32Array;

/** One compute dispatch, ready to be recorded into a command encoder. */
export interface Dispatch {
  pipeline: GPUComputePipeline;
  bindGroup: GPUBindGroup;
  workgroups: [number, number?, number?];
}

export class GpuContext {
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private readonly keys = new WeakMap<GPUComputePipeline, string>();
  private lost: string | undefined;

  constructor(
    readonly device: GPUDevice,
    readonly adapter: AdapterSummary,
  ) {
    void device.lost.then((info) => {
      this.lost = info.message || info.reason;
    });
  }

  /** Compiles a WGSL module once per key; compile errors throw with the shader's messages. */
  pipeline(key: string, code: string, entryPoint = 'main'): GPUComputePipeline {
    const cached = this.pipelines.get(key);
    if (cached) return cached;
    const module = this.device.createShaderModule({ code, label: key });
    const pipeline = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint }, label: key });
    this.pipelines.set(key, pipeline);
    this.keys.set(pipeline, key);
    return pipeline;
  }

  /** The key a pipeline was compiled under (its kernel and configuration), for profiles. */
  keyOf(pipeline: GPUComputePipeline): string {
    return this.keys.get(pipeline) ?? 'unknown';
  }

  /** Compiles and awaits validation, so a bad shader throws here instead of failing silently later. */
  async pipelineChecked(key: string, code: string, entryPoint = 'main'): Promise<GPUComputePipeline> {
    if (this.pipelines.has(key)) return this.pipelines.get(key)!;
    this.device.pushErrorScope('validation');
    const module = this.device.createShaderModule({ code, label: key });
    const info = await module.getCompilationInfo();
    const errors = info.messages.filter((m) => m.type === 'error');
    if (errors.length) {
      await this.device.popErrorScope();
      throw new GpuError(
        'GPU_VALIDATION',
        `WGSL ${key}: ${errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join('; ')}`,
      );
    }
    const pipeline = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint }, label: key });
    const err = await this.device.popErrorScope();
    if (err) throw new GpuError('GPU_VALIDATION', `pipeline ${key}: ${err.message}`);
    this.pipelines.set(key, pipeline);
    this.keys.set(pipeline, key);
    return pipeline;
  }

  /** A storage buffer of `bytes` (rounded up to 16), or holding `data`; checks the binding limit. */
  storage(init: number | TypedData, label = 'storage'): GPUBuffer {
    const bytes = typeof init === 'number' ? init : init.byteLength;
    if (bytes > this.adapter.maxStorageBufferBindingSize) {
      throw new GpuError(
        'DOES_NOT_FIT',
        `${label} needs ${bytes} bytes, over this adapter's maxStorageBufferBindingSize ` +
          `${this.adapter.maxStorageBufferBindingSize}`,
      );
    }
    const size = Math.max(16, Math.ceil(bytes / 16) * 16);
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    if (typeof init === 'number') return this.device.createBuffer({ size, usage, label });
    const buf = this.device.createBuffer({ size, usage, label, mappedAtCreation: true });
    const dst =
      init instanceof Float32Array
        ? new Float32Array(buf.getMappedRange())
        : init instanceof Int32Array
          ? new Int32Array(buf.getMappedRange())
          : new Uint32Array(buf.getMappedRange());
    dst.set(init as never);
    buf.unmap();
    return buf;
  }

  /** A uniform buffer from 32-bit words; `f` marks which words are f32 (the rest are u32). */
  uniform(words: number[], f32Words: ReadonlySet<number> = new Set(), label = 'uniform'): GPUBuffer {
    const size = Math.max(16, Math.ceil((words.length * 4) / 16) * 16);
    const buf = this.device.createBuffer({ size, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST, label });
    this.writeUniform(buf, words, f32Words);
    return buf;
  }

  writeUniform(buf: GPUBuffer, words: number[], f32Words: ReadonlySet<number> = new Set()): void {
    const data = new ArrayBuffer(Math.ceil((words.length * 4) / 16) * 16 || 16);
    const u = new Uint32Array(data);
    const f = new Float32Array(data);
    words.forEach((w, i) => {
      if (f32Words.has(i)) f[i] = w;
      else u[i] = w >>> 0;
    });
    this.device.queue.writeBuffer(buf, 0, data);
  }

  write(buf: GPUBuffer, data: TypedData, offsetBytes = 0): void {
    this.device.queue.writeBuffer(buf, offsetBytes, data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
  }

  /** Bindings 0..n-1 of group 0, in the order given. */
  bindGroup(pipeline: GPUComputePipeline, buffers: GPUBuffer[], label?: string): GPUBindGroup {
    return this.device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })),
      label,
    });
  }

  dispatchOf(pipeline: GPUComputePipeline, buffers: GPUBuffer[], workgroups: [number, number?, number?]): Dispatch {
    this.checkWorkgroups(workgroups);
    return { pipeline, bindGroup: this.bindGroup(pipeline, buffers), workgroups };
  }

  /** Throws DOES_NOT_FIT, naming `what`, unless the adapter allows `invocations` per workgroup. */
  requireInvocations(what: string, invocations: number): void {
    const have = this.adapter.maxComputeInvocationsPerWorkgroup;
    if (have < invocations)
      throw new GpuError(
        'DOES_NOT_FIT',
        `${what} needs ${invocations} invocations per workgroup; this adapter allows ${have}`,
      );
  }

  /** Workgroups for a grid-stride loop over `items` in groups of `perGroup`: never over the dispatch limit. */
  gridStrideGroups(items: number, perGroup: number): number {
    return Math.min(ceilDiv(items, perGroup), this.adapter.maxComputeWorkgroupsPerDimension);
  }

  checkWorkgroups(workgroups: [number, number?, number?]): void {
    const max = this.adapter.maxComputeWorkgroupsPerDimension;
    for (const n of workgroups) {
      if (n !== undefined && n > max)
        throw new GpuError('DOES_NOT_FIT', `dispatch of ${n} workgroups exceeds this adapter's limit ${max}`);
    }
  }

  /** Records dispatches into one compute pass (in order; WebGPU orders storage writes between dispatches). */
  record(encoder: GPUCommandEncoder, dispatches: Dispatch[]): void {
    const pass = encoder.beginComputePass();
    for (const d of dispatches) {
      pass.setPipeline(d.pipeline);
      pass.setBindGroup(0, d.bindGroup);
      pass.dispatchWorkgroups(d.workgroups[0], d.workgroups[1] ?? 1, d.workgroups[2] ?? 1);
    }
    pass.end();
  }

  /** Runs dispatches now (one submit). */
  run(dispatches: Dispatch[]): void {
    this.assertAlive();
    const enc = this.device.createCommandEncoder();
    this.record(enc, dispatches);
    this.device.queue.submit([enc.finish()]);
  }

  /** Copies `bytes` of a buffer back to the CPU (waits for all submitted work). */
  async readF32(buf: GPUBuffer, count: number, offsetElems = 0): Promise<Float32Array> {
    return new Float32Array(await this.readBytes(buf, count * 4, offsetElems * 4));
  }

  async readBytes(buf: GPUBuffer, bytes: number, offsetBytes = 0): Promise<ArrayBuffer> {
    this.assertAlive();
    const size = Math.ceil(bytes / 4) * 4;
    const staging = this.device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const enc = this.device.createCommandEncoder();
    enc.copyBufferToBuffer(buf, offsetBytes, staging, 0, size);
    this.device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const out = staging.getMappedRange().slice(0, bytes);
    staging.unmap();
    staging.destroy();
    return out;
  }

  /** Waits until the queue is idle (for timing). */
  async finish(): Promise<void> {
    await this.device.queue.onSubmittedWorkDone();
  }

  private assertAlive(): void {
    if (this.lost !== undefined) throw new GpuError('GPU_LOST', `the GPU device was lost: ${this.lost}`);
  }

  destroy(): void {
    this.device.destroy();
  }
}

/** ceil(a / b) for workgroup counts. */
export function ceilDiv(a: number, b: number): number {
  return Math.floor((a + b - 1) / b);
}
