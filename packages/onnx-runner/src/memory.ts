import { readFileSync } from 'node:fs';

/** Peak resident set size of this process (VmHWM from /proc), in bytes; undefined off Linux. */
export function peakRssBytes(): number | undefined {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}
