/**
 * A tiny Prometheus text-format registry (exposition format 0.0.4): counters and gauges with
 * optional labels. The servers need a handful of series; a dependency for that is not worth it.
 */
type Labels = Record<string, string>;

interface Series {
  help: string;
  type: 'counter' | 'gauge';
  values: Map<string, { labels: Labels; value: number }>;
  /** gauges read at scrape time (memory, queue length) */
  collect?: () => Array<{ labels?: Labels; value: number }>;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;

function labelKey(labels: Labels): string {
  return Object.keys(labels)
    .sort()
    .map((k) => `${k}=${labels[k]}`)
    .join(',');
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function formatLabels(labels: Labels | undefined): string {
  const keys = labels ? Object.keys(labels) : [];
  if (keys.length === 0) return '';
  return `{${keys.map((k) => `${k}="${escapeLabel(labels![k])}"`).join(',')}}`;
}

export class MetricsRegistry {
  private readonly series = new Map<string, Series>();

  private define(name: string, type: Series['type'], help: string): Series {
    if (!NAME.test(name)) throw new Error(`metric name "${name}" is not a valid Prometheus name`);
    let s = this.series.get(name);
    if (!s) {
      s = { help, type, values: new Map() };
      this.series.set(name, s);
    } else if (s.type !== type) throw new Error(`metric "${name}" is already a ${s.type}`);
    return s;
  }

  counter(name: string, help: string): (by?: number, labels?: Labels) => void {
    const s = this.define(name, 'counter', help);
    return (by = 1, labels = {}) => {
      const key = labelKey(labels);
      const cur = s.values.get(key);
      if (cur) cur.value += by;
      else s.values.set(key, { labels, value: by });
    };
  }

  gauge(name: string, help: string): (value: number, labels?: Labels) => void {
    const s = this.define(name, 'gauge', help);
    return (value, labels = {}) => void s.values.set(labelKey(labels), { labels, value });
  }

  /** A gauge whose value is read when /metrics is scraped. */
  collected(name: string, help: string, collect: () => number | Array<{ labels?: Labels; value: number }>): void {
    const s = this.define(name, 'gauge', help);
    s.collect = () => {
      const v = collect();
      return typeof v === 'number' ? [{ value: v }] : v;
    };
  }

  /** The value of one series (tests and status pages); 0 when never set. */
  value(name: string, labels: Labels = {}): number {
    return this.series.get(name)?.values.get(labelKey(labels))?.value ?? 0;
  }

  render(): string {
    const lines: string[] = [];
    for (const [name, s] of this.series) {
      lines.push(`# HELP ${name} ${s.help}`, `# TYPE ${name} ${s.type}`);
      const rows = s.collect ? s.collect() : [...s.values.values()];
      for (const r of rows) lines.push(`${name}${formatLabels(r.labels)} ${Number.isFinite(r.value) ? r.value : 'NaN'}`);
    }
    return lines.join('\n') + '\n';
  }
}
