/**
 * What the device run's two reports share (system.ts report, bench-gpumem.ts): the reader of the
 * device memory that scripts/device/gpumem.py samples, and the plain-text table they print.
 */

/** One line of gpumem.csv. */
export interface MemSample {
  /** Unix time, seconds */
  t: number;
  pid: number;
  mib: number;
}

/** gpumem.csv's samples and the source its first line names. */
export function parseMemCsv(text: string): { source: string; samples: MemSample[] } {
  let source = 'unknown';
  const samples: MemSample[] = [];
  const lines = text.split('\n');
  // read while gpumem.py still writes: a last line without its newline may be cut short, so it is left out
  if (!text.endsWith('\n')) lines.pop();
  for (const [i, line] of lines.entries()) {
    if (line.startsWith('#')) {
      source = line.slice(1).trim();
      continue;
    }
    if (line.trim() === '' || line.startsWith('time_s')) continue;
    const cells = line.split(',').map(Number);
    if (cells.length !== 3 || !cells.every(Number.isFinite))
      throw new Error(`gpumem csv line ${i + 1}: expected time_s,pid,used_mib, got "${line}"`);
    samples.push({ t: cells[0], pid: cells[1], mib: cells[2] });
  }
  return { source, samples };
}

/** Rows as columns: the first column left-aligned, the others right-aligned. */
export function textTable(rows: string[][]): string[] {
  const widths: number[] = [];
  // a two-cell row (a label and a message) does not set the widths
  for (const r of rows.filter((x) => x.length > 2)) {
    for (const [i, c] of r.entries()) widths[i] = Math.max(widths[i] ?? 0, c.length);
  }
  return rows.map((r) =>
    r
      .map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : r.length === 2 ? c : c.padStart(widths[i])))
      .join('  ')
      .trimEnd(),
  );
}
