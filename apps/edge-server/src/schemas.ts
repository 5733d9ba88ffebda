/**
 * The JSON schemas the edge's routes share, registered once on the app (`addSchema`) and named
 * with `$ref: '<id>#'`. The responses that are a contract (errors, the public status, the
 * manifest, the operator's status) are closed: a field that is not declared here is not sent.
 */

import { TOKENIZER_WIRE_SCHEMA } from '@splitllm/model';

const nullable = (type: string) => ({ type: [type, 'null'] });

/** Every refusal: a code from a closed list and a sentence. */
export const errorSchema = {
  $id: 'edgeError',
  type: 'object',
  properties: { code: { type: 'string' }, message: { type: 'string' } },
  required: ['code', 'message'],
  additionalProperties: false,
} as const;

const segmentInfo = {
  type: 'object',
  properties: { sha256: { type: 'string' }, bytes: { type: 'integer' } },
  required: ['sha256', 'bytes'],
  additionalProperties: false,
};

/** The model as the manifest names it (RunManifest.model); the dashboard shows it at the top too. */
const modelInfo = {
  type: 'object',
  properties: {
    name: { type: 'string' },
    description: { type: 'string' },
    parameters: { type: 'integer' },
    demo: { type: 'boolean' },
  },
  required: ['name', 'description', 'parameters', 'demo'],
  additionalProperties: false,
} as const;

/** The run as the cloud described it (RunManifest), at the edge's current version. */
export const manifestSchema = {
  $id: 'manifest',
  type: 'object',
  definitions: {
    /** what the page tells the person before Start (RunPrivacy) */
    privacy: {
      type: 'object',
      properties: {
        labels: { type: 'string', enum: ['device', 'cloud'] },
        k: { type: 'integer' },
        noiseSigma: { type: 'number' },
        recovery: {
          anyOf: [
            { type: 'null' },
            {
              type: 'object',
              properties: {
                measuredOn: { type: 'string' },
                command: { type: 'string' },
                figures: {
                  type: 'array',
                  items: {
                    type: 'object',
                    properties: {
                      who: { type: 'string', enum: ['edge', 'cloud'] },
                      attack: { type: 'string' },
                      k: { type: 'integer' },
                      sigma: { type: 'number' },
                      tokenRate: { type: 'number' },
                      wordRate: { type: 'number' },
                    },
                    required: ['who', 'attack', 'k', 'sigma', 'tokenRate', 'wordRate'],
                    additionalProperties: false,
                  },
                },
              },
              required: ['measuredOn', 'command', 'figures'],
              additionalProperties: false,
            },
          ],
        },
      },
      required: ['labels', 'k', 'noiseSigma', 'recovery'],
      additionalProperties: false,
    },
    plan: {
      type: 'object',
      properties: { k: { type: 'integer' }, m: { type: 'integer' } },
      required: ['k', 'm'],
      additionalProperties: false,
    },
    train: {
      type: 'object',
      properties: {
        batch: { type: 'integer' },
        seq: { type: 'integer' },
        stepsPerUser: { type: 'integer' },
        usersPerEdge: { type: 'integer' },
        codec: { type: 'string', enum: ['f32', 'f16', 'int8'] },
        adamw: {
          type: 'object',
          properties: {
            lr: { type: 'number' },
            beta1: { type: 'number' },
            beta2: { type: 'number' },
            eps: { type: 'number' },
            weightDecay: { type: 'number' },
          },
          required: ['lr', 'beta1', 'beta2', 'eps', 'weightDecay'],
          additionalProperties: false,
        },
        labels: { type: 'string', enum: ['device', 'cloud'] },
        activationNoise: { type: 'number' },
        scheme: { type: 'string', enum: ['hierarchical', 'sfl', 'sequential'] },
      },
      required: [
        'batch',
        'seq',
        'stepsPerUser',
        'usersPerEdge',
        'codec',
        'adamw',
        'labels',
        'activationNoise',
        'scheme',
      ],
      additionalProperties: false,
    },
  },
  properties: {
    modelName: { type: 'string' },
    model: modelInfo,
    // the model's Hugging Face config.json, as the cloud gave it: its keys are the model's, not ours
    config: { type: 'object', additionalProperties: true },
    plan: { $ref: 'manifest#/definitions/plan' },
    lora: {
      type: 'object',
      properties: {
        r: { type: 'integer' },
        alpha: { type: 'number' },
        targets: { type: 'array', items: { type: 'string' } },
      },
      required: ['r', 'alpha', 'targets'],
      additionalProperties: false,
    },
    train: { $ref: 'manifest#/definitions/train' },
    version: { type: 'integer' },
    segments: {
      type: 'object',
      properties: { user: segmentInfo, edge: segmentInfo },
      required: ['user', 'edge'],
      additionalProperties: false,
    },
    privacy: { $ref: 'manifest#/definitions/privacy' },
  },
  required: ['modelName', 'model', 'config', 'plan', 'lora', 'train', 'version', 'segments', 'privacy'],
  additionalProperties: false,
} as const;

/**
 * The tokenizer files as the cloud serves them (TokenizerWireFiles, packages/model): GPT-2's
 * vocab.json and merges.txt, or the LLaMA family's tokenizer.json with its BOS / EOS ids.
 */
export const tokenizerSchema = { $id: 'tokenizer', ...TOKENIZER_WIRE_SCHEMA } as const;

/** GET /api/status: a summary with counts only, never a user id. */
export const publicStatusSchema = {
  $id: 'publicStatus',
  type: 'object',
  properties: {
    edgeId: { type: 'string' },
    version: { type: 'integer' },
    round: nullable('integer'),
    cloudConnected: { type: 'boolean' },
    users: {
      type: 'object',
      properties: { connected: { type: 'integer' }, waiting: { type: 'integer' } },
      required: ['connected', 'waiting'],
      additionalProperties: false,
    },
    provider: { type: 'string' },
  },
  required: ['edgeId', 'version', 'round', 'cloudConnected', 'users', 'provider'],
  additionalProperties: false,
} as const;

const lossPointProperties = {
  userId: { type: 'string' },
  step: { type: 'integer' },
  loss: { type: 'number' },
  ms: { type: 'number' },
  tokens: { type: 'integer' },
  at: { type: 'string' },
};
const lossPointRequired = ['userId', 'step', 'loss', 'ms', 'tokens', 'at'];
/** where a recent step's time went (telemetry.ts StepTimes); the loss series leaves these out */
const stepTimesProperties = {
  forwardMs: { type: 'number' },
  backwardMs: { type: 'number' },
  cloudMs: { type: 'number' },
  userMs: { type: 'number' },
};
const stepTimesRequired = ['forwardMs', 'backwardMs', 'cloudMs', 'userMs'];

/** GET /api/admin/status: everything the operator's dashboard shows (routes/admin.ts dashboardStatus). */
export const adminStatusSchema = {
  $id: 'adminStatus',
  type: 'object',
  properties: {
    edgeId: { type: 'string' },
    provider: { type: 'string' },
    cloudConnected: { type: 'boolean' },
    version: { type: 'integer' },
    model: modelInfo,
    plan: { $ref: 'manifest#/definitions/plan' },
    train: { $ref: 'manifest#/definitions/train' },
    round: {
      type: ['object', 'null'],
      properties: {
        number: { type: 'integer' },
        version: { type: 'integer' },
        current: {
          type: ['object', 'null'],
          properties: { userId: { type: 'string' }, step: { type: 'integer' }, steps: { type: 'integer' } },
          required: ['userId', 'step', 'steps'],
          additionalProperties: false,
        },
        completed: { type: 'array', items: { type: 'string' } },
      },
      required: ['number', 'version', 'current', 'completed'],
      additionalProperties: false,
    },
    users: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          userId: { type: 'string' },
          state: { type: 'string', enum: ['waiting', 'training'] },
          position: { type: 'integer' },
          connectedAt: { type: 'string' },
          bytesIn: { type: 'integer' },
          bytesOut: { type: 'integer' },
          /** turns in a row that ran out on the user's silence */
          misses: { type: 'integer' },
          /** no turn in rounds up to and including this one; null when never benched */
          sitsOutThrough: nullable('integer'),
          /** where the user stands in the round (done: its turn in this round is over) */
          phase: { type: 'string', enum: ['training', 'waiting', 'done', 'sitting-out'] },
          /** 1 for the next to train, among the users whose phase is waiting; null for the others */
          waitingPosition: nullable('integer'),
        },
        required: [
          'userId',
          'state',
          'position',
          'connectedAt',
          'bytesIn',
          'bytesOut',
          'misses',
          'sitsOutThrough',
          'phase',
          'waitingPosition',
        ],
        additionalProperties: false,
      },
    },
    /** the users by phase: connected is the sum of the other four */
    counts: {
      type: 'object',
      properties: {
        connected: { type: 'integer' },
        training: { type: 'integer' },
        waiting: { type: 'integer' },
        done: { type: 'integer' },
        sittingOut: { type: 'integer' },
      },
      required: ['connected', 'training', 'waiting', 'done', 'sittingOut'],
      additionalProperties: false,
    },
    sittingOut: { type: 'array', items: { type: 'string' } },
    /** users not in a turn, done ones included (what the cloud hears); the dashboard shows counts */
    waiting: { type: 'integer' },
    queueFrames: { type: 'integer' },
    restarts: {
      type: ['object', 'null'],
      properties: { count: { type: 'integer' }, lastExit: nullable('string') },
      required: ['count', 'lastExit'],
      additionalProperties: false,
    },
    lastStepMs: nullable('number'),
    tokensPerSecond: nullable('number'),
    bytesIn: { type: 'integer' },
    bytesOut: { type: 'integer' },
    memory: {
      type: 'object',
      properties: {
        rss: { type: 'number' },
        heapTotal: { type: 'number' },
        heapUsed: { type: 'number' },
        external: { type: 'number' },
        arrayBuffers: { type: 'number' },
        peakRss: nullable('number'),
      },
      required: ['rss', 'heapTotal', 'heapUsed', 'external', 'arrayBuffers', 'peakRss'],
      additionalProperties: false,
    },
    steps: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          round: { type: 'integer' },
          n: { type: 'integer' },
          ...lossPointProperties,
          ...stepTimesProperties,
        },
        required: ['round', 'n', ...lossPointRequired, ...stepTimesRequired],
        additionalProperties: false,
      },
    },
    errors: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          at: { type: 'string' },
          code: { type: 'string' },
          message: { type: 'string' },
          userId: { type: 'string' },
          /** what it means for the operator, in a sentence */
          summary: { type: 'string' },
        },
        required: ['at', 'code', 'message', 'summary'],
        additionalProperties: false,
      },
    },
    /** users who went (not errors): on their own, dropped by the operator, or reconnected */
    leaves: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          at: { type: 'string' },
          userId: { type: 'string' },
          kind: { type: 'string', enum: ['left', 'removed', 'replaced'] },
          reason: { type: 'string' },
          round: nullable('integer'),
          summary: { type: 'string' },
        },
        required: ['at', 'userId', 'kind', 'reason', 'round', 'summary'],
        additionalProperties: false,
      },
    },
    loss: {
      type: 'object',
      properties: {
        round: nullable('integer'),
        points: {
          type: 'array',
          items: {
            type: 'object',
            properties: lossPointProperties,
            required: lossPointRequired,
            additionalProperties: false,
          },
        },
      },
      required: ['round', 'points'],
      additionalProperties: false,
    },
  },
  required: [
    'edgeId',
    'provider',
    'cloudConnected',
    'version',
    'model',
    'plan',
    'train',
    'round',
    'users',
    'counts',
    'sittingOut',
    'waiting',
    'queueFrames',
    'restarts',
    'lastStepMs',
    'tokensPerSecond',
    'bytesIn',
    'bytesOut',
    'memory',
    'steps',
    'errors',
    'leaves',
    'loss',
  ],
  additionalProperties: false,
} as const;

/** Every shared schema, for `addSchema` (in this order: later ones refer to earlier ones). */
export const SHARED_SCHEMAS = [errorSchema, manifestSchema, tokenizerSchema, publicStatusSchema, adminStatusSchema];

/** A reference to a shared schema. */
export const ref = (id: (typeof SHARED_SCHEMAS)[number]['$id']) => ({ $ref: `${id}#` });
