/**
 * Every message of the protocol, one registry per channel (a hop and a transport), and one typed
 * encoder and decoder that both the sender and the receiver use.
 *
 * A channel's registry is the single place a message is declared: its fields with their kinds,
 * the tensors it must carry (dtype and rank) and whether it carries a variable set of LoRA arrays.
 * The TypeScript types of the outgoing and incoming forms are derived from it, so a missing or
 * misspelled field is a compile error at the sender and at the receiver. `forward` on the
 * user -> edge hop and `forward` on the edge -> cloud hop are two messages (the edge adds the
 * user's id), declared on their own channels.
 *
 * Adding a message: one entry in one registry below. Adding a field: one key in its entry.
 * Adding a codec: `codecs.ts`.
 */
import type { Codec } from './codecs';
import { ProtocolError } from './errors';
import {
  type DecodedTensor,
  type DecodeLimits,
  decodeFrameWith,
  encodeFrameWith,
  MAX_ERROR_MESSAGE_LENGTH,
  MAX_STRING_FIELD_LENGTH,
  type TensorInput,
  type WireMessageSpec,
} from './frame';

// ---------------------------------------------------------------- generation over HTTP

/** Room for the JSON header of a generation frame (`generate`, `logits`) on top of its tensor. */
export const GENERATION_HEADER_BYTES = 64 * 1024;

/** The request header that names the user of a generation request (its token is the bearer token). */
export const GENERATE_USER_HEADER = 'x-splitllm-user';

/** The size limit of a `generate` frame: h [1, T <= positions, D = width] as f32, and its header (modelDims). */
export function maxGenerateFrameBytes(c: { positions: number; width: number }): number {
  return c.positions * c.width * 4 + GENERATION_HEADER_BYTES;
}

/** The size limit of a `logits` frame: logits [V] as f32, and its header. */
export function maxLogitsFrameBytes(c: { vocabSize: number }): number {
  return c.vocabSize * 4 + GENERATION_HEADER_BYTES;
}

// ---------------------------------------------------------------- the registries

const F32_RANK3 = { dtype: 'f32', rank: 3 } as const;
const I32_RANK2 = { dtype: 'i32', rank: 2 } as const;

/**
 * Sent on every channel that may fail: a coded error (see errors.ts) and a sentence; the cloud
 * names the user whose frame it refused, so that an edge training several users at once ('sfl')
 * ends that user's turn only.
 */
const ERROR = { fields: { code: 'string', message: 'text', userId: 'string?' } } as const;
/** The global version moves on: round `round` recorded version `version`. */
const ROUND_END = { fields: { round: 'int', version: 'int' } } as const;
/** dL/dh for the step just forwarded, with the batch's mean loss and the tokens it counted. */
const BACKWARD = {
  fields: { round: 'int', step: 'int', loss: 'number', count: 'int' },
  tensors: { dh: F32_RANK3 },
} as const;
/** Labels on the device: the last hidden state hL [B, T, D] of the step, cloud -> edge -> user. */
const HIDDEN = { fields: { round: 'int', step: 'int' }, tensors: { h: F32_RANK3 } } as const;
/**
 * Labels on the device: dL/dhL [B, T, D] from the tab's head and loss, with the batch's mean
 * loss and the targets it counted, as numbers (the tab reports them; no label travels).
 */
const HEAD_GRAD = {
  fields: { round: 'int', step: 'int', loss: 'number', count: 'int' },
  tensors: { dh: F32_RANK3 },
} as const;

export const CHANNELS = {
  /** The user's socket to its edge (`GET /ws/user`), user -> edge. */
  userToEdge: {
    /** The first frame on a socket: who this is, and the token the cloud gave for this (user, edge). */
    hello: { fields: { userId: 'string', token: 'string' } },
    /** Labels in the cloud: one step's activations h1 [B, T, D] and the batch's labels [B, T]. */
    forward: { fields: { round: 'int', step: 'int' }, tensors: { h: F32_RANK3, targets: I32_RANK2 } },
    /** Labels on the device: one step's activations h1 [B, T, D], nothing else. */
    activations: { fields: { round: 'int', step: 'int' }, tensors: { h: F32_RANK3 } },
    'head-grad': HEAD_GRAD,
    /** The user's adapter after its turn: LoRA arrays of blocks [0, k). */
    adapter: { fields: { round: 'int', tokens: 'int', steps: 'int' }, anyTensors: 'f32' },
    /** The user leaves the queue (pause, tab closed). */
    bye: { fields: { reason: 'string' } },
  },
  /** The same socket, edge -> user. */
  edgeToUser: {
    welcome: { fields: { userId: 'string', edgeId: 'string', version: 'int', position: 'int' } },
    queue: { fields: { position: 'int', waiting: 'int' } },
    /**
     * The user's turn begins: `steps` steps of batch [batch, seq], activations in `codec`. The
     * user starts from the global version's adapter, or, with 'sequential', from the LoRA arrays
     * of blocks [0, k) carried here (the adapter the user before it left; none for the first).
     */
    turn: {
      fields: { round: 'int', version: 'int', steps: 'int', batch: 'int', seq: 'int', codec: 'codec' },
      anyTensors: 'f32',
    },
    hidden: HIDDEN,
    backward: BACKWARD,
    /** The turn is over; `accepted` false means it was rolled back (`reason` says why). */
    'turn-end': { fields: { round: 'int', accepted: 'bool', reason: 'string?' } },
    'round-end': ROUND_END,
    error: ERROR,
  },
  /** The edge's socket to the cloud (`GET /ws/edge`), edge -> cloud. */
  edgeToCloud: {
    'edge-status': { fields: { waiting: 'int' } },
    'user-begin': { fields: { round: 'int', userId: 'string' } },
    'user-dropped': { fields: { round: 'int', userId: 'string' } },
    /** Labels in the cloud: one step's activations h2 [B, T, D] and the labels, for the user now training. */
    forward: {
      fields: { round: 'int', step: 'int', userId: 'string' },
      tensors: { h: F32_RANK3, targets: I32_RANK2 },
    },
    /** Labels on the device: one step's activations h2 [B, T, D], for the user now training. */
    activations: { fields: { round: 'int', step: 'int', userId: 'string' }, tensors: { h: F32_RANK3 } },
    /** Labels on the device: the user's dL/dhL, relayed as the user sent it. */
    'head-grad': { fields: { ...HEAD_GRAD.fields, userId: 'string' }, tensors: HEAD_GRAD.tensors },
    error: ERROR,
  },
  /** The same socket, cloud -> edge. */
  cloudToEdge: {
    /** On connect: the edge's id and the current global version. */
    'edge-welcome': { fields: { edgeId: 'string', version: 'int' } },
    'round-start': { fields: { round: 'int', version: 'int', usersPerEdge: 'int', stepsPerUser: 'int' } },
    /** HIDDEN and BACKWARD for a user, named: with 'sfl' an edge has several users' steps in flight */
    hidden: { fields: { ...HIDDEN.fields, userId: 'string' }, tensors: HIDDEN.tensors },
    backward: { fields: { ...BACKWARD.fields, userId: 'string' }, tensors: BACKWARD.tensors },
    'round-end': ROUND_END,
    error: ERROR,
  },
  /**
   * An edge's round result (`POST /api/rounds/:round/update`): its adapter as `edge.*` arrays and
   * each user's as `user.{userId}.*` (see updateTensorPrefix), and the users it trained; and what
   * the edge process held over the round (its high-water RSS where the platform says, and the
   * bytes of per-user training state it counted: HeldBytes in packages/federation).
   */
  edgeUpload: {
    update: {
      fields: {
        round: 'int',
        edgeId: 'string',
        tokens: 'int',
        users: 'users',
        userBytes: 'int',
        heldPeak: 'int',
        peakRss: 'int?',
      },
      anyTensors: 'f32',
    },
  },
  /** An adapter part as a file: the cloud's `/api/adapters/:version/:tier`, the edge's `/api/adapters/user`. */
  adapterFile: {
    adapter: { fields: { round: 'int', tokens: 'int', steps: 'int' }, anyTensors: 'f32' },
  },
  /** Generation (`POST /api/generate`), user -> edge: h1 [1, T, D] of the context. */
  userGenerate: { generate: { fields: {}, tensors: { h: F32_RANK3 } } },
  /** Generation, edge -> cloud: h2 [1, T, D], for this user, with the version whose edge adapter ran. */
  edgeGenerate: { generate: { fields: { userId: 'string', version: 'int' }, tensors: { h: F32_RANK3 } } },
  /**
   * Generation's answer, cloud -> edge -> user: labels in the cloud, the last position's logits
   * [V]; labels on the device, its last hidden state [D] (the tab runs the head).
   */
  logits: {
    logits: { fields: { version: 'int' }, tensors: { logits: { dtype: 'f32', rank: 1 } } },
    hidden: { fields: { version: 'int' }, tensors: { h: { dtype: 'f32', rank: 1 } } },
  },
} as const satisfies Record<string, Record<string, WireMessageSpec>>;

export type Channel = keyof typeof CHANNELS;
export type MessageTypeOn<C extends Channel> = keyof (typeof CHANNELS)[C] & string;

// ---------------------------------------------------------------- types derived from the registries

/** One user line of an `update`: what that user trained this round. */
export interface UpdateUser {
  userId: string;
  tokens: number;
  steps: number;
}

type FieldValue<K> = K extends 'int' | 'number' | 'int?' | 'number?'
  ? number
  : K extends 'string' | 'text' | 'string?' | 'text?'
    ? string
    : K extends 'bool' | 'bool?'
      ? boolean
      : K extends 'codec'
        ? Codec
        : K extends 'users'
          ? UpdateUser[]
          : never;
type RequiredKeys<F> = { [K in keyof F]: F[K] extends `${string}?` ? never : K }[keyof F];
type FieldsOf<F> = { -readonly [K in RequiredKeys<F>]: FieldValue<F[K]> } & {
  -readonly [K in Exclude<keyof F, RequiredKeys<F>>]?: FieldValue<F[K]>;
};
type Spec<C extends Channel, T extends MessageTypeOn<C>> = (typeof CHANNELS)[C][T];
type SpecFields<S> = S extends { fields: infer F } ? FieldsOf<F> : never;
type TensorData<D> = D extends { dtype: 'i32' } ? Int32Array : Float32Array;

/** A tensor as decoded, with its data typed by the registry's dtype. */
export interface WireTensor<A extends Float32Array | Int32Array = Float32Array | Int32Array> extends DecodedTensor {
  data: A;
}

type InTensors<S> = S extends { tensors: infer T }
  ? { -readonly [K in keyof T]: WireTensor<TensorData<T[K]>> }
  : unknown;
type OutTensors<S> = S extends { tensors: infer T }
  ? { -readonly [K in keyof T]: { data: TensorData<T[K]>; shape: number[]; codec?: Codec } }
  : unknown;
type InAny<S> = S extends { anyTensors: 'f32' } ? { tensors: Map<string, WireTensor<Float32Array>> } : unknown;
type OutAny<S> = S extends { anyTensors: 'f32' }
  ? { tensors: Map<string, { data: Float32Array; shape: number[] }> }
  : unknown;

/** The message `T` on channel `C` as its sender writes it. */
export type Outgoing<C extends Channel, T extends MessageTypeOn<C>> = SpecFields<Spec<C, T>> &
  OutTensors<Spec<C, T>> &
  OutAny<Spec<C, T>>;

/** The message `T` on channel `C` as its receiver reads it: checked fields, tensors by name. */
export type Incoming<C extends Channel, T extends MessageTypeOn<C>> = { type: T } & SpecFields<Spec<C, T>> &
  InTensors<Spec<C, T>> &
  InAny<Spec<C, T>>;

/** Any message of channel `C` (a union discriminated by `type`). */
export type MessageOn<C extends Channel> = { [T in MessageTypeOn<C>]: Incoming<C, T> }[MessageTypeOn<C>];

// ---------------------------------------------------------------- encode and decode

function specOf(channel: Channel, type: string): WireMessageSpec | undefined {
  const registry = CHANNELS[channel] as Record<string, WireMessageSpec>;
  return Object.hasOwn(registry, type) ? registry[type] : undefined;
}

/** Every type some channel carries: what a receiver tells apart from a type nobody speaks. */
const KNOWN_TYPES: ReadonlySet<string> = new Set(Object.values(CHANNELS).flatMap((registry) => Object.keys(registry)));

/** Builds the frame of message `type` on `channel`; validates it as the receiver will. */
export function encodeMessage<C extends Channel, T extends MessageTypeOn<C>>(
  channel: C,
  type: T,
  message: Outgoing<C, T>,
): Uint8Array {
  const spec = specOf(channel, type);
  if (!spec) throw new ProtocolError('UNKNOWN_TYPE', `"${type}" is not a message of channel ${channel}`);
  const m = message as Record<string, unknown>;
  const fields: Record<string, unknown> = {};
  for (const name of Object.keys(spec.fields)) if (m[name] !== undefined) fields[name] = m[name];
  const tensors = new Map<string, TensorInput>();
  for (const name of Object.keys(spec.tensors ?? {})) tensors.set(name, m[name] as TensorInput);
  if (spec.anyTensors) for (const [name, t] of m.tensors as Map<string, TensorInput>) tensors.set(name, t);
  return encodeFrameWith(spec, type, fields, tensors);
}

/**
 * Decodes and fully validates a frame received on `channel`: a type no channel carries is
 * UNKNOWN_TYPE, a type of another channel UNEXPECTED_TYPE (a peer that speaks the protocol but
 * sent it to the wrong place), a field or tensor off its registry entry BAD_FIELD / BAD_TENSOR /
 * BAD_SHAPE. Fields the registry does not list are dropped. Throws ProtocolError only.
 */
export function decodeMessage<C extends Channel>(channel: C, bytes: Uint8Array, limits?: DecodeLimits): MessageOn<C> {
  const frame = decodeFrameWith(bytes, limits, (type) => {
    const spec = specOf(channel, type);
    if (spec) return spec;
    if (!KNOWN_TYPES.has(type)) throw new ProtocolError('UNKNOWN_TYPE', `unknown message type ${JSON.stringify(type)}`);
    throw new ProtocolError('UNEXPECTED_TYPE', `"${type}" is not a message of channel ${channel}`);
  });
  const spec = specOf(channel, frame.type)!;
  const out: Record<string, unknown> = { type: frame.type };
  for (const name of Object.keys(spec.fields)) {
    if (Object.hasOwn(frame.fields, name)) out[name] = frame.fields[name];
  }
  for (const name of Object.keys(spec.tensors ?? {})) out[name] = frame.tensors.get(name);
  if (spec.anyTensors) out.tensors = frame.tensors;
  return out as MessageOn<C>;
}

/** Decodes a frame on `channel` that must be message `type` (an HTTP body, an awaited reply). */
export function decodeExpected<C extends Channel, T extends MessageTypeOn<C>>(
  channel: C,
  type: T,
  bytes: Uint8Array,
  limits?: DecodeLimits,
): Incoming<C, T> {
  const m = decodeMessage(channel, bytes, limits);
  if (m.type !== type) throw new ProtocolError('UNEXPECTED_TYPE', `expected a "${type}" message, got "${m.type}"`);
  return m as Incoming<C, T>;
}

/**
 * The error frame of any channel. Never throws: it runs inside error handlers, so an empty or
 * overlong code or message is repaired rather than refused.
 */
export function encodeErrorMessage(code: string, message: string, userId?: string): Uint8Array {
  const c = String(code).slice(0, MAX_STRING_FIELD_LENGTH) || 'ERROR';
  const m = String(message).slice(0, MAX_ERROR_MESSAGE_LENGTH) || c;
  const fields: Record<string, unknown> = { code: c, message: m };
  if (userId !== undefined && userId.length > 0 && userId.length <= MAX_STRING_FIELD_LENGTH) fields.userId = userId;
  return encodeFrameWith(ERROR, 'error', fields, new Map());
}

// ---------------------------------------------------------------- checks on decoded messages

function shapeText(shape: readonly (number | null)[]): string {
  return `[${shape.map((d) => (d === null ? '*' : String(d))).join(', ')}]`;
}

/** The tensor's data, whose shape must match `shape` (null: any size in that dimension). */
export function expectShape<A extends Float32Array | Int32Array>(
  t: WireTensor<A>,
  what: string,
  shape: readonly (number | null)[],
): A {
  const ok = t.shape.length === shape.length && shape.every((d, i) => d === null || d === t.shape[i]);
  if (!ok)
    throw new ProtocolError('BAD_SHAPE', `${what} has shape ${shapeText(t.shape)}, expected ${shapeText(shape)}`);
  return t.data;
}

/**
 * Labels as a forward carries them: each a token id in [0, vocabSize) or the ignore index (a
 * padded position); anything else is BAD_TARGET, refused before it reaches a loss.
 */
export function checkTargets(targets: Int32Array, vocabSize: number, ignoreIndex: number): void {
  for (let i = 0; i < targets.length; i++) {
    const t = targets[i];
    if (t !== ignoreIndex && !(t >= 0 && t < vocabSize)) {
      throw new ProtocolError(
        'BAD_TARGET',
        `target ${t} at position ${i} is outside [0, ${vocabSize}) and is not ${ignoreIndex}`,
      );
    }
  }
}

/**
 * The loss and count a tab reports with its head-grad (labels on the device): a count of targets
 * in [0, rows] (a tab can never count more targets than its batch has positions, and the count
 * weighs its adapter in the aggregate) and a finite loss >= 0 (a cross-entropy never is negative).
 */
export function checkHeadReport(m: { loss: number; count: number; step: number }, rows: number): void {
  if (!(Number.isFinite(m.loss) && m.loss >= 0)) {
    throw new ProtocolError('BAD_LOSS', `the loss of step ${m.step} is ${m.loss}: it must be a finite number >= 0`);
  }
  if (!(Number.isInteger(m.count) && m.count >= 0 && m.count <= rows)) {
    throw new ProtocolError('BAD_COUNT', `step ${m.step} counts ${m.count} targets: a batch has at most ${rows}`);
  }
}

/** Rejects a message from another round or step: late frames must not leak into the current one. */
export function expectRoundStep(m: { type: string; round: number; step?: number }, round: number, step?: number): void {
  if (m.round !== round) {
    throw new ProtocolError('WRONG_ROUND', `message "${m.type}" is for round ${m.round}, expected round ${round}`);
  }
  if (step !== undefined && m.step === undefined) {
    // a caller asking for the step of a message that has none: a bug, not a late frame
    throw new ProtocolError('BAD_FIELD', `message "${m.type}": field "step" is missing`);
  }
  if (step !== undefined && m.step !== step) {
    throw new ProtocolError('WRONG_STEP', `message "${m.type}" is for step ${m.step}, expected step ${step}`);
  }
}

// ---------------------------------------------------------------- adapter uploads

/** The tensor-name prefix of the edge's own adapter in an `update`. */
export const UPDATE_EDGE_PREFIX = 'edge.';
/** The tensor-name prefix of one user's adapter in an `update`. */
export function updateUserPrefix(userId: string): string {
  return `user.${userId}.`;
}
