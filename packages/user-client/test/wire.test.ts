/**
 * The client's seams to the wire that need no server: ClientError's codes (its own, the
 * protocol's, and the peers' passed on), and one generation request through nextTokenLogits
 * against a fake fetch that answers as an edge does. The client against real servers is tested
 * in packages/cli/test (system, generate, admin).
 */
import { CodedError, type Gpt2Config } from '@splitllm/model';
import { decodeExpected, encodeMessage, GENERATE_USER_HEADER } from '@splitllm/wire';
import { describe, expect, it } from 'vitest';
import { ClientError, isClientErrorCode } from '../src/errors';
import { nextTokenLogits } from '../src/generate';

describe('ClientError', () => {
  it('is a CodedError whose code is one of the closed union', () => {
    const e = new ClientError('EDGE_GONE', 'gone');
    expect(e).toBeInstanceOf(CodedError);
    expect(e.name).toBe('ClientError');
    expect(e.code).toBe('EDGE_GONE');
    for (const code of ['USER_TIMEOUT', 'CLOUD_GONE', 'WRONG_STEP', 'BAD_USER_TOKEN', 'HTTP_502', 'DROPPED']) {
      expect(isClientErrorCode(code), code).toBe(true);
    }
    expect(isClientErrorCode('HTTP_50')).toBe(false);
  });

  it("keeps a peer's known code, and a code it does not know as REMOTE_ERROR with the code received", () => {
    const known = ClientError.fromPeer('USER_TIMEOUT', 'no "forward" frame within 100 ms');
    expect([known.code, known.received, known.message]).toEqual([
      'USER_TIMEOUT',
      undefined,
      'no "forward" frame within 100 ms',
    ]);
    const other = ClientError.fromPeer('SOMETHING_NEW', 'a new refusal');
    expect([other.code, other.received, other.message]).toEqual([
      'REMOTE_ERROR',
      'SOMETHING_NEW',
      'SOMETHING_NEW: a new refusal',
    ]);
  });
});

describe('nextTokenLogits', () => {
  const config: Gpt2Config = {
    nPositions: 8,
    nEmbd: 4,
    vocabSize: 5,
    eosTokenId: 0,
    bosTokenId: 0,
    nLayer: 2,
    nHead: 1,
    nInner: 16,
    layerNormEpsilon: 1e-5,
  };
  const credentials = { userId: 'u-1', userToken: 'tok' };
  const h1 = Float32Array.from({ length: 3 * config.nEmbd }, (_, i) => i / 10);
  type Answer = (body: Uint8Array, headers: Record<string, string>) => Response;
  const fakeFetch = (answer: Answer): typeof fetch =>
    (async (_url: string, init: RequestInit) =>
      answer(init.body as Uint8Array, init.headers as Record<string, string>)) as typeof fetch;
  const octets = (bytes: Uint8Array) => new Response(bytes as Uint8Array<ArrayBuffer>, { status: 200 });

  it('sends h1 as a userGenerate message and reads the logits message back', async () => {
    let sent: Uint8Array | undefined;
    const logits = Float32Array.of(0.5, -1, 2, 0, 1);
    const fetch = fakeFetch((body, headers) => {
      sent = body;
      expect(headers[GENERATE_USER_HEADER]).toBe('u-1');
      return octets(encodeMessage('logits', 'logits', { version: 7, logits: { data: logits, shape: [5] } }));
    });
    const got = await nextTokenLogits({ edgeUrl: 'http://edge', credentials, config, fetch }, h1, 3);
    expect(got.version).toBe(7);
    expect(Array.from(got.logits)).toEqual(Array.from(logits));
    const m = decodeExpected('userGenerate', 'generate', sent!);
    expect(m.h.shape).toEqual([1, 3, 4]);
    expect(Array.from(m.h.data)).toEqual(Array.from(h1));
  });

  it("refuses an answer that is not logits [V], and passes on the edge's coded refusal", async () => {
    const short = fakeFetch(() =>
      octets(encodeMessage('logits', 'logits', { version: 1, logits: { data: new Float32Array(4), shape: [4] } })),
    );
    const o = { edgeUrl: 'http://edge', credentials, config };
    await expect(nextTokenLogits({ ...o, fetch: short }, h1, 3)).rejects.toMatchObject({ code: 'BAD_SHAPE' });
    const refused = fakeFetch(() => Response.json({ code: 'UNKNOWN_USER', message: 'no such user' }, { status: 404 }));
    const e = await nextTokenLogits({ ...o, fetch: refused }, h1, 3).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(ClientError);
    expect((e as ClientError).code).toBe('UNKNOWN_USER');
    await expect(nextTokenLogits({ ...o, fetch: refused }, h1, 2)).rejects.toMatchObject({ code: 'BAD_SHAPE' });
  });
});
