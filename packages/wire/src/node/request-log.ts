/**
 * What the servers' request logs keep of a request: method, path and address. The query string
 * can hold a join token (the page's `/?join=TOKEN` link) and headers hold bearer tokens: neither is
 * ever written to a log. Used as Fastify's `req` serializer by the edge and the cloud.
 */
export function redactedRequest(req: { method?: string; url?: string; ip?: string }): Record<string, unknown> {
  const url = req.url ?? '';
  const q = url.indexOf('?');
  return {
    method: req.method,
    url: q < 0 ? url : `${url.slice(0, q)}?[redacted]`,
    remoteAddress: req.ip,
  };
}
