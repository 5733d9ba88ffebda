/**
 * The model families the system runs, behind one config type: GPT-2 (`Gpt2Config`) and the LLaMA
 * family (`LlamaConfig`: Llama, Qwen2). A directory's `config.json` says which (`model_type`); what
 * every tier needs without caring which is the family's dimensions (`modelDims`).
 */
import { CodedError } from './coded-error';
import { ConfigError, type Gpt2Config, gpt2ConfigToJson, parseGpt2Config } from './config';
import { type LlamaConfig, llamaConfigToJson, parseLlamaConfig } from './llama-config';
import type { Tensor } from './tensor';

export type ModelConfig = Gpt2Config | LlamaConfig;
export type ModelFamily = 'gpt2' | 'llama' | 'qwen2';

/** A model of any family: its config and its (base) weights by Hugging Face name (Gpt2Model, LlamaModel). */
export interface AnyModel {
  config: ModelConfig;
  weights: Map<string, Tensor>;
}

export function isLlamaConfig(c: ModelConfig): c is LlamaConfig {
  return 'hiddenSize' in c;
}

export function modelFamily(c: ModelConfig): ModelFamily {
  return isLlamaConfig(c) ? c.family : 'gpt2';
}

/** What every tier needs of a model whatever its family. */
export interface ModelDims {
  /** the residual stream's width D: what crosses the network per token */
  width: number;
  vocab: number;
  layers: number;
  /** the longest sequence the model takes */
  positions: number;
  /**
   * the id that separates documents and pads short rows: GPT-2's eos, the LLaMA family's first eos
   * (0 when the config names none; pads are never counted as targets)
   */
  padId: number;
  /** the end-of-text ids generation stops at (GPT-2's one eos; the LLaMA family's list, maybe empty) */
  eosIds: number[];
}

export function modelDims(c: ModelConfig): ModelDims {
  return isLlamaConfig(c)
    ? {
        width: c.hiddenSize,
        vocab: c.vocabSize,
        layers: c.nLayer,
        positions: c.maxPositionEmbeddings,
        padId: c.eosTokenIds[0] ?? 0,
        eosIds: [...c.eosTokenIds],
      }
    : {
        width: c.nEmbd,
        vocab: c.vocabSize,
        layers: c.nLayer,
        positions: c.nPositions,
        padId: c.eosTokenId,
        eosIds: [c.eosTokenId],
      };
}

const FAMILY_OF_MODEL_TYPE: Record<string, 'gpt2' | 'llama'> = { gpt2: 'gpt2', llama: 'llama', qwen2: 'llama' };

/** A Hugging Face `config.json` of any supported family; another `model_type` is refused by name. */
export function parseModelConfig(json: unknown, file = 'config.json'): ModelConfig {
  const type = (json as { model_type?: unknown } | null)?.model_type;
  // GPT-2 configs written before model_type was required have none
  const family = type === undefined ? 'gpt2' : FAMILY_OF_MODEL_TYPE[String(type)];
  if (!family) {
    throw new ConfigError(
      `${file}: model_type "${String(type)}" is not supported (one of ${Object.keys(FAMILY_OF_MODEL_TYPE).join(', ')})`,
    );
  }
  return family === 'gpt2' ? parseGpt2Config(json) : parseLlamaConfig(json, file);
}

export function modelConfigToJson(c: ModelConfig): Record<string, unknown> {
  return isLlamaConfig(c) ? llamaConfigToJson(c) : gpt2ConfigToJson(c);
}

export class FamilyError extends CodedError<'FAMILY_NOT_SUPPORTED'> {
  constructor(message: string) {
    super('FAMILY_NOT_SUPPORTED', message);
  }
}

/** The model as GPT-2, for a part that runs GPT-2 only; any other family is refused naming `who`. */
export function gpt2ModelOf(model: AnyModel, who: string): { config: Gpt2Config; weights: Map<string, Tensor> } {
  const { config } = model;
  if (isLlamaConfig(config)) {
    throw new FamilyError(`${who} runs GPT-2 models only; this model is of the ${config.family} family`);
  }
  return { config, weights: model.weights };
}
