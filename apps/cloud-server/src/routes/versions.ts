/**
 * The operator's download of any recorded version the retention policy kept: the whole global
 * adapter (every block) as an `adapterFile` message, the same encoding as the edges' per-tier
 * downloads. A version whose directory retention deleted answers 410 VERSION_EVICTED (its figures
 * stay in /api/admin/rounds); one never recorded answers 404 UNKNOWN_VERSION.
 */
import { adapterToNamedTensors } from '@splitllm/model';
import { encodeMessage } from '@splitllm/wire';
import type { FastifyPluginAsync } from 'fastify';
import { requireOperator } from '../auth';
import { CloudRequestError } from '../errors';
import { ref } from '../schemas';

export const versionRoutes: FastifyPluginAsync = async (app) => {
  app.get<{ Params: { version: number } }>(
    '/api/admin/adapters/:version',
    {
      onRequest: requireOperator,
      schema: {
        params: {
          type: 'object',
          properties: { version: { type: 'integer', minimum: 0 } },
          required: ['version'],
          additionalProperties: false,
        },
        response: { 400: ref('cloudError'), 401: ref('cloudError'), 404: ref('cloudError'), 410: ref('cloudError') },
      },
    },
    async (req, reply) => {
      const { version } = req.params;
      const versions = app.cloudVersions;
      // throws VersionEvictedError (410) for a deleted one; read synchronously, so retention
      // (which runs on this thread too) cannot delete it between the check and the read
      const adapter = versions.at(version);
      const rec = app.cloudStore.round(version);
      if (!adapter || !rec) {
        throw new CloudRequestError(
          404,
          'UNKNOWN_VERSION',
          `version ${version} was never recorded (current: ${versions.version})`,
        );
      }
      const file = encodeMessage('adapterFile', 'adapter', {
        round: version,
        tokens: rec.tokens,
        steps: 0,
        tensors: adapterToNamedTensors(adapter),
      });
      return reply.type('application/octet-stream').send(Buffer.from(file.buffer, file.byteOffset, file.byteLength));
    },
  );
};
