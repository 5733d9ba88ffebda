/**
 * The sweep's plots as SVG files, from vega-lite specifications rendered in Node (vega's
 * headless View): a well-kept grammar of graphics rather than hand-drawn SVG, so axes, log
 * scales, legends and facets are the library's. One spec per plot, from the successful points:
 *  - memory-held.svg / memory-rss.svg: peak memory vs users per edge N, per scheme, the largest
 *    edge and the cloud side by side, one line per scheme and E (held per-user training state,
 *    the quantity the design's guarantee is about; process high-water RSS, what the machine pays);
 *  - round-time.svg: the median round wall time vs N;
 *  - round-time-vs-link.svg: the round time vs the users' link rate, when the sweep has two or
 *    more rate settings (--links 1,10,100), one panel per N x E;
 *  - loss-vs-round.svg: with --eval, the held-out loss after each round (round 0: the base
 *    model), one panel per N x E.
 * The memory and round-time-vs-N plots use the sweep's first link setting.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as vega from 'vega';
import type { TopLevelSpec } from 'vega-lite';
import * as vl from 'vega-lite';
import { TRAINING_SCHEMES } from '@splitllm/wire';
import { RATE_LINK_LATENCY_MS } from './plan';
import type { BenchResults, PointResult } from './results';

const MIB = 2 ** 20;

/** A plot that was written, or one that was not and why. */
export interface PlotOutcome {
  file?: string;
  title: string;
  /** why it was not drawn */
  skipped?: string;
}

async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

const SCHEME_COLORS: Record<string, string> = { hierarchical: '#4c78a8', sfl: '#e45756', sequential: '#f58518' };

/** One color per scheme in every plot, whichever schemes a sweep has; the legend lists the sweep's. */
function schemeColor(results: BenchResults) {
  const domain = TRAINING_SCHEMES.filter((s) => results.settings.schemes.includes(s));
  return {
    field: 'scheme',
    type: 'nominal',
    title: 'scheme',
    scale: { domain, range: domain.map((s) => SCHEME_COLORS[s]) },
  } as const;
}
const edgesDash = { field: 'E', type: 'nominal', title: 'edges' } as const;
const nAxis = {
  field: 'N',
  type: 'quantitative',
  title: 'users per edge N',
  scale: { type: 'log', base: 2 },
  axis: { values: [1, 2, 4, 8, 16, 32, 64, 128] },
} as const;

/** A line with its points, for the layered specs. */
function lineLayers(encoding: Record<string, unknown>): unknown[] {
  return [
    { mark: { type: 'line' }, encoding },
    { mark: { type: 'point', filled: true }, encoding },
  ];
}

function okAtFirstLink(results: BenchResults): PointResult[] {
  const first = results.settings.links[0]?.label;
  return results.points.filter((p) => p.status === 'ok' && p.summary && p.link.label === first);
}

function memorySpec(results: BenchResults, which: 'heldPeak' | 'peakRss'): TopLevelSpec | undefined {
  const rows: Array<Record<string, unknown>> = [];
  for (const p of okAtFirstLink(results)) {
    const s = p.summary!;
    for (const [tier, peak] of [
      ['edge (largest)', s.edgeMax],
      ['cloud', s.cloud],
    ] as const) {
      const v = peak[which];
      if (v === null) continue;
      rows.push({ scheme: p.scheme, N: p.usersPerEdge, E: `E = ${p.edges}`, tier, MiB: v / MIB });
    }
  }
  if (rows.length === 0) return undefined;
  const what =
    which === 'heldPeak'
      ? 'per-user training state held at peak (LoRA copies, AdamW moments, saved activations)'
      : 'process peak RSS (VmHWM)';
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: ['Peak memory vs users per edge', what], subtitle: subtitle(results) },
    data: { values: rows },
    facet: { column: { field: 'tier', type: 'nominal', title: null, sort: ['edge (largest)', 'cloud'] } },
    resolve: { scale: { y: 'independent' } },
    spec: {
      width: 300,
      height: 220,
      layer: lineLayers({
        x: nAxis,
        y: { field: 'MiB', type: 'quantitative', title: 'MiB', scale: { zero: which === 'heldPeak' } },
        color: schemeColor(results),
        strokeDash: edgesDash,
        shape: edgesDash,
      }),
    },
  } as TopLevelSpec;
}

function roundTimeSpec(results: BenchResults): TopLevelSpec | undefined {
  const rows = okAtFirstLink(results).map((p) => ({
    scheme: p.scheme,
    N: p.usersPerEdge,
    E: `E = ${p.edges}`,
    seconds: p.summary!.roundMs / 1000,
  }));
  if (rows.length === 0) return undefined;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'Round wall time vs users per edge (median over the rounds)', subtitle: subtitle(results) },
    data: { values: rows },
    width: 420,
    height: 260,
    layer: lineLayers({
      x: nAxis,
      y: { field: 'seconds', type: 'quantitative', title: 'round time (s)', scale: { type: 'log' } },
      color: schemeColor(results),
      strokeDash: edgesDash,
      shape: edgesDash,
    }),
  } as TopLevelSpec;
}

function linkRateSpec(results: BenchResults): TopLevelSpec | string {
  const rates = results.settings.links.filter((l) => l.rateMbps !== null);
  if (rates.length < 2) return 'needs two or more link rates (e.g. --links 1,10,100)';
  const rows = results.points
    .filter((p) => p.status === 'ok' && p.summary && p.link.rateMbps !== null)
    .map((p) => ({
      scheme: p.scheme,
      Mbps: p.link.rateMbps,
      panel: `N = ${p.usersPerEdge}, E = ${p.edges}`,
      seconds: p.summary!.roundMs / 1000,
    }));
  if (rows.length === 0) return 'no point with a link rate succeeded';
  return panelsSpec(
    {
      text: `Round wall time vs the users' link rate (each way; ${RATE_LINK_LATENCY_MS} ms latency, no loss)`,
      subtitle: subtitle(results, false),
    },
    rows,
    {
      x: { field: 'Mbps', type: 'quantitative', title: 'link rate (Mbps)', scale: { type: 'log' } },
      y: { field: 'seconds', type: 'quantitative', title: 'round time (s)', scale: { type: 'log' } },
      color: schemeColor(results),
    },
  );
}

/** Lines per scheme, one panel per (N, E) (the rows' `panel`), three panels a row. */
function panelsSpec(
  title: { text: string; subtitle: string },
  rows: Array<Record<string, unknown>>,
  encoding: Record<string, unknown>,
): TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    data: { values: rows },
    facet: { field: 'panel', type: 'nominal', title: null },
    columns: 3,
    spec: { width: 260, height: 200, layer: lineLayers(encoding) },
  } as TopLevelSpec;
}

function lossSpec(results: BenchResults): TopLevelSpec | string {
  if (results.baseHeldOutLoss === null) return 'needs --eval (the held-out loss after each round)';
  const rows: Array<Record<string, unknown>> = [];
  for (const p of okAtFirstLink(results)) {
    const panel = `N = ${p.usersPerEdge}, E = ${p.edges}`;
    rows.push({ scheme: p.scheme, panel, round: 0, loss: results.baseHeldOutLoss });
    for (const r of p.rounds) rows.push({ scheme: p.scheme, panel, round: r.round, loss: r.heldOutLoss });
  }
  if (rows.length === 0) return 'no point succeeded';
  return panelsSpec(
    { text: 'Held-out loss after each round (round 0: the base model)', subtitle: subtitle(results) },
    rows,
    {
      x: { field: 'round', type: 'quantitative', title: 'round', axis: { tickMinStep: 1 } },
      y: { field: 'loss', type: 'quantitative', title: 'held-out loss (nats/token)', scale: { zero: false } },
      color: schemeColor(results),
    },
  );
}

/** The settings under every title, so a plot read alone says what it measured. */
function subtitle(results: BenchResults, withLink = true): string {
  const s = results.settings;
  const link = withLink ? `, link ${s.links[0]?.label ?? 'none'}` : '';
  return (
    `model ${s.model}, ${s.rounds} rounds x ${s.stepsPerUser} steps per user, aggregation ${s.aggregation}` +
    `, users' engine ${s.engine}${link}; ${results.machine.cpus} CPUs`
  );
}

/** Renders every plot the results allow into `out`; says which were not drawn and why. */
export async function writePlots(out: string, results: BenchResults): Promise<PlotOutcome[]> {
  const plots: Array<[string, string, TopLevelSpec | string | undefined]> = [
    ['memory-held.svg', 'peak held training state vs N', memorySpec(results, 'heldPeak')],
    ['memory-rss.svg', 'peak RSS vs N', memorySpec(results, 'peakRss')],
    ['round-time.svg', 'round time vs N', roundTimeSpec(results)],
    ['round-time-vs-link.svg', 'round time vs link rate', linkRateSpec(results)],
    ['loss-vs-round.svg', 'held-out loss vs round', lossSpec(results)],
  ];
  const outcomes: PlotOutcome[] = [];
  for (const [name, title, spec] of plots) {
    if (spec === undefined) outcomes.push({ title, skipped: 'no point succeeded' });
    else if (typeof spec === 'string') outcomes.push({ title, skipped: spec });
    else {
      const file = join(out, name);
      writeFileSync(file, await renderSvg(spec));
      outcomes.push({ title, file });
    }
  }
  return outcomes;
}
