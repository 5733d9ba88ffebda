/**
 * GPT-2 family configuration, read from a Hugging Face `config.json`.
 * Only the fields the math needs are kept; anything that would change the math and that we
 * do not implement (another activation, untied head, ...) is rejected with a clear error.
 */
import { CodedError } from './coded-error';
export interface Gpt2Config {
  vocabSize: number;
  nPositions: number;
  nEmbd: number;
  nLayer: number;
  nHead: number;
  /** MLP hidden width; Hugging Face leaves `n_inner` null for 4 * n_embd. */
  nInner: number;
  layerNormEpsilon: number;
  bosTokenId: number;
  eosTokenId: number;
}

export class ConfigError extends CodedError<'BAD_CONFIG'> {
  constructor(message: string) {
    super('BAD_CONFIG', message);
  }
}

function int(json: Record<string, unknown>, key: string, fallback?: number): number {
  const v = json[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) {
    throw new ConfigError(`config.json: "${key}" must be a positive integer, got ${JSON.stringify(json[key])}`);
  }
  return v;
}

export function parseGpt2Config(json: unknown): Gpt2Config {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new ConfigError('config.json: expected a JSON object');
  }
  const j = json as Record<string, unknown>;
  if (j.model_type !== undefined && j.model_type !== 'gpt2') {
    throw new ConfigError(`config.json: model_type "${String(j.model_type)}" is not supported (only "gpt2")`);
  }
  const act = j.activation_function ?? 'gelu_new';
  if (act !== 'gelu_new' && act !== 'gelu_pytorch_tanh') {
    throw new ConfigError(`config.json: activation_function "${String(act)}" is not supported (GELU-tanh only)`);
  }
  if (j.tie_word_embeddings === false) {
    throw new ConfigError('config.json: untied LM head is not supported (GPT-2 ties it to wte)');
  }
  const nEmbd = int(j, 'n_embd');
  const nHead = int(j, 'n_head');
  if (nEmbd % nHead !== 0) throw new ConfigError(`config.json: n_embd ${nEmbd} is not divisible by n_head ${nHead}`);
  const nInner = j.n_inner === null || j.n_inner === undefined ? 4 * nEmbd : int(j, 'n_inner');
  const eps = j.layer_norm_epsilon ?? 1e-5;
  if (typeof eps !== 'number' || !(eps > 0))
    throw new ConfigError('config.json: layer_norm_epsilon must be a positive number');
  const vocabSize = int(j, 'vocab_size');
  return {
    vocabSize,
    nPositions: int(j, 'n_positions', j.n_ctx as number | undefined),
    nEmbd,
    nLayer: int(j, 'n_layer'),
    nHead,
    nInner,
    layerNormEpsilon: eps,
    bosTokenId: typeof j.bos_token_id === 'number' ? j.bos_token_id : vocabSize - 1,
    eosTokenId: typeof j.eos_token_id === 'number' ? j.eos_token_id : vocabSize - 1,
  };
}

/** The Hugging Face `config.json` object for a config (what `save_pretrained` would write). */
export function gpt2ConfigToJson(c: Gpt2Config): Record<string, unknown> {
  return {
    architectures: ['GPT2LMHeadModel'],
    model_type: 'gpt2',
    activation_function: 'gelu_new',
    vocab_size: c.vocabSize,
    n_positions: c.nPositions,
    n_ctx: c.nPositions,
    n_embd: c.nEmbd,
    n_layer: c.nLayer,
    n_head: c.nHead,
    n_inner: c.nInner === 4 * c.nEmbd ? null : c.nInner,
    layer_norm_epsilon: c.layerNormEpsilon,
    bos_token_id: c.bosTokenId,
    eos_token_id: c.eosTokenId,
    resid_pdrop: 0,
    embd_pdrop: 0,
    attn_pdrop: 0,
    initializer_range: 0.02,
    tie_word_embeddings: true,
    torch_dtype: 'float32',
  };
}
