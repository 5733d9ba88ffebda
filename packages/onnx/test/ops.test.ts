/**
 * Each ONNX op fragment, forward and backward, against the TypeScript reference op on random
 * inputs of awkward sizes, run in onnxruntime-node (CPU).
 *
 * Tolerances (relative to the max |value| of each reference tensor): forward 1e-5, gradients 1e-4.
 */
import { afterAll, describe, expect, it } from 'vitest';
import {
  causalAttentionBackward,
  causalAttentionForward,
  IGNORE_INDEX,
  softmaxCrossEntropyBackward,
  softmaxCrossEntropyForward,
  geluBackward,
  geluForward,
  layerNormBackward,
  layerNormForward,
  loraLinearBackward,
  loraLinearForward,
  type LoraLinearParams,
  Rng,
} from '@splitllm/model';
import { GraphBuilder } from '../src/graph-builder';
import { attentionBackwardNodes, attentionForwardNodes, attentionLayoutNodes } from '../src/ops/attention';
import { crossEntropyBackwardNodes, crossEntropyForwardNodes } from '../src/ops/cross-entropy';
import { geluBackwardNodes, geluForwardNodes } from '../src/ops/gelu';
import { layerNormBackwardNodes, layerNormForwardNodes } from '../src/ops/layernorm';
import { loraLinearBackwardNodes, loraLinearForwardNodes, type LoraLinearNodes } from '../src/ops/lora-linear';
import { ErrorLog, createSession, randn, relErr, run } from './helpers';

const FWD_TOL = 1e-5;
const GRAD_TOL = 1e-4;
const log = new ErrorLog('ONNX op fragments vs reference');
afterAll(() => log.print());

describe('ONNX op fragments vs the reference ops', () => {
  it.each([
    ['with LoRA', true],
    ['plain linear', false],
  ])('loraLinear forward and backward (%s; fwd tol 1e-5, grad tol 1e-4)', async (label, withLora) => {
    const rng = new Rng(11);
    const [M, K, N, r] = [7, 13, 11, 3];
    const scale = 5 / 3;
    const W = randn(K * N, rng, 0.3);
    const b = randn(N, rng, 0.1);
    const A = randn(K * r, rng, 0.3);
    const B = randn(r * N, rng, 0.3);
    const x = randn(M * K, rng);
    const dy = randn(M * N, rng);
    const g = new GraphBuilder('lora_linear');
    const xi = g.input('x', 'float32', ['m', K]);
    const dyi = g.input('dy', 'float32', ['m', N]);
    const p: LoraLinearNodes = {
      W: g.initializer('W', 'float32', [K, N], W),
      b: g.initializer('b', 'float32', [N], b),
    };
    if (withLora) p.lora = { A: g.input('A', 'float32', [K, r]), B: g.input('B', 'float32', [r, N]), scale };
    const fwd = loraLinearForwardNodes(g, xi, p);
    g.output('y', fwd.y, 'float32', ['m', N]);
    const bwd = loraLinearBackwardNodes(g, xi, dyi, p); // xa recomputed
    g.output('dx', bwd.dx, 'float32', ['m', K]);
    if (withLora) {
      g.output('dA', bwd.dA!, 'float32', [K, r]);
      g.output('dB', bwd.dB!, 'float32', [r, N]);
    }
    const session = await createSession(g.toModel());
    const feeds = {
      x: { data: x, dims: [M, K] },
      dy: { data: dy, dims: [M, N] },
      ...(withLora ? { A: { data: A, dims: [K, r] }, B: { data: B, dims: [r, N] } } : {}),
    };
    const out = await run(session, feeds);
    const ref: LoraLinearParams = { W, b, K, N, lora: withLora ? { A, B, r, scale } : undefined };
    const f = loraLinearForward(ref, x, M);
    const gr = loraLinearBackward(ref, f.cache, dy, M);
    expect(log.note(`loraLinear ${label} y`, relErr(out.y, f.y))).toBeLessThan(FWD_TOL);
    expect(log.note(`loraLinear ${label} dx`, relErr(out.dx, gr.dx))).toBeLessThan(GRAD_TOL);
    if (withLora) {
      expect(log.note(`loraLinear ${label} dA`, relErr(out.dA, gr.dA!))).toBeLessThan(GRAD_TOL);
      expect(log.note(`loraLinear ${label} dB`, relErr(out.dB, gr.dB!))).toBeLessThan(GRAD_TOL);
    }
  });

  it('layerNorm forward and backward (fwd tol 1e-5, grad tol 1e-4)', async () => {
    const rng = new Rng(12);
    const [M, D] = [9, 37];
    const eps = 1e-5;
    // a common offset well above the spread, as on a residual stream
    const x = randn(M * D, rng).map((v, i) => 20 + (i % 3) + v);
    const gamma = randn(D, rng, 0.2).map((v) => 1 + v);
    const beta = randn(D, rng, 0.1);
    const dy = randn(M * D, rng);
    const g = new GraphBuilder('layernorm');
    const xi = g.input('x', 'float32', ['m', D]);
    const dyi = g.input('dy', 'float32', ['m', D]);
    const gi = g.initializer('gamma', 'float32', [D], gamma);
    const bi = g.initializer('beta', 'float32', [D], beta);
    const f = layerNormForwardNodes(g, xi, gi, bi, eps);
    g.output('y', f.y, 'float32', ['m', D]);
    g.output('mean', f.mean, 'float32', ['m', 1]);
    g.output('rstd', f.rstd, 'float32', ['m', 1]);
    g.output('dx', layerNormBackwardNodes(g, xi, f.mean, f.rstd, gi, dyi), 'float32', ['m', D]);
    const out = await run(await createSession(g.toModel()), {
      x: { data: x, dims: [M, D] },
      dy: { data: dy, dims: [M, D] },
    });
    const ref = layerNormForward(x, gamma, beta, M, D, eps);
    const back = layerNormBackward(ref.cache, gamma, dy, M, D);
    expect(log.note('layerNorm y', relErr(out.y, ref.y))).toBeLessThan(FWD_TOL);
    expect(log.note('layerNorm mean', relErr(out.mean, ref.cache.mean))).toBeLessThan(FWD_TOL);
    expect(log.note('layerNorm rstd', relErr(out.rstd, ref.cache.rstd))).toBeLessThan(FWD_TOL);
    expect(log.note('layerNorm dx', relErr(out.dx, back.dx))).toBeLessThan(GRAD_TOL);
  });

  it('GELU (tanh) forward and backward (fwd tol 1e-5, grad tol 1e-4)', async () => {
    const rng = new Rng(13);
    const n = 1001;
    const x = Float32Array.from({ length: n }, (_, i) => -8 + (16 * i) / (n - 1) + 0.01 * rng.normal());
    const dy = randn(n, rng);
    const g = new GraphBuilder('gelu');
    const xi = g.input('x', 'float32', ['n']);
    g.output('y', geluForwardNodes(g, xi), 'float32', ['n']);
    g.output('dx', geluBackwardNodes(g, xi, g.input('dy', 'float32', ['n'])), 'float32', ['n']);
    const out = await run(await createSession(g.toModel()), { x: { data: x, dims: [n] }, dy: { data: dy, dims: [n] } });
    expect(log.note('gelu y', relErr(out.y, geluForward(x)))).toBeLessThan(FWD_TOL);
    expect(log.note('gelu dx', relErr(out.dx, geluBackward(x, dy)))).toBeLessThan(GRAD_TOL);
  });

  it('causal attention forward and backward, one graph for every length (fwd tol 1e-5, grad tol 1e-4)', async () => {
    const [D, H] = [12, 3];
    const g = new GraphBuilder('attention');
    const qkv3 = g.input('qkv', 'float32', ['batch', 'seq', 3 * D]);
    const dy3 = g.input('dy', 'float32', ['batch', 'seq', D]);
    const L = attentionLayoutNodes(g, qkv3, D, H);
    const qkv = g.op('Reshape', [qkv3, g.int64s([-1, 3 * D])]);
    const f = attentionForwardNodes(g, qkv, L);
    g.output('y', f.y, 'float32', ['n', D]);
    g.output('probs', f.probs, 'float32', ['batch', H, 'seq', 'seq']);
    const dqkv = attentionBackwardNodes(g, qkv, f.probs, g.op('Reshape', [dy3, g.int64s([-1, D])]), L);
    g.output('dqkv', dqkv, 'float32', ['n', 3 * D]);
    const session = await createSession(g.toModel());
    for (const [B, T] of [
      [2, 7],
      [1, 1],
      [3, 5],
    ]) {
      const rng = new Rng(14 + T);
      const qkvData = randn(B * T * 3 * D, rng, 1.5);
      const dy = randn(B * T * D, rng);
      const out = await run(session, {
        qkv: { data: qkvData, dims: [B, T, 3 * D] },
        dy: { data: dy, dims: [B, T, D] },
      });
      const ref = causalAttentionForward(qkvData, B, T, D, H);
      expect(log.note('attention y', relErr(out.y, ref.y)), `B=${B} T=${T}`).toBeLessThan(FWD_TOL);
      expect(log.note('attention probs', relErr(out.probs, ref.cache.probs)), `B=${B} T=${T}`).toBeLessThan(FWD_TOL);
      // masked entries are exactly zero
      for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) expect(out.probs[i * T + j]).toBe(0);
      const dRef = causalAttentionBackward(ref.cache, dy, B, T, D, H);
      expect(log.note('attention dqkv', relErr(out.dqkv, dRef)), `B=${B} T=${T}`).toBeLessThan(GRAD_TOL);
    }
  });

  it('cross-entropy with ignored targets, and with none counted (fwd tol 1e-5, grad tol 1e-4)', async () => {
    const [N, V] = [11, 17];
    const g = new GraphBuilder('cross_entropy');
    const logits = g.input('logits', 'float32', ['n', V]);
    const targets = g.input('targets', 'int32', ['n']);
    const f = crossEntropyForwardNodes(g, logits, targets);
    g.output('loss', f.loss, 'float32', []);
    g.output('count', f.count, 'float32', []);
    g.output('dlogits', crossEntropyBackwardNodes(g, logits, f, V), 'float32', ['n', V]);
    const session = await createSession(g.toModel());
    const rng = new Rng(15);
    const x = randn(N * V, rng, 3);
    const withIgnored = Int32Array.from({ length: N }, (_, i) =>
      i % 4 === 3 || i >= N - 2 ? IGNORE_INDEX : rng.int(V),
    );
    withIgnored[0] = V - 1; // the last class
    withIgnored[1] = 0;
    const allIgnored = new Int32Array(N).fill(IGNORE_INDEX);
    for (const [label, t] of [
      ['some ignored', withIgnored],
      ['all ignored', allIgnored],
    ] as const) {
      const out = await run(session, { logits: { data: x, dims: [N, V] }, targets: { data: t, dims: [N] } });
      const ref = softmaxCrossEntropyForward(x, t, N, V);
      const dRef = softmaxCrossEntropyBackward(ref.cache, N, V);
      expect(out.count[0]).toBe(ref.count);
      expect(log.note(`cross-entropy ${label} loss`, relErr(out.loss, [ref.loss]))).toBeLessThan(FWD_TOL);
      expect(log.note(`cross-entropy ${label} dlogits`, relErr(out.dlogits, dRef))).toBeLessThan(GRAD_TOL);
      if (ref.count === 0) {
        expect(out.loss[0]).toBe(0);
        expect(out.dlogits.every((v) => v === 0)).toBe(true);
      }
    }
  });
});
