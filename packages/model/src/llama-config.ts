/**
 * LLaMA-family configuration (Hugging Face `LlamaForCausalLM` and `Qwen2ForCausalLM`), read from
 * `config.json`. Only the fields the math needs are kept; a setting that would change the math
 * and that we do not implement is refused with a message that names it.
 *
 * Unlike the GPT-2 reader, keys are checked against a closed list: a key we do not know is
 * refused rather than ignored, because new LLaMA variants mostly differ by one extra key
 * (sliding windows, soft-capping, per-layer attention kinds), and running such a model with
 * plain LLaMA math would give wrong outputs without any sign of it.
 */
import { ConfigError } from './config';

/** Llama 3's `rope_scaling` (`rope_type: "llama3"`): the inverse frequencies are rescaled by band. */
export interface Llama3RopeScaling {
  type: 'llama3';
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

export interface LlamaConfig {
  /** `model_type`: "llama" or "qwen2" (Qwen2 = LLaMA with q/k/v biases) */
  family: 'llama' | 'qwen2';
  vocabSize: number;
  /** D, `hidden_size` */
  hiddenSize: number;
  /** F, the SwiGLU width, `intermediate_size` */
  intermediateSize: number;
  nLayer: number;
  /** query heads, `num_attention_heads` */
  nHead: number;
  /** key/value heads, `num_key_value_heads` (nHead when absent); nHead % nKvHead === 0 */
  nKvHead: number;
  /** per-head width, `head_dim` or hiddenSize / nHead */
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: Llama3RopeScaling | null;
  maxPositionEmbeddings: number;
  /** false: a separate `lm_head.weight` [vocab, D] */
  tieWordEmbeddings: boolean;
  /** biases on q_proj, k_proj, v_proj (Qwen2: true; Llama: `attention_bias`) */
  qkvBias: boolean;
  /** a bias on o_proj (Llama's `attention_bias` only) */
  oBias: boolean;
  /** biases on gate/up/down (`mlp_bias`) */
  mlpBias: boolean;
  bosTokenId: number | null;
  /** one id or several (Llama 3.x lists several) */
  eosTokenIds: number[];
}

type Json = Record<string, unknown>;

/** The architecture each `model_type` must name: another head (classification, ...) is not ours. */
const ARCHITECTURE: Record<LlamaConfig['family'], string> = {
  llama: 'LlamaForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
};

/** Keys the parser reads (and checks). */
const READ_KEYS = new Set([
  'model_type',
  'architectures',
  'vocab_size',
  'hidden_size',
  'intermediate_size',
  'num_hidden_layers',
  'num_attention_heads',
  'num_key_value_heads',
  'head_dim',
  'hidden_act',
  'rms_norm_eps',
  'rope_theta',
  'rope_scaling',
  'rope_parameters',
  'max_position_embeddings',
  'tie_word_embeddings',
  'attention_bias',
  'mlp_bias',
  'use_sliding_window',
  'sliding_window',
  'max_window_layers',
  'layer_types',
  'partial_rotary_factor',
  'rope_interleaved',
  'use_mrope',
  'bos_token_id',
  'eos_token_id',
]);

/**
 * Keys that leave the forward and backward math alone: bookkeeping, generation defaults,
 * `PretrainedConfig`'s generic fields that older transformers wrote out, dropout (a training
 * regularizer: like the GPT-2 path, we train without it) and `pretraining_tp` (Llama 2's
 * tensor-parallel split of the same matmuls, equal up to rounding).
 */
const HARMLESS_KEYS = new Set([
  '_name_or_path',
  'transformers_version',
  'torch_dtype',
  'dtype',
  'use_cache',
  'initializer_range',
  'pad_token_id',
  'attention_dropout',
  'pretraining_tp',
  'is_llama_config',
  '_attn_implementation',
  '_attn_implementation_autoset',
  'output_attentions',
  'output_hidden_states',
  'return_dict',
  'torchscript',
  'use_bfloat16',
  'tf_legacy_loss',
  'pruned_heads',
  'chunk_size_feed_forward',
  'is_encoder_decoder',
  'is_decoder',
  'add_cross_attention',
  'cross_attention_hidden_size',
  'tie_encoder_decoder',
  'decoder_start_token_id',
  'sep_token_id',
  'id2label',
  'label2id',
  'problem_type',
  'finetuning_task',
  'task_specific_params',
  'tokenizer_class',
  'prefix',
  'max_length',
  'min_length',
  'do_sample',
  'early_stopping',
  'num_beams',
  'num_beam_groups',
  'diversity_penalty',
  'temperature',
  'top_k',
  'top_p',
  'typical_p',
  'repetition_penalty',
  'length_penalty',
  'no_repeat_ngram_size',
  'encoder_no_repeat_ngram_size',
  'bad_words_ids',
  'num_return_sequences',
  'output_scores',
  'return_dict_in_generate',
  'forced_bos_token_id',
  'forced_eos_token_id',
  'remove_invalid_values',
  'exponential_decay_length_penalty',
  'suppress_tokens',
  'begin_suppress_tokens',
]);

/** Known keys we refuse, with the reason (clearer than "unknown setting"). */
const REFUSED_KEYS: Record<string, string> = {
  quantization_config: 'quantized checkpoints are not supported (the weights must be F32, F16 or BF16)',
  auto_map: 'models that need their own modeling code (auto_map) are not supported',
};

const ROPE_LLAMA3_KEYS = ['factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings'];

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function show(v: unknown): string {
  return v === undefined ? 'nothing' : JSON.stringify(v);
}

class Reader {
  /** `prefix` names the object a nested reader reads (`rope_scaling.`), for messages. */
  constructor(
    readonly j: Json,
    readonly file: string,
    readonly prefix = '',
  ) {}

  fail(key: string, what: string): never {
    throw new ConfigError(`${this.file}: "${this.prefix}${key}" ${what}`);
  }

  /** A positive integer; `fallback` when the key is absent or null. */
  posInt(key: string, fallback?: number): number {
    const v = this.j[key] ?? fallback;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
      this.fail(key, `must be a positive integer, got ${show(this.j[key])}`);
    }
    return v;
  }

  posNumber(key: string, fallback?: number): number {
    const v = this.j[key] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      this.fail(key, `must be a positive number, got ${show(this.j[key])}`);
    }
    return v;
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.j[key] ?? fallback;
    if (typeof v !== 'boolean') this.fail(key, `must be true or false, got ${show(this.j[key])}`);
    return v;
  }

  tokenId(key: string, v: unknown, vocabSize: number): number {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v >= vocabSize) {
      this.fail(key, `must be a token id in [0, ${vocabSize}), got ${show(v)}`);
    }
    return v;
  }
}

/** `rope_scaling` (or transformers 5's `rope_parameters`, read by `key`): null, "default" or "llama3". */
function parseRopeScaling(r: Reader, key: string, raw: unknown): Llama3RopeScaling | null {
  if (raw === null || raw === undefined) return null;
  if (!isObject(raw)) r.fail(key, `must be an object or null, got ${show(raw)}`);
  const { rope_type: ropeType, type } = raw;
  if (ropeType !== undefined && type !== undefined && ropeType !== type) {
    r.fail(key, `says both rope_type ${show(ropeType)} and type ${show(type)}`);
  }
  const kind = ropeType ?? type ?? 'default';
  // rope_theta may sit here in `rope_parameters`; the caller reads it
  const own = new Set(['rope_type', 'type', 'rope_theta']);
  if (kind === 'default') {
    for (const k of Object.keys(raw)) {
      if (!own.has(k)) r.fail(`${key}.${k}`, 'is not supported with the default rotary embedding');
    }
    return null;
  }
  if (kind !== 'llama3') {
    r.fail(key, `kind ${show(kind)} is not supported (only Llama 3's "llama3", or none)`);
  }
  for (const k of Object.keys(raw)) {
    if (!own.has(k) && !ROPE_LLAMA3_KEYS.includes(k)) {
      r.fail(`${key}.${k}`, 'is not a "llama3" rope_scaling setting');
    }
  }
  const sub: Reader = new Reader(raw, r.file, `${key}.`);
  const scaling: Llama3RopeScaling = {
    type: 'llama3',
    factor: sub.posNumber('factor'),
    lowFreqFactor: sub.posNumber('low_freq_factor'),
    highFreqFactor: sub.posNumber('high_freq_factor'),
    originalMaxPositionEmbeddings: sub.posInt('original_max_position_embeddings'),
  };
  if (!(scaling.highFreqFactor > scaling.lowFreqFactor)) {
    sub.fail('high_freq_factor', `(${scaling.highFreqFactor}) must exceed low_freq_factor (${scaling.lowFreqFactor})`);
  }
  return scaling;
}

/**
 * Reads a Hugging Face `config.json` (already parsed) of a `LlamaForCausalLM` or
 * `Qwen2ForCausalLM`. Defaults are transformers' own (`LlamaConfig`, `Qwen2Config`); `file`
 * names the file in error messages.
 */
export function parseLlamaConfig(json: unknown, file = 'config.json'): LlamaConfig {
  if (!isObject(json)) throw new ConfigError(`${file}: expected a JSON object`);
  // an explicit type, so that control flow knows r.fail() never returns
  const r: Reader = new Reader(json, file);
  const j = json;

  const family = j.model_type;
  if (family !== 'llama' && family !== 'qwen2') {
    r.fail('model_type', `${show(family)} is not supported (only "llama" and "qwen2")`);
  }
  if (j.architectures !== undefined && j.architectures !== null) {
    const want = ARCHITECTURE[family];
    const a = j.architectures;
    if (!Array.isArray(a) || a.length !== 1 || a[0] !== want) {
      r.fail('architectures', `must be ["${want}"] for model_type "${family}", got ${show(a)}`);
    }
  }
  for (const key of Object.keys(j)) {
    const refused = REFUSED_KEYS[key];
    if (refused !== undefined && j[key] !== null) r.fail(key, `is set: ${refused}`);
    if (!READ_KEYS.has(key) && !HARMLESS_KEYS.has(key) && refused === undefined) {
      r.fail(key, 'is an unknown setting; it may change the model, so the config is refused');
    }
  }

  const act = j.hidden_act ?? 'silu';
  if (act !== 'silu') r.fail('hidden_act', `${show(act)} is not supported (SwiGLU with "silu" only)`);
  if (j.use_sliding_window === true) r.fail('use_sliding_window', 'is true: sliding-window attention is not supported');
  if (j.use_sliding_window !== undefined && j.use_sliding_window !== null) r.bool('use_sliding_window', false);
  if (j.partial_rotary_factor !== undefined && j.partial_rotary_factor !== null && j.partial_rotary_factor !== 1) {
    r.fail(
      'partial_rotary_factor',
      `${show(j.partial_rotary_factor)} is not supported (rotary on the whole head only)`,
    );
  }
  if (j.use_mrope !== undefined && j.use_mrope !== null && j.use_mrope !== false) {
    r.fail('use_mrope', `${show(j.use_mrope)} is not supported (multimodal rotary sections)`);
  }
  if (j.rope_interleaved !== undefined && j.rope_interleaved !== false) {
    // transformers itself ignores this nanotron key; true would mean weights laid out for
    // interleaved pairs, which the rotate-half math would silently get wrong
    r.fail('rope_interleaved', `${show(j.rope_interleaved)} is not supported (rotate-half pairs only)`);
  }

  const vocabSize = r.posInt('vocab_size');
  const hiddenSize = r.posInt('hidden_size');
  const nHead = r.posInt('num_attention_heads');
  const nKvHead = r.posInt('num_key_value_heads', nHead);
  if (nHead % nKvHead !== 0) {
    r.fail('num_key_value_heads', `(${nKvHead}) must divide num_attention_heads (${nHead})`);
  }
  if ((j.head_dim === undefined || j.head_dim === null) && hiddenSize % nHead !== 0) {
    r.fail(
      'hidden_size',
      `(${hiddenSize}) is not divisible by num_attention_heads (${nHead}) and head_dim is not given`,
    );
  }
  const headDim = r.posInt('head_dim', hiddenSize / nHead);
  const nLayer = r.posInt('num_hidden_layers');
  if (j.layer_types !== undefined && j.layer_types !== null) {
    const lt = j.layer_types;
    if (!Array.isArray(lt) || lt.length !== nLayer) {
      r.fail('layer_types', `must list one kind per layer (${nLayer}), got ${show(lt)}`);
    }
    const other = lt.find((t) => t !== 'full_attention');
    if (other !== undefined) r.fail('layer_types', `has ${show(other)}: only "full_attention" layers are supported`);
  }

  let ropeTheta: number;
  let ropeScaling: Llama3RopeScaling | null;
  const rp = j.rope_parameters;
  if (rp !== undefined && rp !== null) {
    // transformers 5 keeps theta and scaling together in `rope_parameters`
    if (j.rope_scaling !== undefined && j.rope_scaling !== null) {
      r.fail('rope_scaling', 'and "rope_parameters" are both set; give one');
    }
    if (!isObject(rp)) r.fail('rope_parameters', `must be an object, got ${show(rp)}`);
    if (rp.rope_theta !== undefined && j.rope_theta !== undefined && rp.rope_theta !== j.rope_theta) {
      r.fail('rope_theta', `(${show(j.rope_theta)}) differs from rope_parameters.rope_theta (${show(rp.rope_theta)})`);
    }
    ropeTheta =
      rp.rope_theta === undefined
        ? r.posNumber('rope_theta', 10000)
        : new Reader(rp, file, 'rope_parameters.').posNumber('rope_theta');
    ropeScaling = parseRopeScaling(r, 'rope_parameters', rp);
  } else {
    ropeTheta = r.posNumber('rope_theta', 10000);
    ropeScaling = parseRopeScaling(r, 'rope_scaling', j.rope_scaling);
  }

  // Qwen2 always has q/k/v biases and none elsewhere; transformers ignores attention_bias and
  // mlp_bias for it, and so do we (a checkpoint with other biases then fails on its tensors).
  const attentionBias = family === 'llama' ? r.bool('attention_bias', false) : true;
  const bos = j.bos_token_id;
  const eos = j.eos_token_id;
  let eosTokenIds: number[];
  if (eos === undefined || eos === null) eosTokenIds = [];
  else if (Array.isArray(eos)) eosTokenIds = eos.map((id) => r.tokenId('eos_token_id', id, vocabSize));
  else eosTokenIds = [r.tokenId('eos_token_id', eos, vocabSize)];

  return {
    family,
    vocabSize,
    hiddenSize,
    intermediateSize: r.posInt('intermediate_size'),
    nLayer,
    nHead,
    nKvHead,
    headDim,
    rmsNormEps: r.posNumber('rms_norm_eps', 1e-6),
    ropeTheta,
    ropeScaling,
    maxPositionEmbeddings: r.posInt('max_position_embeddings', family === 'llama' ? 2048 : 32768),
    tieWordEmbeddings: r.bool('tie_word_embeddings', false),
    qkvBias: attentionBias,
    oBias: family === 'llama' && attentionBias,
    mlpBias: family === 'llama' && r.bool('mlp_bias', false),
    bosTokenId: bos === undefined || bos === null ? null : r.tokenId('bos_token_id', bos, vocabSize),
    eosTokenIds,
  };
}

/**
 * The Hugging Face `config.json` object for a config (what `save_pretrained` would write, keys
 * sorted as it sorts them). Throws a ConfigError for a config that `config.json` cannot express
 * (Llama's one `attention_bias` covers q, k, v and o alike; Qwen2's biases are fixed).
 */
export function llamaConfigToJson(c: LlamaConfig): Record<string, unknown> {
  if (c.family === 'llama' && c.qkvBias !== c.oBias) {
    throw new ConfigError('llamaConfigToJson: a Llama config has one attention_bias for q, k, v and o alike');
  }
  if (c.family === 'qwen2' && (!c.qkvBias || c.oBias || c.mlpBias)) {
    throw new ConfigError('llamaConfigToJson: Qwen2 has q/k/v biases and no other biases');
  }
  const out: Record<string, unknown> = {
    architectures: [ARCHITECTURE[c.family]],
    bos_token_id: c.bosTokenId,
    eos_token_id: c.eosTokenIds.length === 1 ? c.eosTokenIds[0] : c.eosTokenIds.length === 0 ? null : c.eosTokenIds,
    hidden_act: 'silu',
    hidden_size: c.hiddenSize,
    initializer_range: 0.02,
    intermediate_size: c.intermediateSize,
    max_position_embeddings: c.maxPositionEmbeddings,
    model_type: c.family,
    num_attention_heads: c.nHead,
    num_hidden_layers: c.nLayer,
    num_key_value_heads: c.nKvHead,
    rms_norm_eps: c.rmsNormEps,
    rope_scaling:
      c.ropeScaling === null
        ? null
        : {
            factor: c.ropeScaling.factor,
            high_freq_factor: c.ropeScaling.highFreqFactor,
            low_freq_factor: c.ropeScaling.lowFreqFactor,
            original_max_position_embeddings: c.ropeScaling.originalMaxPositionEmbeddings,
            rope_type: 'llama3',
          },
    rope_theta: c.ropeTheta,
    tie_word_embeddings: c.tieWordEmbeddings,
    torch_dtype: 'float32',
    use_cache: true,
    vocab_size: c.vocabSize,
  };
  if (c.family === 'llama') {
    out.attention_bias = c.qkvBias;
    out.attention_dropout = 0;
    out.mlp_bias = c.mlpBias;
  } else {
    out.attention_dropout = 0;
    out.use_sliding_window = false;
  }
  // head_dim only where it is not the default: older transformers' Qwen2 does not read it
  if (c.nHead * c.headDim !== c.hiddenSize) out.head_dim = c.headDim;
  // check it reads back to the same config (catches a config no file could describe)
  parseLlamaConfig(out, 'llamaConfigToJson');
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}
