import Fastify from 'fastify';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkWebDir, webPagePlugin } from '../src/routes/web';

function builtPage(): string {
  const dir = mkdtempSync(join(tmpdir(), 'splitllm-web-'));
  mkdirSync(join(dir, 'assets'));
  writeFileSync(join(dir, 'index.html'), '<!doctype html><title>page</title>');
  writeFileSync(join(dir, 'assets', 'index-abc.js'), 'console.log(1)');
  writeFileSync(join(dir, 'assets', 'ort-x.wasm'), new Uint8Array([0, 97, 115, 109]));
  writeFileSync(join(dir, 'secret.txt'), 'not served');
  return dir;
}

describe('the user page served by the cloud', () => {
  it('serves index.html and the hashed assets with their types, and nothing else', async () => {
    const dir = builtPage();
    const app = Fastify();
    await app.register(webPagePlugin(dir));
    const index = await app.inject('/');
    expect(index.statusCode).toBe(200);
    expect(index.headers['content-type']).toContain('text/html');
    expect(index.headers['cache-control']).toBe('no-cache');
    const js = await app.inject('/assets/index-abc.js');
    expect(js.headers['content-type']).toContain('text/javascript');
    expect(js.headers['cache-control']).toContain('immutable');
    expect((await app.inject('/assets/ort-x.wasm')).headers['content-type']).toBe('application/wasm');
    const missing = await app.inject('/assets/nope.js');
    expect(missing.statusCode).toBe(404);
    expect(missing.json().code).toBe('NOT_FOUND');
    // outside assets/, or a path that climbs out: refused
    expect((await app.inject('/secret.txt')).statusCode).toBe(404);
    expect([400, 404]).toContain((await app.inject('/assets/..%2Fsecret.txt')).statusCode);
    expect((await app.inject('/assets/..%2Fsecret.txt')).body).not.toContain('not served');
    await app.close();
  });

  it('refuses to start on an unbuilt page, saying how to build it', () => {
    const empty = mkdtempSync(join(tmpdir(), 'splitllm-web-'));
    expect(() => checkWebDir(empty)).toThrow(/pnpm --filter @splitllm\/user-web build/);
  });
});
