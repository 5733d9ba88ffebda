/**
 * The user-segment engine of any model family, so callers need not care which: GPT-2 models get
 * engine.ts's UserSegmentEngine, LLaMA-family ones (Llama, Qwen2) llama-engine.ts's
 * LlamaUserSegmentEngine. Both satisfy `UserEngine`, the surface a trainer uses. Also the matmul
 * shapes of each family's step, for chooseKernelVariants to time the variants at.
 *
 * Browser-safe (no Node API).
 */
import {
  gpt2ModelOf,
  isLlamaConfig,
  type AnyModel,
  type LoraAdapter,
  type LoraGrads,
  type ModelConfig,
} from '@splitllm/model';
import { UserSegmentEngine, type UserEngineOptions } from './engine';
import type { GpuContext } from './gpu';
import type { HeadStepResult } from './kernels/head';
import { LlamaUserSegmentEngine } from './llama-engine';
import { engineMatmulShapes, type EngineShapes, stepMatmulShapes } from './variants';

/** What both families' engines offer (see UserSegmentEngine for each method's contract). */
export interface UserEngine {
  readonly config: ModelConfig;
  readonly options: UserEngineOptions;
  /** h1 = x_k [batch*seq, D] of a batch of token ids [batch*seq] */
  forward(inputIds: Int32Array): Promise<Float32Array>;
  /** LoRA gradients of the last forward from dL/dh1; they stay on the GPU */
  backward(dh1: Float32Array): void;
  /** one AdamW update from the last backward's gradients */
  step(lr?: number): void;
  /** labels on the device: loss, count and dL/dhL */
  headStep(hL: Float32Array, targets: Int32Array): Promise<HeadStepResult>;
  /** next-token logits [V] from one position's last hidden state [D] */
  headLogits(h: Float32Array): Promise<Float32Array>;
  readGrads(): Promise<LoraGrads>;
  readAdapter(): Promise<LoraAdapter>;
  setAdapter(adapter: LoraAdapter): void;
  finish(): Promise<void>;
  destroy(): void;
  readonly steps: number;
  readonly headChunkRows: number;
}

/** The engine of the model's family (GPT-2 or LLaMA); errors as that engine's create() throws them. */
export async function createUserSegmentEngine(
  gpu: GpuContext,
  model: AnyModel,
  adapter: LoraAdapter,
  o: UserEngineOptions,
): Promise<UserEngine> {
  if (isLlamaConfig(model.config)) return LlamaUserSegmentEngine.create(gpu, model, adapter, o);
  return UserSegmentEngine.create(gpu, gpt2ModelOf(model, 'the GPT-2 user-segment engine'), adapter, o);
}

/**
 * The matmul products of one user-segment step of this config's family (what chooseKernelVariants
 * times; see stepMatmulShapes). LLaMA: q (D -> H hd), k and v (D -> Hkv hd), o (H hd -> D), gate
 * and up (D -> F), down (F -> D); LoRA's widest adapted output is max(H hd, F).
 */
export function engineMatmulShapesOf(c: ModelConfig, batch: number, seq: number, r = 8, blocks = 1): EngineShapes {
  if (!isLlamaConfig(c)) return engineMatmulShapes(c, batch, seq, r, blocks);
  const D = c.hiddenSize;
  const F = c.intermediateSize;
  const Q = c.nHead * c.headDim;
  const KV = c.nKvHead * c.headDim;
  return stepMatmulShapes({
    M: batch * seq,
    D,
    V: c.vocabSize,
    r,
    blocks,
    weights: [
      [D, Q],
      [D, KV],
      [D, KV],
      [Q, D],
      [D, F],
      [D, F],
      [F, D],
    ],
    loraOut: Math.max(Q, F),
  });
}
