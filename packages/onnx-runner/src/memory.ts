import { readFileSync, writeFileSync } from 'node:fs';

/** Peak resident set size (VmHWM from /proc) of this process or of `pid`, in bytes; undefined off Linux. */
export function peakRssBytes(pid: number | 'self' = 'self'): number | undefined {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Restarts this process's VmHWM from its current resident set (Linux: writing 5 to
 * /proc/self/clear_refs), so that peakRssBytes() then says the peak since now: what a round
 * costs, rather than the process's lifetime peak, which start-up (loading the sessions) sets.
 * Returns false where that cannot be done (another OS, a kernel without it): the peak then stays
 * the lifetime one, which is still an upper bound.
 */
export function resetPeakRss(): boolean {
  try {
    writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}
