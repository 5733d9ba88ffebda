/**
 * The typed message API: every message of every channel, the channel a type may travel on, the
 * field kinds, required tensors, the checks on decoded messages and the error frame.
 */
import { Rng } from '@splitllm/model';
import { describe, expect, it } from 'vitest';
import {
  type Channel,
  CHANNELS,
  CODECS,
  type DecodeLimits,
  decodeExpected,
  decodeMessage,
  encodeErrorMessage,
  encodeMessage,
  expectRoundStep,
  expectShape,
  GENERATE_USER_HEADER,
  GENERATION_HEADER_BYTES,
  MAX_UPDATE_USERS,
  maxGenerateFrameBytes,
  maxLogitsFrameBytes,
  type Outgoing,
  UPDATE_EDGE_PREFIX,
  updateUserPrefix,
  type WireFieldKind,
  type WireMessageSpec,
} from '../src/index';
import { expectCode, forwardHeader, H, PAYLOAD12, rawFrame, randn, TARGETS } from './helpers';

// ---------------------------------------------------------------- helpers

type Loose = Record<string, unknown> & { type: string };
/** encodeMessage / decodeMessage without the registry's types, for tests that iterate the registry. */
const encodeAny = encodeMessage as unknown as (
  channel: Channel,
  type: string,
  m: Record<string, unknown>,
) => Uint8Array;
const decodeAny = decodeMessage as unknown as (channel: Channel, bytes: Uint8Array, limits?: DecodeLimits) => Loose;

const CHANNEL_NAMES = Object.keys(CHANNELS) as Channel[];
const registryOf = (c: Channel) => CHANNELS[c] as Record<string, WireMessageSpec>;

/** A valid value of each field kind. */
const SAMPLE: Record<WireFieldKind, unknown> = {
  int: 4,
  number: -1.5,
  string: 'abc',
  text: 'x'.repeat(1500),
  bool: false,
  codec: 'f16',
  users: [
    { userId: 'u1', tokens: 3, steps: 2 },
    { userId: 'u2', tokens: 0, steps: 0 },
  ],
};

/** A valid message for `spec`: every required field, optional ones when `withOptional`. */
function sampleMessage(spec: WireMessageSpec, rng: Rng, withOptional: boolean): Record<string, unknown> {
  const m: Record<string, unknown> = {};
  for (const [name, kind] of Object.entries(spec.fields)) {
    const optional = kind.endsWith('?');
    if (optional && !withOptional) continue;
    m[name] = SAMPLE[(optional ? kind.slice(0, -1) : kind) as WireFieldKind];
  }
  for (const [name, t] of Object.entries(spec.tensors ?? {})) {
    const shape = Array.from({ length: t.rank }, (_, i) => 2 + i);
    const n = shape.reduce((a, b) => a * b, 1);
    m[name] =
      t.dtype === 'i32'
        ? { data: Int32Array.from({ length: n }, (_, i) => i - 3), shape }
        : { data: randn(rng, n), shape };
  }
  if (spec.anyTensors) {
    m.tensors = new Map([
      ['h.0.attn.c_attn.lora_A', { data: randn(rng, 6), shape: [3, 2] }],
      ['h.0.attn.c_attn.lora_B', { data: randn(rng, 8), shape: [2, 4] }],
    ]);
  }
  return m;
}

function forwardBytes(rng: Rng): Uint8Array {
  return encodeMessage('userToEdge', 'forward', {
    round: 3,
    step: 1,
    h: { data: randn(rng, 2 * 3 * 4), shape: [2, 3, 4] },
    targets: { data: new Int32Array([1, 2, 3, 4, 5, 50256]), shape: [2, 3] },
  });
}

// ---------------------------------------------------------------- the registry

describe('messages: every message of every channel', () => {
  it('round-trips with its required content, with and without its optional fields', () => {
    const rng = new Rng(6);
    const kinds = new Set<string>();
    let messages = 0;
    for (const channel of CHANNEL_NAMES) {
      for (const [type, spec] of Object.entries(registryOf(channel))) {
        for (const withOptional of [true, false]) {
          const sent = sampleMessage(spec, rng, withOptional);
          const got = decodeAny(channel, encodeAny(channel, type, sent));
          const what = `${channel}/${type}`;
          expect(got.type, what).toBe(type);
          const keys = ['type'];
          for (const [name, kind] of Object.entries(spec.fields)) {
            kinds.add(kind);
            if (Object.hasOwn(sent, name)) {
              keys.push(name);
              expect(got[name], `${what}.${name}`).toEqual(sent[name]);
            } else {
              expect(Object.hasOwn(got, name), `${what}.${name} absent`).toBe(false);
            }
          }
          for (const [name, t] of Object.entries(spec.tensors ?? {})) {
            keys.push(name);
            const want = sent[name] as { data: Float32Array | Int32Array; shape: number[] };
            const have = got[name] as { data: Float32Array | Int32Array; shape: number[]; codec: string };
            expect(have.data, `${what}.${name}`).toBeInstanceOf(t.dtype === 'i32' ? Int32Array : Float32Array);
            expect(have.codec).toBe(t.dtype === 'i32' ? 'i32' : 'f32');
            expect(have.shape).toEqual(want.shape);
            expect(Array.from(have.data)).toEqual(Array.from(want.data));
          }
          if (spec.anyTensors) {
            keys.push('tensors');
            const want = sent.tensors as Map<string, { data: Float32Array; shape: number[] }>;
            const have = got.tensors as Map<string, { data: Float32Array; shape: number[] }>;
            expect([...have.keys()]).toEqual([...want.keys()]);
            for (const [name, t] of want) {
              expect(have.get(name)!.shape).toEqual(t.shape);
              expect(Array.from(have.get(name)!.data)).toEqual(Array.from(t.data));
            }
          }
          expect(Object.keys(got).sort(), what).toEqual(keys.sort());
          messages++;
        }
      }
    }
    expect(messages).toBeGreaterThan(2 * CHANNEL_NAMES.length);
    // the registry exercises every kind, and the optional form of one
    for (const kind of ['int', 'number', 'string', 'text', 'bool', 'codec', 'users', 'string?']) {
      expect(kinds.has(kind), kind).toBe(true);
    }
  });

  it('a type is UNEXPECTED_TYPE on a channel that does not carry it, and the same name may differ per channel', () => {
    const rng = new Rng(7);
    let refused = 0;
    for (const channel of CHANNEL_NAMES) {
      for (const [type, spec] of Object.entries(registryOf(channel))) {
        const bytes = encodeAny(channel, type, sampleMessage(spec, rng, true));
        for (const other of CHANNEL_NAMES) {
          if (Object.hasOwn(registryOf(other), type)) continue;
          expectCode(() => decodeAny(other, bytes), 'UNEXPECTED_TYPE', `"${type}"`, other);
          refused++;
        }
      }
    }
    expect(refused).toBeGreaterThan(0);
    // forward user -> edge has no userId; forward edge -> cloud must have one
    const fromUser = forwardBytes(rng);
    expectCode(() => decodeMessage('edgeToCloud', fromUser), 'BAD_FIELD', '"userId"', '"forward"');
    // a type no channel carries is UNKNOWN_TYPE, on every channel
    for (const channel of CHANNEL_NAMES) {
      expectCode(() => decodeMessage(channel, rawFrame({ type: 'pwn', tensors: [] })), 'UNKNOWN_TYPE', '"pwn"');
      expectCode(() => decodeMessage(channel, rawFrame({ type: 'toString', tensors: [] })), 'UNKNOWN_TYPE');
      expectCode(() => decodeMessage(channel, rawFrame({ type: '__proto__', tensors: [] })), 'UNKNOWN_TYPE');
      expectCode(() => decodeMessage(channel, rawFrame({ tensors: [] })), 'UNKNOWN_TYPE');
    }
    // the encoder refuses a type its channel does not declare (a cast got past the compiler)
    expectCode(() => encodeMessage('userToEdge', 'pwn' as 'bye', { reason: 'x' }), 'UNKNOWN_TYPE', '"pwn"');
    const welcome = { userId: 'u', edgeId: 'e', version: 0, position: 1 };
    expectCode(() => encodeAny('userToEdge', 'welcome', welcome), 'UNKNOWN_TYPE', 'userToEdge');
  });
});

// ---------------------------------------------------------------- fields

describe('messages: fields', () => {
  it('missing or wrongly typed fields name the field and the type', () => {
    const turnEnd = (fields: Record<string, unknown>) => rawFrame({ type: 'turn-end', ...fields, tensors: [] });
    const onUser = (bytes: Uint8Array) => () => decodeMessage('edgeToUser', bytes);
    expect(onUser(turnEnd({ round: 1, accepted: true }))()).toEqual({ type: 'turn-end', round: 1, accepted: true });
    expectCode(onUser(turnEnd({ accepted: true })), 'BAD_FIELD', '"round"', '"turn-end"');
    expectCode(onUser(turnEnd({ round: -1, accepted: true })), 'BAD_FIELD', '"round"');
    expectCode(onUser(turnEnd({ round: 1.5, accepted: true })), 'BAD_FIELD', '"round"');
    expectCode(onUser(turnEnd({ round: '1', accepted: true })), 'BAD_FIELD', '"round"');
    expectCode(onUser(turnEnd({ round: 2 ** 53, accepted: true })), 'BAD_FIELD', '"round"');
    expectCode(onUser(turnEnd({ round: 1, accepted: 1 })), 'BAD_FIELD', '"accepted"');
    const hello = (userId: unknown) => () =>
      decodeMessage('userToEdge', rawFrame({ type: 'hello', userId, token: 't', tensors: [] }));
    expectCode(hello(''), 'BAD_FIELD', '"userId"', '"hello"', 'non-empty');
    expectCode(hello('u'.repeat(257)), 'BAD_FIELD', '"userId"', 'at most 256');
    expectCode(hello(7), 'BAD_FIELD', '"userId"');
    expect(() => hello('u'.repeat(256))()).not.toThrow();
    const error = (message: string) => () =>
      decodeMessage('cloudToEdge', rawFrame({ type: 'error', code: 'X', message, tensors: [] }));
    expect(() => error('m'.repeat(2000))()).not.toThrow();
    expectCode(error('m'.repeat(2001)), 'BAD_FIELD', '"message"');
    const backward = (loss: unknown) => () =>
      decodeMessage('cloudToEdge', rawFrame({ type: 'backward', round: 1, step: 1, loss, count: 1, tensors: [] }));
    expectCode(backward('1'), 'BAD_FIELD', '"loss"', 'finite');
    expectCode(backward(null), 'BAD_FIELD', '"loss"');
    // the encoder checks the same registry
    const dh = { data: new Float32Array(1), shape: [1, 1, 1] };
    expectCode(
      () => encodeMessage('edgeToUser', 'backward', { round: 1, step: 1, loss: NaN, count: 1, dh }),
      'BAD_FIELD',
      '"loss"',
      'NaN',
    );
    expectCode(
      () => encodeMessage('userToEdge', 'hello', { userId: 'u' } as Outgoing<'userToEdge', 'hello'>),
      'BAD_FIELD',
      '"token"',
    );
    expectCode(() => encodeAny('userToEdge', 'hello', { userId: 'u', token: 5 }), 'BAD_FIELD', '"token"');
    const b = decodeExpected(
      'edgeToUser',
      'backward',
      encodeMessage('edgeToUser', 'backward', {
        round: 1,
        step: 2,
        loss: -0.5,
        count: 1,
        dh,
      }),
    );
    expect(b.loss).toBe(-0.5);
  });

  it('fields off the registry are dropped both ways; "__proto__" cannot pollute', () => {
    const sent = encodeAny('userToEdge', 'hello', { userId: 'u', token: 't', extra: 1, session: 'abc' });
    const headerLength = new DataView(sent.buffer, sent.byteOffset).getUint32(0, true);
    const header = JSON.parse(new TextDecoder().decode(sent.subarray(4, 4 + headerLength))) as Record<string, unknown>;
    expect(Object.keys(header).sort()).toEqual(['tensors', 'token', 'type', 'userId']);
    const received = rawFrame({ type: 'hello', userId: 'u', token: 't', session: 'abc', tensors: [] });
    expect(decodeMessage('userToEdge', received)).toEqual({ type: 'hello', userId: 'u', token: 't' });
    const proto = decodeMessage(
      'edgeToCloud',
      rawFrame('{"type":"edge-status","waiting":1,"__proto__":{"polluted":1},"tensors":[]}'),
    );
    expect(Object.getPrototypeOf(proto)).toBe(Object.prototype);
    expect(proto).toEqual({ type: 'edge-status', waiting: 1 });
    expect((proto as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('optional fields: absent, or present and valid', () => {
    const turnEnd = (fields: Record<string, unknown>) => () =>
      decodeMessage('edgeToUser', rawFrame({ type: 'turn-end', round: 1, accepted: false, ...fields, tensors: [] }));
    const without = turnEnd({})();
    expect(without.type === 'turn-end' && without.reason).toBeUndefined();
    expect(Object.hasOwn(without, 'reason')).toBe(false);
    const withReason = turnEnd({ reason: 'ADAPTER_NORM' })();
    expect(withReason).toEqual({ type: 'turn-end', round: 1, accepted: false, reason: 'ADAPTER_NORM' });
    expectCode(turnEnd({ reason: '' }), 'BAD_FIELD', '"reason"');
    expectCode(turnEnd({ reason: 'r'.repeat(257) }), 'BAD_FIELD', '"reason"');
    expectCode(turnEnd({ reason: null }), 'BAD_FIELD', '"reason"');
    expectCode(turnEnd({ reason: 3 }), 'BAD_FIELD', '"reason"');
    // the sender may leave it out or set it
    const sent = encodeMessage('edgeToUser', 'turn-end', { round: 2, accepted: true });
    expect(decodeExpected('edgeToUser', 'turn-end', sent)).toEqual({ type: 'turn-end', round: 2, accepted: true });
    const refused = encodeMessage('edgeToUser', 'turn-end', { round: 2, accepted: false, reason: 'X' });
    expect(decodeExpected('edgeToUser', 'turn-end', refused).reason).toBe('X');
  });

  it("'codec' is one of CODECS", () => {
    const turn = (codec: unknown) => () =>
      decodeMessage(
        'edgeToUser',
        rawFrame({ type: 'turn', round: 1, version: 0, steps: 2, batch: 2, seq: 16, codec, tensors: [] }),
      );
    for (const codec of CODECS) {
      const m = turn(codec)();
      expect(m.type === 'turn' && m.codec).toBe(codec);
      const turnFields = { round: 1, version: 0, steps: 2, batch: 2, seq: 16, codec, tensors: new Map() };
      const sent = encodeMessage('edgeToUser', 'turn', turnFields);
      expect(decodeExpected('edgeToUser', 'turn', sent).codec).toBe(codec);
    }
    expectCode(turn('bf16'), 'BAD_FIELD', '"codec"', '"turn"', 'f32, f16, int8');
    expectCode(turn('i32'), 'BAD_FIELD', '"codec"'); // the labels' codec is never a run's
    expectCode(turn(undefined), 'BAD_FIELD', '"codec"');
    expectCode(turn(['f32']), 'BAD_FIELD', '"codec"');
  });

  it("'users' is a bounded list of {userId, tokens, steps}", () => {
    const base = { type: 'update', round: 0, edgeId: 'e', tokens: 0, userBytes: 0, heldPeak: 0, tensors: [] };
    const update = (fields: Record<string, unknown>) => () =>
      decodeMessage('edgeUpload', rawFrame({ ...base, ...fields }));
    const users = [
      { userId: 'u1', tokens: 5, steps: 2 },
      { userId: 'u2', tokens: 0, steps: 0 },
    ];
    const m = decodeExpected('edgeUpload', 'update', rawFrame({ ...base, users }));
    expect(m.users).toEqual(users);
    expect(m.tensors.size).toBe(0);
    expect(update({ users: [] })()).toMatchObject({ users: [] });
    expectCode(update({}), 'BAD_FIELD', '"users"', '"update"');
    expectCode(update({ users: null }), 'BAD_FIELD', '"users"');
    expectCode(update({ users: ['u1'] }), 'BAD_FIELD', '"users"');
    expectCode(update({ users: { u1: users[0] } }), 'BAD_FIELD', '"users"');
    expectCode(update({ users: [{ userId: '', tokens: 1, steps: 1 }] }), 'BAD_FIELD', '"users"');
    expectCode(update({ users: [{ userId: 'u'.repeat(257), tokens: 1, steps: 1 }] }), 'BAD_FIELD', '"users"');
    expectCode(update({ users: [{ userId: 'u', tokens: -1, steps: 1 }] }), 'BAD_FIELD', '"users"');
    expectCode(update({ users: [{ userId: 'u', tokens: 1.5, steps: 1 }] }), 'BAD_FIELD', '"users"');
    expectCode(update({ users: [{ userId: 'u', tokens: 1 }] }), 'BAD_FIELD', '"users"');
    expectCode(update({ users: [{ userId: 7, tokens: 1, steps: 1 }] }), 'BAD_FIELD', '"users"');
    const many = Array.from({ length: MAX_UPDATE_USERS + 1 }, (_, i) => ({ userId: `u${i}`, tokens: 1, steps: 1 }));
    expectCode(update({ users: many }), 'BAD_FIELD', '"users"', String(MAX_UPDATE_USERS));
    expect(() => update({ users: many.slice(1) })()).not.toThrow();
    // the sender's side, with the edge's and the users' adapters as prefixed arrays
    const a = { data: new Float32Array([1, 2]), shape: [1, 2] };
    const tensors = new Map([
      [`${UPDATE_EDGE_PREFIX}h.2.attn.c_attn.lora_A`, a],
      [`${updateUserPrefix('u1')}h.0.attn.c_attn.lora_A`, a],
    ]);
    const sent = encodeMessage('edgeUpload', 'update', {
      round: 1,
      edgeId: 'e1',
      tokens: 5,
      users,
      userBytes: 9,
      heldPeak: 4096,
      tensors,
    });
    const got = decodeExpected('edgeUpload', 'update', sent);
    expect([...got.tensors.keys()]).toEqual(['edge.h.2.attn.c_attn.lora_A', 'user.u1.h.0.attn.c_attn.lora_A']);
    expect(got.users).toEqual(users);
    const bad = [{ userId: 'u1', tokens: -1, steps: 0 }];
    expectCode(
      () =>
        encodeMessage('edgeUpload', 'update', {
          round: 1,
          edgeId: 'e1',
          tokens: 5,
          users: bad,
          userBytes: 0,
          heldPeak: 0,
          tensors,
        }),
      'BAD_FIELD',
      '"users"',
    );
  });
});

// ---------------------------------------------------------------- tensors

describe('messages: tensors', () => {
  it('required tensors: presence, dtype, rank; extra ones are not exposed', () => {
    const onEdge =
      (tensors: unknown[], payload = PAYLOAD12) =>
      () =>
        decodeMessage('userToEdge', rawFrame(forwardHeader(tensors), payload));
    const ok = onEdge([H, TARGETS])();
    expect(ok.type).toBe('forward');
    if (ok.type !== 'forward') throw new Error('unreachable');
    expect(Array.from(expectShape(ok.h, 'h', [1, 1, 2]))).toEqual([1, 2]);
    expect(Array.from(expectShape(ok.targets, 'targets', [1, 1]))).toEqual([7]);
    expectCode(onEdge([H]), 'BAD_TENSOR', 'missing tensor "targets"');
    expectCode(onEdge([{ ...H, shape: [1, 2] }, TARGETS]), 'BAD_SHAPE', '"h"', 'rank 3');
    expectCode(onEdge([H, { ...TARGETS, dtype: 'f32', codec: 'f32' }]), 'BAD_TENSOR', '"targets"', 'expected i32');
    const extra = { name: 'e', dtype: 'f32', shape: [0], codec: 'f32', offset: 12, byteLength: 0 };
    expect(Object.keys(onEdge([H, TARGETS, extra])()).sort()).toEqual(['h', 'round', 'step', 'targets', 'type']);
    const adapter = { type: 'adapter', round: 0, tokens: 0, steps: 0 };
    const lora = (tensors: unknown[]) => () =>
      decodeMessage('userToEdge', rawFrame({ ...adapter, tensors }, PAYLOAD12));
    expectCode(lora([H, TARGETS]), 'BAD_TENSOR', '"targets"', 'expected f32');
    const onlyH = lora([H])();
    expect(onlyH.type === 'adapter' && [...onlyH.tensors.keys()]).toEqual(['h']);
    // the encoder checks them too
    const h2 = { data: new Float32Array(2), shape: [1, 2] };
    const targets = { data: new Int32Array(1), shape: [1, 1] };
    expectCode(() => encodeMessage('userToEdge', 'forward', { round: 0, step: 0, h: h2, targets }), 'BAD_SHAPE', '"h"');
    const h3 = { data: new Float32Array(2), shape: [1, 1, 2] };
    const noTargets = { round: 0, step: 0, h: h3 } as Outgoing<'userToEdge', 'forward'>;
    expectCode(() => encodeMessage('userToEdge', 'forward', noTargets), 'BAD_TENSOR', '"targets"');
    const i32 = new Map([['a', { data: new Int32Array(1) as unknown as Float32Array, shape: [1] }]]);
    expectCode(
      () => encodeMessage('userToEdge', 'adapter', { round: 0, tokens: 0, steps: 0, tensors: i32 }),
      'BAD_TENSOR',
      '"a"',
    );
  });

  it('registry tensors carry their codec', () => {
    const rng = new Rng(10);
    const data = randn(rng, 2 * 3 * 4);
    for (const codec of CODECS) {
      const sent = encodeMessage('edgeToCloud', 'forward', {
        round: 1,
        step: 1,
        userId: 'u1',
        h: { data, shape: [2, 3, 4], codec },
        targets: { data: new Int32Array(6), shape: [2, 3] },
      });
      const m = decodeExpected('edgeToCloud', 'forward', sent);
      expect(m.h.codec).toBe(codec);
      expect(m.targets.codec).toBe('i32');
      expect(m.userId).toBe('u1');
      if (codec === 'f32') expect(Array.from(m.h.data)).toEqual(Array.from(data));
    }
  });
});

// ---------------------------------------------------------------- checks on decoded messages

describe('messages: checks on decoded messages', () => {
  const m = decodeExpected('userToEdge', 'forward', forwardBytes(new Rng(7)));

  it('expectShape checks the shape, null matching any size, and returns typed data', () => {
    const h: Float32Array = expectShape(m.h, 'h', [2, 3, 4]);
    expect(h).toHaveLength(24);
    expect(expectShape(m.h, 'h', [null, null, 4])).toHaveLength(24);
    const targets: Int32Array = expectShape(m.targets, 'targets', [2, null]);
    expect(targets[5]).toBe(50256);
    expectCode(() => expectShape(m.h, 'h', [2, 3, 5]), 'BAD_SHAPE', 'h has shape', '[2, 3, 4]', '[2, 3, 5]');
    expectCode(() => expectShape(m.h, 'h', [null, 12]), 'BAD_SHAPE', '[2, 3, 4]', '[*, 12]');
    expectCode(() => expectShape(m.targets, 'targets', [2, 3, 1]), 'BAD_SHAPE', 'targets has shape', '[2, 3]');
  });

  it('expectRoundStep reports both values', () => {
    expect(() => expectRoundStep(m, 3)).not.toThrow();
    expect(() => expectRoundStep(m, 3, 1)).not.toThrow();
    expectCode(() => expectRoundStep(m, 4, 1), 'WRONG_ROUND', '"forward"', 'round 3', 'round 4');
    expectCode(() => expectRoundStep(m, 3, 2), 'WRONG_STEP', '"forward"', 'step 1', 'step 2');
    const noStep = decodeExpected(
      'edgeToUser',
      'round-end',
      encodeMessage('edgeToUser', 'round-end', { round: 3, version: 1 }),
    );
    expect(() => expectRoundStep(noStep, 3)).not.toThrow();
    expectCode(() => expectRoundStep(noStep, 2), 'WRONG_ROUND', 'round 3', 'round 2');
    expectCode(() => expectRoundStep(noStep, 3, 0), 'BAD_FIELD', '"step"');
  });

  it('decodeExpected: the type asked for, on its channel, within the limits', () => {
    const queue = encodeMessage('edgeToUser', 'queue', { position: 1, waiting: 2 });
    const q = decodeExpected('edgeToUser', 'queue', queue);
    expect(q).toEqual({ type: 'queue', position: 1, waiting: 2 });
    expectCode(
      () => decodeExpected('edgeToUser', 'backward', queue),
      'UNEXPECTED_TYPE',
      'expected a "backward"',
      '"queue"',
    );
    expectCode(() => decodeExpected('userToEdge', 'hello', queue), 'UNEXPECTED_TYPE', '"queue"', 'userToEdge');
    expectCode(() => decodeExpected('edgeToUser', 'queue', queue, { maxBytes: queue.length - 1 }), 'FRAME_TOO_LARGE');
    expect(decodeExpected('edgeToUser', 'queue', queue, { maxBytes: queue.length })).toEqual(q);
    expectCode(() => decodeExpected('edgeToUser', 'queue', new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8])), 'BAD_FRAME');
  });

  it('generation frames fit their size limits', () => {
    const c = { positions: 64, width: 32, vocabSize: 500 };
    expect(maxGenerateFrameBytes(c)).toBe(64 * 32 * 4 + GENERATION_HEADER_BYTES);
    expect(maxLogitsFrameBytes(c)).toBe(500 * 4 + GENERATION_HEADER_BYTES);
    expect(GENERATE_USER_HEADER).toBe('x-splitllm-user');
    const rng = new Rng(11);
    const h = { data: randn(rng, c.positions * c.width), shape: [1, c.positions, c.width] };
    const limit = { maxBytes: maxGenerateFrameBytes(c) };
    const fromUser = decodeExpected(
      'userGenerate',
      'generate',
      encodeMessage('userGenerate', 'generate', { h }),
      limit,
    );
    expect(expectShape(fromUser.h, 'h', [1, null, c.width])).toHaveLength(c.positions * c.width);
    const fromEdge = encodeMessage('edgeGenerate', 'generate', { userId: 'u-0123456789ab', version: 12, h });
    expect(decodeExpected('edgeGenerate', 'generate', fromEdge, limit)).toMatchObject({
      userId: 'u-0123456789ab',
      version: 12,
    });
    // the user's generate lacks the fields the cloud needs
    expectCode(
      () => decodeExpected('edgeGenerate', 'generate', encodeMessage('userGenerate', 'generate', { h })),
      'BAD_FIELD',
    );
    const logits = { data: randn(rng, c.vocabSize), shape: [c.vocabSize] };
    const answer = encodeMessage('logits', 'logits', { version: 12, logits });
    const got = decodeExpected('logits', 'logits', answer, { maxBytes: maxLogitsFrameBytes(c) });
    expect(got.version).toBe(12);
    expect(expectShape(got.logits, 'logits', [c.vocabSize])).toEqual(logits.data);
  });
});

// ---------------------------------------------------------------- the error frame

describe('messages: the error frame', () => {
  it('decodes on every channel that declares it, and only there', () => {
    const bytes = encodeErrorMessage('BAD_SHAPE', 'tensor "h" has shape [1], expected [2]');
    let carriers = 0;
    for (const channel of CHANNEL_NAMES) {
      if (Object.hasOwn(registryOf(channel), 'error')) {
        const m = decodeAny(channel, bytes);
        expect(m).toEqual({ type: 'error', code: 'BAD_SHAPE', message: 'tensor "h" has shape [1], expected [2]' });
        carriers++;
      } else {
        expectCode(() => decodeAny(channel, bytes), 'UNEXPECTED_TYPE', '"error"');
      }
    }
    expect(carriers).toBeGreaterThan(0);
    expect(decodeExpected('edgeToUser', 'error', bytes).code).toBe('BAD_SHAPE');
  });

  it('code and message are repaired rather than refused (it runs inside error handlers)', () => {
    const long = decodeExpected('edgeToUser', 'error', encodeErrorMessage('X'.repeat(300), 'm'.repeat(5000)));
    expect(long.code).toHaveLength(256);
    expect(long.message).toHaveLength(2000);
    expect(decodeExpected('edgeToUser', 'error', encodeErrorMessage('', ''))).toEqual({
      type: 'error',
      code: 'ERROR',
      message: 'ERROR',
    });
    expect(decodeExpected('edgeToUser', 'error', encodeErrorMessage('NO_ROUND', '')).message).toBe('NO_ROUND');
  });
});
