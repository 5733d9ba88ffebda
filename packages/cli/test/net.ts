/** Small HTTP, port and process helpers the process-level tests share. */
import { createServer } from 'node:net';
import { peakRssBytes } from '@splitllm/onnx-runner';

/** A JSON POST (with a bearer token when given); the status and the parsed body. */
export async function post(url: string, body: unknown, token?: string) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as Record<string, string> };
}

/** A loopback port nobody listens on right now. */
export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

/** Peak resident memory (VmHWM) of a process, in bytes; throws where /proc does not say. */
export function peakRss(pid: number): number {
  const bytes = peakRssBytes(pid);
  if (bytes === undefined) throw new Error(`no VmHWM for process ${pid}`);
  return bytes;
}
