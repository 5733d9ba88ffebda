/**
 * Serves the built user page (apps/user-web/dist) at `/`, so a join link is just this server's
 * address with `?join=TOKEN`. Only what the build writes is served: index.html at `/` (read per
 * request: a rebuilt page is picked up without a restart) and the hashed bundles directly under
 * assets/ (cached for good: their names change with their content; onnxruntime-web's .wasm binary
 * is one of them). Anything else is a 404; @fastify/static does the serving.
 */
import fastifyStatic from '@fastify/static';
import type { FastifyError, FastifyPluginAsync, FastifyReply } from 'fastify';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { CloudConfigError, CloudRequestError } from '../errors';

/** The types the page's files are sent with (@fastify/send's table says application/javascript). */
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

/** A file directly in assets/, not a dotfile: what the build writes there. */
const ASSET_PATH = /^\/[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$/;

/** Checks that `dir` holds a built page; the error says how to build it. */
export function checkWebDir(dir: string): void {
  if (!existsSync(join(dir, 'index.html'))) {
    throw new CloudConfigError(
      'WEB_NOT_BUILT',
      `no built user page in ${dir} (index.html is missing): build it with \`pnpm --filter @splitllm/user-web build\``,
    );
  }
}

function notFound(reply: FastifyReply, path: string) {
  const err = new CloudRequestError(404, 'NOT_FOUND', `no ${path} in the page's build`);
  return reply.code(err.status).send({ code: err.code, message: err.message });
}

export function webPagePlugin(dir: string): FastifyPluginAsync {
  checkWebDir(dir);
  return async function webPage(app) {
    // the hashed bundles, in a scope of their own: its 404 answer is the page's
    await app.register(
      async (assets) => {
        assets.setNotFoundHandler((req, reply) => notFound(reply, req.url.replace(/^\//, '').split('?')[0]));
        // a path @fastify/static refuses outright (one that climbs out of assets/) is not there either
        assets.setErrorHandler((err: FastifyError, req, reply) => {
          if (err.code === 'FST_STATIC_FORBIDDEN_PATH') return notFound(reply, 'such asset');
          req.log.warn({ err: err.message }, 'asset not served');
          return reply.code(err.statusCode ?? 500).send({ code: 'INTERNAL', message: err.message });
        });
        await assets.register(fastifyStatic, {
          root: join(dir, 'assets'),
          prefix: '/',
          decorateReply: false,
          index: false,
          list: false,
          redirect: false,
          dotfiles: 'ignore',
          allowedPath: (path) => ASSET_PATH.test(path),
          cacheControl: true,
          maxAge: '365d',
          immutable: true,
          setHeaders: (reply, path) => {
            const type = CONTENT_TYPES[path.slice(path.lastIndexOf('.') + 1)];
            if (type) reply.header('content-type', type);
          },
        });
      },
      { prefix: '/assets' },
    );
    // the page: sendFile from the build's root, nothing else of it is routed
    await app.register(fastifyStatic, { root: dir, serve: false });
    app.get('/', { schema: { querystring: { type: 'object' } } }, (_req, reply) =>
      reply
        .type(CONTENT_TYPES.html)
        .header('cache-control', 'no-cache')
        .sendFile('index.html', { cacheControl: false, contentType: false }),
    );
  };
}
