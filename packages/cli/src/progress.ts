/**
 * Progress of long work on stderr, so stdout stays parseable (--json). Only drawn when stderr
 * is a terminal: logs and CI get the result lines, not hundreds of progress lines.
 */
export class Progress {
  private count = 0;
  private lastDraw = 0;
  private readonly enabled = process.stderr.isTTY === true;

  constructor(
    private readonly label: string,
    private readonly total: number,
  ) {}

  tick(detail = ''): void {
    this.count++;
    if (!this.enabled) return;
    const now = Date.now();
    if (now - this.lastDraw < 200 && this.count < this.total) return;
    this.lastDraw = now;
    const pct = ((100 * this.count) / this.total).toFixed(0).padStart(3);
    process.stderr.write(`\r${this.label} ${pct}% (${this.count}/${this.total}) ${detail}`.padEnd(70));
  }

  done(): void {
    if (this.enabled) process.stderr.write('\n');
  }
}
