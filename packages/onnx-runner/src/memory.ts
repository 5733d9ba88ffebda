import { readFileSync } from 'node:fs';

/** Peak resident set size (VmHWM from /proc) of this process or of `pid`, in bytes; undefined off Linux. */
export function peakRssBytes(pid: number | 'self' = 'self'): number | undefined {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}
