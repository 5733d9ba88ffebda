/**
 * Text generation through the three tiers, from the user's side (browser-safe: fetch, typed
 * arrays; no Node API).
 *
 * Per new token: the user runs its segment (embedding + blocks [0, k), with whatever adapter its
 * engine holds) on the context, sends h1 [1, T, D] to its edge (`POST {edgeUrl}/api/generate`,
 * one `generate` message of channel userGenerate, the user's credentials in headers); the edge
 * runs blocks [k, m) with its current global edge adapter, the cloud blocks [m, L) + ln_f + the
 * tied head with the same version's cloud adapter, and the next-token logits [V] of the last
 * position come back in a `logits` message (channel logits). With labels on the device the cloud
 * stops after blocks [m, L) and answers with the last position's last hidden state (a `hidden`
 * message of the same channel); the tab runs ln_f and the head on it (`head`). The user samples
 * the next token and goes again: no KV cache, a full forward per token, over the last
 * `maxContext` tokens at most.
 *
 * Only h1 leaves this side: the prompt's text and its token ids stay here. h1 of a context is
 * exact for it whatever follows it (causal attention), which is why a fixed-shape engine may pad
 * on the right (paddedForward).
 */
import {
  decodeMessage,
  encodeMessage,
  expectShape,
  GENERATE_USER_HEADER,
  maxLogitsFrameBytes,
  ProtocolError,
  responseError,
} from '@splitllm/wire';
import { IGNORE_INDEX, type ModelConfig, modelDims, Rng, type TokenBatch } from '@splitllm/model';
import { ClientError } from './errors';

export interface SamplingOptions {
  /** 0: greedy (argmax, the lowest id on a tie); otherwise logits are divided by it before the softmax */
  temperature: number;
  /** sample among the k most likely tokens only (0: all) */
  topK: number;
}

export interface GenerateOptions extends Partial<SamplingOptions> {
  edgeUrl: string;
  credentials: { userId: string; userToken: string };
  /** h1 [1, ids.length, D] of these ids, from the user's engine with its current adapter */
  forward: (ids: Int32Array) => Promise<Float32Array>;
  /**
   * Labels on the device: ln_f and the head on one last hidden state [D], giving the logits [V]
   * (the trainer's headLogits). Needed when the edge answers with a `hidden` message.
   */
  head?: (h: Float32Array) => Promise<Float32Array>;
  /** the model's config, of either family (what is read of it: modelDims) */
  config: ModelConfig;
  promptIds: ArrayLike<number>;
  maxNewTokens: number;
  /** default 0 (the sampler's Rng) */
  seed?: number;
  /**
   * the longest context sent, older tokens dropped from the left (default and at most
   * the model's positions; paddedForward's T for a fixed-shape engine)
   */
  maxContext?: number;
  /** stop after sampling an end-of-text token (modelDims(config).eosIds), which is returned (default true) */
  stopAtEos?: boolean;
  onToken?: (id: number) => void;
  /** a `503 NOT_READY` (edge starting, global version changing) is retried this many times (default 3) */
  retries?: number;
  signal?: AbortSignal;
  /** default globalThis.fetch */
  fetch?: typeof fetch;
}

/**
 * Sends the last ids of a context (h1 of them) and returns the next-token logits [V] and the
 * version that made them.
 */
export async function nextTokenLogits(
  o: Pick<GenerateOptions, 'edgeUrl' | 'credentials' | 'config' | 'retries' | 'signal' | 'fetch' | 'head'>,
  h1: Float32Array,
  T: number,
): Promise<{ logits: Float32Array; version: number }> {
  const c = o.config;
  const D = modelDims(c).width;
  if (h1.length !== T * D) {
    throw new ClientError('BAD_SHAPE', `h1 has ${h1.length} values, a context of ${T} needs ${T * D}`);
  }
  const body = encodeMessage('userGenerate', 'generate', { h: { data: h1, shape: [1, T, D] } });
  const doFetch = o.fetch ?? globalThis.fetch.bind(globalThis);
  const retries = o.retries ?? 3;
  for (let attempt = 0; ; attempt++) {
    const res = await doFetch(`${o.edgeUrl}/api/generate`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${o.credentials.userToken}`,
        [GENERATE_USER_HEADER]: o.credentials.userId,
        'content-type': 'application/octet-stream',
      },
      body: body as Uint8Array<ArrayBuffer>,
      signal: o.signal,
    });
    if (!res.ok) {
      const e = await responseError(res);
      if (res.status === 503 && attempt < retries) {
        await new Promise((r) => setTimeout(r, 250 * (attempt + 1)));
        continue;
      }
      throw ClientError.fromPeer(e.code, `generate: ${res.status} ${e.message}`);
    }
    try {
      const bytes = new Uint8Array(await res.arrayBuffer());
      const m = decodeMessage('logits', bytes, { maxBytes: maxLogitsFrameBytes(c) });
      if (m.type === 'logits') return { logits: expectShape(m.logits, 'logits', [c.vocabSize]), version: m.version };
      const h = expectShape(m.h, 'the last hidden state', [D]);
      if (!o.head) throw new ClientError('BAD_OPTION', 'generate: the run keeps labels on the device: pass `head`');
      return { logits: await o.head(h), version: m.version };
    } catch (e) {
      if (e instanceof ProtocolError) {
        throw new ClientError(e.code, `generate: the edge's answer is unusable: ${e.message}`);
      }
      throw e;
    }
  }
}

function checkSampling(s: SamplingOptions): void {
  if (!(Number.isFinite(s.temperature) && s.temperature >= 0)) {
    throw new ClientError('BAD_OPTION', `temperature must be a finite number >= 0, got ${s.temperature}`);
  }
  if (!(Number.isInteger(s.topK) && s.topK >= 0)) {
    throw new ClientError('BAD_OPTION', `topK must be an integer >= 0, got ${s.topK}`);
  }
}

/**
 * The next token from next-token logits: the argmax for temperature 0, else a draw from
 * softmax(logits / temperature) restricted to the topK most likely tokens (0: all), in float64.
 */
export function sampleToken(logits: ArrayLike<number>, s: SamplingOptions, rng: Rng): number {
  checkSampling(s);
  const V = logits.length;
  if (V === 0) throw new ClientError('BAD_SHAPE', 'no logits to sample from');
  if (s.temperature === 0 || s.topK === 1) {
    let best = 0;
    for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  // candidates in decreasing order (stable: lower id first on ties), cut to topK
  let ids = Array.from({ length: V }, (_, i) => i);
  if (s.topK > 0 && s.topK < V) ids = ids.sort((a, b) => logits[b] - logits[a] || a - b).slice(0, s.topK);
  let max = -Infinity;
  for (const i of ids) max = Math.max(max, logits[i]);
  const weights = ids.map((i) => Math.exp((logits[i] - max) / s.temperature));
  const total = weights.reduce((a, b) => a + b, 0);
  let u = rng.uniform() * total;
  for (let j = 0; j < ids.length; j++) {
    u -= weights[j];
    if (u < 0) return ids[j];
  }
  return ids[ids.length - 1];
}

/**
 * Generates up to maxNewTokens tokens after the prompt through the tiers; returns them (not the
 * prompt), calling onToken for each as it comes.
 */
export async function generateContinuation(o: GenerateOptions): Promise<number[]> {
  const c = modelDims(o.config);
  const sampling: SamplingOptions = { temperature: o.temperature ?? 0, topK: o.topK ?? 0 };
  checkSampling(sampling);
  if (!(Number.isInteger(o.maxNewTokens) && o.maxNewTokens >= 0)) {
    throw new ClientError('BAD_OPTION', `maxNewTokens must be an integer >= 0, got ${o.maxNewTokens}`);
  }
  const maxContext = Math.min(o.maxContext ?? c.positions, c.positions);
  if (!(Number.isInteger(maxContext) && maxContext >= 1)) {
    throw new ClientError('BAD_OPTION', `maxContext must be a positive integer, got ${o.maxContext}`);
  }
  const context = Array.from(o.promptIds);
  if (context.length === 0) throw new ClientError('BAD_OPTION', 'the prompt is empty');
  for (const id of context) {
    if (!(Number.isInteger(id) && id >= 0 && id < c.vocab)) {
      throw new ClientError('BAD_OPTION', `prompt token id ${id} is outside the vocabulary [0, ${c.vocab})`);
    }
  }
  const rng = new Rng(o.seed ?? 0);
  const stopAtEos = o.stopAtEos ?? true;
  const out: number[] = [];
  while (out.length < o.maxNewTokens) {
    o.signal?.throwIfAborted();
    const ids = Int32Array.from(context.slice(-maxContext));
    const h1 = await o.forward(ids);
    const { logits } = await nextTokenLogits(o, h1, ids.length);
    const next = sampleToken(logits, sampling, rng);
    out.push(next);
    context.push(next);
    o.onToken?.(next);
    if (stopAtEos && c.eosIds.includes(next)) break;
  }
  return out;
}

/**
 * A generation forward over an engine that only takes batches of exactly [B, T] (the WGSL
 * engine; any UserTrainer): the ids go in row 0, padded on the right with eosId to T (the other
 * rows are all eosId), and h1 of row 0's first n positions comes back, [1, n, D]. Exact, since a
 * position's h1 depends only on the positions before it (causal attention).
 *
 * A UserTrainer's forward keeps what its next backward needs: generate with a trainer that is not
 * in the middle of a training step (between a turn's forward and its backward).
 */
export function paddedForward(
  forward: (batch: TokenBatch) => Promise<Float32Array>,
  B: number,
  T: number,
  D: number,
  eosId: number,
): (ids: Int32Array) => Promise<Float32Array> {
  if (![B, T, D].every((n) => Number.isInteger(n) && n >= 1)) {
    throw new ClientError('BAD_OPTION', `paddedForward: B ${B}, T ${T} and D ${D} must be positive integers`);
  }
  return async (ids) => {
    const n = ids.length;
    if (n < 1 || n > T) {
      throw new ClientError(
        'BAD_OPTION',
        `paddedForward: ${n} ids do not fit the engine's ${T} positions (1 to ${T}; pass maxContext: ${T})`,
      );
    }
    const inputIds = new Int32Array(B * T).fill(eosId);
    inputIds.set(ids, 0);
    const h1 = await forward({ B, T, inputIds, targets: new Int32Array(B * T).fill(IGNORE_INDEX) });
    if (h1.length !== B * T * D) {
      throw new ClientError(
        'BAD_SHAPE',
        `paddedForward: the engine returned ${h1.length} values, expected ${B} x ${T} x ${D}`,
      );
    }
    return h1.slice(0, n * D);
  };
}
