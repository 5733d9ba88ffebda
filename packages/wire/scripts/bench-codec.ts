/**
 * Benchmark (not a test): ms to encode and to decode one activation frame per codec, and, for
 * comparison, to copy the same floats into a freshly allocated array (what any decode that hands
 * the caller its own copy pays at least).
 *
 *   pnpm exec tsx packages/wire/scripts/bench-codec.ts [--shape 4,128,768] [--runs 30]
 *
 * The default shape is GPT-2 small's activations at batch 4 x 128 (1.5 MiB of f32): with labels on
 * the device a step sends four such frames over each hop, each encoded once and decoded once. The
 * frame is decoded from a view at an odd offset of a larger buffer, as a WebSocket may hand it.
 */
import { parseArgs } from 'node:util';
import { CODECS } from '../src/codecs';
import { decodeFrameWith, encodeFrameWith, type WireMessageSpec } from '../src/frame';

const { values: opt } = parseArgs({
  options: { shape: { type: 'string', default: '4,128,768' }, runs: { type: 'string', default: '30' } },
});
const shape = opt.shape.split(',').map(Number);
const runs = Number(opt.runs);
if (shape.some((d) => !(Number.isInteger(d) && d > 0))) throw new Error(`--shape: positive integers, got ${opt.shape}`);
if (!(Number.isInteger(runs) && runs > 0)) throw new Error(`--runs: a positive integer, got ${opt.runs}`);

const spec: WireMessageSpec = { fields: {}, anyTensors: 'f32' };
const n = shape.reduce((a, b) => a * b, 1);
let seed = 1;
const data = new Float32Array(n).map(() => {
  seed = (seed * 1103515245 + 12345) % 2 ** 31;
  return seed / 2 ** 31 - 0.5;
});
const WARMUP = 3;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

console.log(`one frame of f32 [${shape.join(', ')}] (${((n * 4) / 2 ** 20).toFixed(2)} MiB), median of ${runs} runs`);
for (const codec of CODECS) {
  const enc: number[] = [];
  const dec: number[] = [];
  for (let r = 0; r < WARMUP + runs; r++) {
    const t0 = performance.now();
    const frame = encodeFrameWith(spec, 'bench', {}, { x: { data, shape, codec } });
    const t1 = performance.now();
    const received = new Uint8Array(frame.length + 1);
    received.set(frame, 1);
    const t2 = performance.now();
    decodeFrameWith(received.subarray(1), { maxBytes: received.length }, () => spec);
    const t3 = performance.now();
    if (r >= WARMUP) {
      enc.push(t1 - t0);
      dec.push(t3 - t2);
    }
  }
  console.log(`  ${codec.padEnd(4)} encode ${median(enc).toFixed(2)} ms, decode ${median(dec).toFixed(2)} ms`);
}
const copy: number[] = [];
for (let r = 0; r < WARMUP + runs; r++) {
  const t0 = performance.now();
  new Float32Array(n).set(data);
  if (r >= WARMUP) copy.push(performance.now() - t0);
}
console.log(`  new Float32Array(n).set(x): ${median(copy).toFixed(2)} ms`);
