/**
 * Serves the built user page (apps/user-web/dist) at `/`, so a join link is just this server's
 * address with `?join=TOKEN`. Only the files the build writes are served: index.html, hashed
 * bundles under assets/ (cached for good: their names change with their content; onnxruntime-
 * web's .wasm binary is one of them). Anything else is a 404.
 */
import type { FastifyInstance } from 'fastify';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

const CONTENT_TYPES: Record<string, string> = {
  html: 'text/html; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  mjs: 'text/javascript; charset=utf-8',
  css: 'text/css; charset=utf-8',
  wasm: 'application/wasm',
  svg: 'image/svg+xml',
  json: 'application/json',
  map: 'application/json',
  png: 'image/png',
};

export class WebDirError extends Error {
  readonly code = 'WEB_NOT_BUILT';
}

/** Checks that `dir` holds a built page; the error says how to build it. */
export function checkWebDir(dir: string): void {
  if (!existsSync(join(dir, 'index.html'))) {
    throw new WebDirError(`no built user page in ${dir} (index.html is missing): build it with \`pnpm --filter @splitllm/user-web build\``);
  }
}

export function webPagePlugin(dir: string) {
  checkWebDir(dir);
  return async function webPage(app: FastifyInstance): Promise<void> {
    const fileSchema = { params: { type: 'object', properties: { file: { type: 'string', pattern: '^[A-Za-z0-9_.-]{1,200}$' } }, required: ['file'] } };
    app.get('/', { schema: {} }, async (_req, reply) => {
      // read per request: a rebuilt page is picked up without a restart
      return reply.type(CONTENT_TYPES.html).header('cache-control', 'no-cache').send(readFileSync(join(dir, 'index.html')));
    });
    app.get<{ Params: { file: string } }>('/assets/:file', { schema: fileSchema }, async (req, reply) => {
      const { file } = req.params;
      const path = join(dir, 'assets', file);
      if (file.startsWith('.') || !existsSync(path) || !statSync(path).isFile()) {
        return reply.code(404).send({ code: 'NOT_FOUND', message: `no assets/${file} in the page's build` });
      }
      const ext = file.slice(file.lastIndexOf('.') + 1);
      return reply.type(CONTENT_TYPES[ext] ?? 'application/octet-stream').header('cache-control', 'public, max-age=31536000, immutable').send(readFileSync(path));
    });
  };
}
