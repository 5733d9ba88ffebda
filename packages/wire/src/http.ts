import { ProtocolError } from './errors';

/**
 * Our servers answer a refused request with a JSON body `{ code, message }`; anything else (a
 * proxy, a crash) is named by its status. Browser-safe: only the fetch Response.
 */
export async function responseError(res: Response): Promise<{ code: string; message: string }> {
  const text = await res.text();
  try {
    const j = JSON.parse(text) as { code?: unknown; message?: unknown };
    if (typeof j === 'object' && j !== null) {
      return {
        code: typeof j.code === 'string' ? j.code : `HTTP_${res.status}`,
        message: typeof j.message === 'string' ? j.message : text,
      };
    }
  } catch {
    /* not JSON */
  }
  return { code: `HTTP_${res.status}`, message: text || res.statusText };
}

/**
 * The status and code of a request whose body is one protocol frame (application/octet-stream)
 * and was refused: a ProtocolError (413 when too large, else 400), or Fastify's body-too-large
 * and wrong-content-type errors; anything else keeps its own status and code.
 */
export function frameRequestStatus(err: Error & { statusCode?: number; code?: unknown }): {
  status: number;
  code: string;
} {
  if (err instanceof ProtocolError)
    return { status: err.code === 'FRAME_TOO_LARGE' ? 413 : 400, code: String(err.code) };
  const code = typeof err.code === 'string' ? err.code : 'INTERNAL';
  if (code === 'FST_ERR_CTP_BODY_TOO_LARGE') return { status: 413, code: 'FRAME_TOO_LARGE' };
  if (code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return { status: 415, code: 'BAD_CONTENT_TYPE' };
  return { status: err.statusCode ?? 500, code };
}
