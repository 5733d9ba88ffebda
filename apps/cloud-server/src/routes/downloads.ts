/**
 * What the cloud hands down: the run's manifest and tokenizer (public), the segments and the
 * global adapter's parts of a recorded version (registered edges only; an edge serves the
 * user's on to its users). Both downloads are immutable for their name, so they are cached for good.
 */
import { adapterToNamedTensors, TOKENIZER_WIRE_SCHEMA } from '@splitllm/model';
import { encodeMessage } from '@splitllm/wire';
import type { FastifyPluginAsync } from 'fastify';
import { requireEdge } from '../auth';
import type { Tier } from '../context';
import { CloudRequestError } from '../errors';
import { ref } from '../schemas';

const IMMUTABLE = 'max-age=31536000, immutable';
const tierParam = { type: 'string', enum: ['user', 'edge'] } as const;

const toBuffer = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength);

export const downloadRoutes: FastifyPluginAsync = async (app) => {
  const run = app.cloudRun;

  app.get('/api/manifest', { schema: { response: { 200: ref('runManifest') } } }, async () => run.manifest());

  app.get(
    '/api/tokenizer',
    {
      schema: {
        response: {
          // TokenizerWireFiles: GPT-2's two files, or the LLaMA family's tokenizer.json and its BOS / EOS ids
          200: TOKENIZER_WIRE_SCHEMA,
        },
      },
    },
    async (_req, reply) => {
      reply.header('cache-control', `public, ${IMMUTABLE}`);
      return run.tokenizer;
    },
  );

  app.get<{ Params: { tier: Tier } }>(
    '/api/segments/:tier',
    {
      preHandler: requireEdge,
      schema: {
        params: { type: 'object', properties: { tier: tierParam }, required: ['tier'], additionalProperties: false },
        response: { 401: ref('cloudError') },
      },
    },
    async (req, reply) => {
      const { tier } = req.params;
      const etag = `"${run.segmentInfo[tier].sha256}"`;
      reply.header('etag', etag).header('cache-control', `private, ${IMMUTABLE}`).type('application/octet-stream');
      if (req.headers['if-none-match'] === etag) return reply.code(304).send();
      return reply.send(toBuffer(run.segments[tier]));
    },
  );

  app.get<{ Params: { version: number; tier: Tier } }>(
    '/api/adapters/:version/:tier',
    {
      preHandler: requireEdge,
      schema: {
        params: {
          type: 'object',
          properties: { version: { type: 'integer', minimum: 0 }, tier: tierParam },
          required: ['version', 'tier'],
          additionalProperties: false,
        },
        response: { 401: ref('cloudError'), 404: ref('cloudError') },
      },
    },
    async (req, reply) => {
      const { version, tier } = req.params;
      const versions = app.cloudVersions;
      // any recorded version still kept, not only the current one: a round may end between a
      // user's manifest and its adapter download, and its edge then asks for the one before (one
      // the retention policy deleted is refused with 410 VERSION_EVICTED)
      const part = versions.partAt(tier, version);
      if (!part) {
        throw new CloudRequestError(
          404,
          'UNKNOWN_VERSION',
          `version ${version} is not a recorded global version (the current one is ${versions.version})`,
        );
      }
      const file = encodeMessage('adapterFile', 'adapter', {
        round: version,
        tokens: 0,
        steps: 0,
        tensors: adapterToNamedTensors(part),
      });
      reply.header('cache-control', `private, ${IMMUTABLE}`).type('application/octet-stream');
      return reply.send(toBuffer(file));
    },
  );
};
