/**
 * The 'wgsl' engine: hand-written WGSL on WebGPU (weights, activations, LoRA and the AdamW
 * moments stay on the GPU), for either model family: UserSegmentEngine for GPT-2,
 * LlamaUserSegmentEngine for the LLaMA family (createUserSegmentEngine picks). Browser-safe: the
 * default device comes from navigator.gpu (browserGpu); Node passes `nodeGpu` from ../node/gpu.
 */
import { isLlamaConfig, type AnyModel, type LoraAdapter, type ModelConfig, type TokenBatch } from '@splitllm/model';
import {
  chooseKernelVariants,
  createUserSegmentEngine,
  engineMatmulShapesOf,
  GpuError,
  isSoftwareAdapter,
  requestKernelDevice,
  type GpuContext,
  type KernelVariants,
  type UserEngine,
} from '@splitllm/lora-kernels';
import {
  checkBatch,
  checkDh1,
  checkHeadInputs,
  checkLastHidden,
  checkTrainerInputs,
  checkUserAdapter,
  destroyedError,
  type HeadStepResult,
  type UserTrainer,
  type UserTrainerOptions,
} from '../trainer';

/** The browser's (or Web Worker's) WebGPU device; throws GpuError('NO_WEBGPU') without navigator.gpu. */
export async function browserGpu(): Promise<GpuContext> {
  const gpu = (globalThis as { navigator?: { gpu?: Parameters<typeof requestKernelDevice>[0] } }).navigator?.gpu;
  if (!gpu) throw new GpuError('NO_WEBGPU', 'this browser has no WebGPU (navigator.gpu is missing)');
  return requestKernelDevice(gpu);
}

export class WgslUserTrainer implements UserTrainer {
  readonly kind = 'wgsl' as const;
  private pending = false;
  private destroyed = false;

  private constructor(
    /** the device: it belongs to whoever created it (destroy() leaves it alone) */
    readonly gpu: GpuContext,
    /** the engine itself, for tests and benchmarks (readGrads, finish) */
    readonly engine: UserEngine,
    readonly variants: Required<KernelVariants>,
    readonly description: string,
    private readonly config: ModelConfig,
    private readonly options: UserTrainerOptions,
  ) {}

  /**
   * Uploads the user segment and the adapter; kernel variants suit the adapter (the
   * barrier-free set on software adapters, matmul variants timed at this step's shapes on a
   * GPU). Throws GpuError('DOES_NOT_FIT') when the segment does not fit the device.
   */
  static async create(
    gpu: GpuContext,
    model: AnyModel,
    adapter: LoraAdapter,
    o: UserTrainerOptions,
  ): Promise<WgslUserTrainer> {
    const c = model.config;
    checkTrainerInputs(model, adapter, o);
    const choice = await chooseKernelVariants(gpu, engineMatmulShapesOf(c, o.batch, o.seq, o.lora.r, o.plan.k));
    const engine = await createUserSegmentEngine(gpu, model, adapter, {
      k: o.plan.k,
      lora: { ...o.lora, targets: [...o.lora.targets] },
      batch: o.batch,
      seq: o.seq,
      adamw: { ...o.adamw },
      variants: choice.variants,
    });
    const v = choice.variants;
    const kind = isSoftwareAdapter(gpu.adapter) ? 'software adapter' : 'GPU';
    // the row-norm and attention settings drive rmsnorm and grouped-query attention on the LLaMA family
    const rows = isLlamaConfig(c)
      ? `rmsnorm ${v.layernorm}, gqa-attention ${v.attention}`
      : `layernorm ${v.layernorm}, attention ${v.attention}`;
    // the head's split-K only where timing chose one (software adapters never split)
    const split = v.headSplitK > 1 ? ` (head dy split-K ${v.headSplitK})` : '';
    const matmuls = `matmul ${v.matmul}${split}, low-rank ${v.lowRank}`;
    const description = `wgsl on ${gpu.adapter.name} (${kind}): kernels ${matmuls}, ${rows}`;
    return new WgslUserTrainer(gpu, engine, choice.variants, description, c, o);
  }

  private alive(): void {
    if (this.destroyed) throw destroyedError();
  }

  async forward(batch: TokenBatch): Promise<Float32Array> {
    this.alive();
    checkBatch(this.config, this.options, batch);
    this.pending = false;
    const h1 = await this.engine.forward(batch.inputIds);
    this.pending = true;
    return h1;
  }

  async backwardAndStep(dh1: Float32Array, lr?: number): Promise<void> {
    this.alive();
    // the engine would let a second backward reuse the activations of a forward made with the
    // adapter before the step; refuse it so all engines behave alike
    if (!this.pending) {
      throw new Error('user trainer: backwardAndStep needs a forward first (one backward per forward)');
    }
    checkDh1(this.config, this.options, dh1);
    this.engine.backward(dh1);
    this.engine.step(lr);
    this.pending = false;
  }

  /**
   * Labels on the device: the final norm, the head and the cross-entropy as WGSL (GPT-2:
   * kernels/head.ts; LLaMA: kernels/llama-head.ts).
   */
  async headStep(hL: Float32Array, targets: Int32Array): Promise<HeadStepResult> {
    this.alive();
    checkHeadInputs(this.config, this.options, hL, targets);
    return this.engine.headStep(hL, targets);
  }

  async headLogits(h: Float32Array): Promise<Float32Array> {
    this.alive();
    checkLastHidden(this.config, h);
    return this.engine.headLogits(h);
  }

  async readAdapter(): Promise<LoraAdapter> {
    this.alive();
    return this.engine.readAdapter();
  }

  async setAdapter(adapter: LoraAdapter): Promise<void> {
    this.alive();
    checkUserAdapter(this.config, this.options, adapter);
    this.engine.setAdapter(adapter);
    this.pending = false;
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.engine.destroy();
  }
}
