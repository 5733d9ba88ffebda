/**
 * Our servers answer a refused request with a JSON body `{ code, message }`; anything else (a
 * proxy, a crash) is named by its status. Browser-safe: only the fetch Response.
 */
export async function responseError(res: Response): Promise<{ code: string; message: string }> {
  const text = await res.text();
  try {
    const j = JSON.parse(text) as { code?: unknown; message?: unknown };
    if (typeof j === 'object' && j !== null) {
      return { code: typeof j.code === 'string' ? j.code : `HTTP_${res.status}`, message: typeof j.message === 'string' ? j.message : text };
    }
  } catch {
    /* not JSON */
  }
  return { code: `HTTP_${res.status}`, message: text || res.statusText };
}
