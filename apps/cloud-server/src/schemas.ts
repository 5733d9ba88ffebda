/**
 * The JSON schemas more than one route shares, registered once on the app (`addSchema`) and used
 * by `$ref`. A response that is a contract (other tiers, the CLI, scripts read it) is closed
 * (`additionalProperties: false`): a field added to the code but not here is not sent, so the
 * contract only changes here.
 */
import type { FastifyInstance } from 'fastify';

export const str = { type: 'string' } as const;
export const int = { type: 'integer' } as const;
export const num = { type: 'number' } as const;

/** `$ref` of a shared schema. */
export const ref = (id: SchemaId) => ({ $ref: `${id}#` });

export type SchemaId =
  | 'cloudError'
  | 'splitPlan'
  | 'loraConfig'
  | 'trainSettings'
  | 'runManifest'
  | 'roundRecord'
  | 'publicRound'
  | 'edgeAssignment';

/** An object schema that lists its properties, requires them (or `required`) and allows nothing else. */
export const closed = (properties: Record<string, unknown>, required = Object.keys(properties)) => ({
  type: 'object',
  properties,
  required,
  additionalProperties: false,
});

export const SHARED_SCHEMAS: Record<SchemaId, Record<string, unknown>> = {
  /** every refused request's body */
  cloudError: closed({ code: str, message: str }),
  splitPlan: closed({ k: int, m: int }),
  loraConfig: closed({ r: int, alpha: num, targets: { type: 'array', items: str } }),
  trainSettings: closed({
    batch: int,
    seq: int,
    stepsPerUser: int,
    usersPerEdge: int,
    codec: str,
    adamw: closed({ lr: num, beta1: num, beta2: num, eps: num, weightDecay: num }),
    labels: { type: 'string', enum: ['device', 'cloud'] },
    activationNoise: num,
    scheme: { type: 'string', enum: ['hierarchical', 'sfl', 'sequential'] },
  }),
  runManifest: closed({
    modelName: str,
    model: closed({ name: str, description: str, parameters: int, demo: { type: 'boolean' } }),
    // the model's Hugging Face config.json, as the model package writes it
    config: { type: 'object', additionalProperties: true },
    plan: ref('splitPlan'),
    lora: ref('loraConfig'),
    train: ref('trainSettings'),
    version: int,
    segments: closed({ user: closed({ sha256: str, bytes: int }), edge: closed({ sha256: str, bytes: int }) }),
    privacy: closed({
      labels: str,
      k: int,
      noiseSigma: num,
      recovery: {
        anyOf: [
          { type: 'null' },
          closed({
            measuredOn: str,
            command: str,
            figures: {
              type: 'array',
              items: closed({ who: str, attack: str, k: int, sigma: num, tokenRate: num, wordRate: num }),
            },
          }),
        ],
      },
    }),
  }),
  /** one recorded version in full (the operator's /api/admin/rounds and /api/admin/status) */
  roundRecord: closed(
    {
      round: int,
      version: int,
      adapterDir: str,
      tokens: num,
      users: int,
      edges: int,
      loss: { type: ['number', 'null'] },
      bytes: num,
      startedAt: str,
      finishedAt: str,
      participants: { type: 'array', items: str },
      refused: {
        type: 'array',
        items: closed({ from: str, code: str, reason: str, globalLoss: num, loss: num }, ['from', 'code', 'reason']),
      },
      /** when the retention policy deleted this version's adapter files (the row and its figures stay) */
      evictedAt: { type: ['string', 'null'] },
    },
    // every field but evictedAt, which a record from before retention lacks
    [
      'round',
      'version',
      'adapterDir',
      'tokens',
      'users',
      'edges',
      'loss',
      'bytes',
      'startedAt',
      'finishedAt',
      'participants',
      'refused',
    ],
  ),
  /** one recorded version in public (GET /api/rounds, the last one in /api/status): counts only */
  publicRound: closed({
    round: int,
    version: int,
    tokens: num,
    users: int,
    edges: int,
    loss: { type: ['number', 'null'] },
    bytes: num,
    startedAt: str,
    finishedAt: str,
    refused: int,
  }),
  /** a user's edge, with the token that admits it there (join and rejoin) */
  edgeAssignment: closed({ userId: str, userToken: str, edgeId: str, edgeUrl: str }),
};

export function addSharedSchemas(app: FastifyInstance): void {
  for (const [$id, schema] of Object.entries(SHARED_SCHEMAS)) app.addSchema({ $id, ...schema });
}
