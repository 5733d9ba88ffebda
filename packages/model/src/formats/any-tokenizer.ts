/**
 * A tokenizer of either model family, and the one JSON form the cloud serves it in
 * (`GET /api/tokenizer`, relayed by the edge, read by the tab and the headless user):
 *
 *   GPT-2            { vocabJson, mergesTxt }                       our byte-level BPE (tokenizer.ts)
 *   the LLaMA family { tokenizerJson, bosTokenId, eosTokenId }      tokenizer.json (hf-tokenizer.ts)
 *
 * The LLaMA form carries the BOS / EOS ids the model's config names, since tokenizer_config.json
 * does not travel: training encodes the text only and separates documents with the EOS id.
 * Browser-safe.
 */
import { HfTokenizer } from './hf-tokenizer';
import { Gpt2Tokenizer, TokenizerError } from './tokenizer';

export type AnyTokenizer = Gpt2Tokenizer | HfTokenizer;

export type TokenizerWireFiles =
  | { vocabJson: string; mergesTxt: string }
  | { tokenizerJson: string; bosTokenId: number | null; eosTokenId: number | null };

/** The JSON schema of TokenizerWireFiles, for the routes that serve it (the cloud's, the edge's). */
export const TOKENIZER_WIRE_SCHEMA = {
  type: 'object',
  properties: {
    vocabJson: { type: 'string' },
    mergesTxt: { type: 'string' },
    tokenizerJson: { type: 'string' },
    bosTokenId: { type: ['integer', 'null'] },
    eosTokenId: { type: ['integer', 'null'] },
  },
  additionalProperties: false,
} as const;

/** The wire form of a tokenizer (see the header). */
export function tokenizerWireFiles(t: AnyTokenizer): TokenizerWireFiles {
  if (t instanceof Gpt2Tokenizer) return t.toFiles();
  return { tokenizerJson: t.toJson(), bosTokenId: t.bosTokenId ?? null, eosTokenId: t.eosTokenId ?? null };
}

function idOrNull(v: unknown, what: string): number | null {
  if (v === null || v === undefined) return null;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0)
    throw new TokenizerError(`tokenizer files: ${what} must be a token id or null, got ${JSON.stringify(v)}`);
  return v;
}

/** The tokenizer of a wire form; anything else is refused (TokenizerError, BAD_TOKENIZER) saying what it lacks. */
export function tokenizerFromWireFiles(files: unknown): AnyTokenizer {
  const f = files as Record<string, unknown> | null;
  if (typeof f !== 'object' || f === null) throw new TokenizerError('tokenizer files: expected a JSON object');
  if (typeof f.tokenizerJson === 'string') {
    return HfTokenizer.fromJson(f.tokenizerJson, null, {
      bosTokenId: idOrNull(f.bosTokenId, 'bosTokenId'),
      eosTokenId: idOrNull(f.eosTokenId, 'eosTokenId'),
    });
  }
  if (typeof f.vocabJson === 'string' && typeof f.mergesTxt === 'string')
    return Gpt2Tokenizer.fromFiles(f.vocabJson, f.mergesTxt);
  throw new TokenizerError(
    'tokenizer files: expected {vocabJson, mergesTxt} (GPT-2) or {tokenizerJson} (LLaMA family)',
  );
}

/** The characters a wire form holds (what a download of it is reported as). */
export function tokenizerWireSize(files: TokenizerWireFiles): number {
  return 'tokenizerJson' in files ? files.tokenizerJson.length : files.vocabJson.length + files.mergesTxt.length;
}
