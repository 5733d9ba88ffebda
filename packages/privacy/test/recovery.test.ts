/**
 * Rates, word spans, the figures file, the search's shortlist rescan and the whole measurement
 * on a tiny random model (fast: 2 layers, 32 wide, a 64-token vocabulary).
 */
import {
  DEFAULT_LORA_CONFIG,
  type Gpt2Config,
  type Gpt2Model,
  IGNORE_INDEX,
  Rng,
  initLoraAdapter,
  randomGpt2Weights,
  userSegmentForward,
} from '@splitllm/model';
import { describe, expect, it } from 'vitest';
import {
  type RecoveryFigures,
  calibrateThreshold,
  makeSegment,
  measure,
  measureSteps,
  parseRecoveryFigures,
  searchRecover,
  tokenRate,
  wordCounts,
  wordSpans,
  worstCase,
} from '../src';

const tiny: Gpt2Config = {
  vocabSize: 64,
  nPositions: 32,
  nEmbd: 32,
  nLayer: 2,
  nHead: 2,
  nInner: 128,
  layerNormEpsilon: 1e-5,
  bosTokenId: 63,
  eosTokenId: 63,
};
const model: Gpt2Model = { config: tiny, weights: randomGpt2Weights(tiny, 5) };
const adapter = initLoraAdapter(tiny, DEFAULT_LORA_CONFIG, 5);

describe('rates', () => {
  it('token rate skips ignored positions and checks lengths', () => {
    expect(tokenRate([1, 2, IGNORE_INDEX, 4], [1, 0, 7, 4])).toBeCloseTo(2 / 3, 12);
    expect(() => tokenRate([1], [1, 2])).toThrow(/truths/);
  });

  it('a word is recovered only when every token overlapping it is', () => {
    const pieces = ['The', ' pres', 'ident', ',', ' and', '\n', 'Congress'];
    expect(wordSpans(pieces)).toEqual([[0], [1, 2, 3], [4], [6]]);
    expect(wordCounts(pieces, [true, true, false, true, true, true, true])).toEqual({ words: 4, recovered: 3 });
    expect(() => wordCounts(pieces, [true])).toThrow(/flags/);
  });
});

describe('figures file', () => {
  const good: RecoveryFigures = {
    measuredOn: 'test',
    command: 'splitllm attack',
    tokens: 10,
    figures: [
      { k: 1, sigma: 0, attack: 'decoder', who: 'edge', tokenRate: 0.5, wordRate: 0.25 },
      { k: 1, sigma: 0, attack: 'search', who: 'edge', tokenRate: 0.9, wordRate: 0.8 },
    ],
  };

  it('round-trips and gives the worst case per setting', () => {
    const f = parseRecoveryFigures(JSON.parse(JSON.stringify(good)));
    expect(f).toEqual(good);
    expect(worstCase(f, 1, 0, 'edge')?.attack).toBe('search');
    expect(worstCase(f, 2, 0, 'edge')).toBeUndefined();
  });

  it('refuses malformed figures with the field named', () => {
    expect(() => parseRecoveryFigures([])).toThrow(/JSON object/);
    const bad = (patch: Record<string, unknown>) => ({ ...good, figures: [{ ...good.figures[0], ...patch }] });
    expect(() => parseRecoveryFigures(bad({ tokenRate: 1.5 }))).toThrow(/tokenRate/);
    expect(() => parseRecoveryFigures(bad({ attack: 'magic' }))).toThrow(/attack/);
    expect(() => parseRecoveryFigures(bad({ who: 'user' }))).toThrow(/who/);
    expect(() => parseRecoveryFigures(bad({ k: 0 }))).toThrow(/k must/);
    expect(() => parseRecoveryFigures({ ...good, tokens: 0 })).toThrow(/tokens/);
  });
});

describe('search shortlist', () => {
  it('rescans the whole vocabulary when the shortlist misses the true token', () => {
    const T = 12;
    const rng = new Rng(9);
    const ids = Int32Array.from({ length: T }, () => rng.int(tiny.vocabSize));
    const h1 = userSegmentForward(
      model,
      adapter,
      { B: 1, T, inputIds: ids, targets: new Int32Array(T).fill(IGNORE_INDEX) },
      { k: 1, m: 2 },
    ).h1;
    const seg = makeSegment(model, adapter, 0, 1);
    // a shortlist that never holds the true token
    const wrong = (t: number) => [(ids[t] + 1) % tiny.vocabSize, (ids[t] + 2) % tiny.vocabSize];
    const threshold = calibrateThreshold([0], 1);
    const r = searchRecover(seg, h1, T, { shortlist: wrong, threshold });
    expect(Array.from(r.ids)).toEqual(Array.from(ids));
    expect(r.fullScans).toBe(T);
    // without the threshold it must keep the shortlist's (wrong) choice: the rescan is what recovers
    expect(tokenRate(ids, searchRecover(seg, h1, T, { shortlist: wrong }).ids)).toBe(0);
  });
});

describe('measure', () => {
  it('gives every figure for every setting, rates in [0, 1], and refuses bad settings', () => {
    const rng = new Rng(3);
    const publicIds = Int32Array.from({ length: 1024 }, () => rng.int(tiny.vocabSize));
    const sequences = [0, 1].map(() => Int32Array.from({ length: 16 }, () => rng.int(tiny.vocabSize)));
    const base = { model, adapter, publicIds, sequences, piece: (id: number) => ` w${id}`, trainTokens: 512 };
    const events: string[] = [];
    const figs = measure({ ...base, ks: [1], sigmas: [0, 0.5], onProgress: (w) => events.push(w) });
    expect(events.length).toBe(measureSteps({ ks: [1], sigmas: [0, 0.5] }));
    expect(figs.map((f) => `${f.who}/${f.attack}/${f.sigma}`)).toEqual([
      'edge/decoder/0',
      'edge/search/0',
      'cloud/decoder/0',
      'cloud/search/0',
      'cloud/gradient-labels/0',
      'edge/decoder/0.5',
      'edge/search/0.5',
      'cloud/decoder/0.5',
      'cloud/search/0.5',
      'cloud/gradient-labels/0.5',
    ]);
    for (const f of figs) {
      expect(f.tokenRate).toBeGreaterThanOrEqual(0);
      expect(f.tokenRate).toBeLessThanOrEqual(1);
      expect(f.wordRate).toBeGreaterThanOrEqual(0);
      expect(f.wordRate).toBeLessThanOrEqual(1);
    }
    // every token is its own word here, and the noise-free search on a random model is exact
    const search0 = figs.find((f) => f.who === 'edge' && f.attack === 'search' && f.sigma === 0);
    expect(search0?.tokenRate).toBe(1);
    expect(search0?.positions).toBe(32);
    // 15 counted targets per sequence (the last position has no next token)
    expect(figs.find((f) => f.attack === 'gradient-labels')?.positions).toBe(30);
    expect(() => measure({ ...base, ks: [2], sigmas: [0] })).toThrow(/k=2/);
    expect(() => measure({ ...base, ks: [1], sigmas: [-1] })).toThrow(/sigma/);
    expect(() => measure({ ...base, ks: [1], sigmas: [0], sequences: [Int32Array.of(99, 1)] })).toThrow(/vocabulary/);
  });
});
