/** The edge's HTTP calls to the cloud that answer JSON. */
import { responseError } from '@splitllm/wire';
import { CloudError } from './errors';

/** GETs (or sends `init`) and parses the JSON answer; a refusal throws CloudError with the cloud's code. */
export async function fetchJson<T>(url: string, init?: RequestInit): Promise<T> {
  const res = await fetch(url, init);
  if (!res.ok) {
    const e = await responseError(res);
    throw new CloudError(e.code, `${init?.method ?? 'GET'} ${url}: ${res.status} ${e.message}`);
  }
  return (await res.json()) as T;
}
