/**
 * results.md: a sweep's results for people, from results.json: the settings and the machine, the
 * headline (hierarchical against sfl, edges + cloud peak memory at N = 8 users per edge, or the
 * largest N both ran), one table row per point, the plots, and each failed or skipped point with
 * its reason and the tail of its log.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { PlotOutcome } from './plots';
import type { BenchResults, PointResult, ProcessPeak } from './results';

/** The N the issue's headline is about. */
const HEADLINE_N = 8;

/** Bytes as people read them: "812 KiB", "245.3 MiB", "1.20 GiB". */
export function bytesText(b: number | null): string {
  if (b === null) return 'n/a';
  if (b < 2 ** 20) return `${(b / 1024).toFixed(1)} KiB`;
  if (b < 2 ** 30) return `${(b / 2 ** 20).toFixed(1)} MiB`;
  return `${(b / 2 ** 30).toFixed(2)} GiB`;
}

/** "-74.0%": how much smaller `a` is than `b`. */
function reduction(a: number | null, b: number | null): string {
  if (a === null || b === null || b === 0) return 'n/a';
  const r = 100 * (1 - a / b);
  return `${r >= 0 ? '-' : '+'}${Math.abs(r).toFixed(1)}%`;
}

function headline(results: BenchResults): string[] {
  const ok = (scheme: string, N: number, E: number) =>
    results.points.find(
      (p) =>
        p.status === 'ok' &&
        p.scheme === scheme &&
        p.usersPerEdge === N &&
        p.edges === E &&
        p.link.label === results.settings.links[0]?.label,
    );
  const lines: string[] = [];
  for (const E of results.settings.edges) {
    const both = results.settings.usersPerEdge.filter((N) => ok('hierarchical', N, E) && ok('sfl', N, E));
    if (both.length === 0) continue;
    const N = both.includes(HEADLINE_N) ? HEADLINE_N : both[both.length - 1];
    const h = ok('hierarchical', N, E)!.summary!.serversTotal;
    const s = ok('sfl', N, E)!.summary!.serversTotal;
    const he = ok('hierarchical', N, E)!.summary!.edgeMax;
    const se = ok('sfl', N, E)!.summary!.edgeMax;
    lines.push(
      `- E = ${E}, N = ${N}: edges + cloud peak RSS hierarchical ${bytesText(h.peakRss)} vs sfl ` +
        `${bytesText(s.peakRss)} (${reduction(h.peakRss, s.peakRss)}); per-user training state held ` +
        `${bytesText(h.heldPeak)} vs ${bytesText(s.heldPeak)} (${reduction(h.heldPeak, s.heldPeak)}); ` +
        `the largest edge's RSS ${bytesText(he.peakRss)} vs ${bytesText(se.peakRss)} ` +
        `(${reduction(he.peakRss, se.peakRss)}), held ${bytesText(he.heldPeak)} vs ${bytesText(se.heldPeak)}`,
    );
  }
  if (lines.length === 0) return ['(needs a successful hierarchical and sfl point at the same N and E)'];
  return lines;
}

/**
 * The edges' and the cloud's onnxruntime provider as the intro says it. Results written before the
 * setting existed (no field) ran on cpu, as do those that left it to the parts (null).
 */
function providerText(provider: string | null | undefined): string {
  return provider ? `the edges and the cloud on onnxruntime's ${provider} provider` : 'the edges and the cloud on cpu';
}

/** The title names a provider only when one was asked for, so a CPU sweep's title reads as it always did. */
function providerTitle(provider: string | null | undefined): string {
  return provider ? ` (edges and cloud on ${provider})` : '';
}

/**
 * One line per point whose parts did not all run on the provider asked for (a GPU provider that could not
 * start leaves a part on cpu), so that a table headed "webgpu" never silently holds cpu figures.
 */
function fallbackLines(results: BenchResults): string[] {
  const asked = results.settings.provider || 'cpu';
  const lines: string[] = [];
  for (const p of results.points) {
    const other = Object.entries(p.providers ?? {}).filter(([, v]) => v !== asked);
    if (other.length > 0) lines.push(`- ${p.id}: ${other.map(([part, v]) => `${part} ran on ${v}`).join(', ')}`);
  }
  if (lines.length === 0) return [];
  return [
    '',
    `**Not on ${asked}:** these points' parts fell back to another provider (their logs say why):`,
    '',
    ...lines,
  ];
}

const peakCells = (p: ProcessPeak | undefined) => (p ? [bytesText(p.heldPeak), bytesText(p.peakRss)] : ['', '']);

function row(p: PointResult): string {
  const s = p.summary;
  const cells = [
    p.scheme,
    String(p.usersPerEdge),
    String(p.edges),
    String(p.users),
    p.link.label,
    p.status,
    ...peakCells(s?.edgeMax),
    ...peakCells(s?.cloud),
    s ? (s.roundMs / 1000).toFixed(1) : '',
    // what a round trained: with 'sequential' one edge's users, with the others every edge's
    s ? String(Math.round(p.rounds.reduce((n, r) => n + r.tokens, 0) / p.rounds.length)) : '',
    s ? bytesText(s.userEdgeBytesPerRound) : '',
    s ? bytesText(s.edgeCloudBytesPerRound) : '',
    s ? s.finalLoss.toFixed(4) : '',
    s?.finalHeldOutLoss != null ? s.finalHeldOutLoss.toFixed(4) : '',
  ];
  return `| ${cells.join(' | ')} |`;
}

export function writeResultsMd(out: string, results: BenchResults, plots: PlotOutcome[]): string {
  const s = results.settings;
  const m = results.machine;
  const failed = results.points.filter((p) => p.status !== 'ok');
  const lines = [
    `# splitllm bench: ${s.schemes.join(' / ')} on ${s.model}${providerTitle(s.provider)}`,
    '',
    `Run ${results.createdAt} with \`splitllm bench ${results.argv.join(' ')}\`.`,
    '',
    `Machine: ${m.cpus} x ${m.cpuModel}, ${bytesText(m.totalMemBytes)} memory, Node ${m.node} (${m.platform}).`,
    `Each point is one \`splitllm simulate\` run: a cloud, E edges and N x E headless users, each its own process ` +
      `on loopback; ${s.rounds} round(s) of ${s.stepsPerUser} step(s) per user` +
      (s.batchSize !== null ? `, batch ${s.batchSize}` : '') +
      (s.seqLen !== null ? `, ${s.seqLen} tokens a row` : '') +
      `, aggregation ${s.aggregation}, seed ${s.seed}, the users' engine ${s.engine}, ` +
      `${providerText(s.provider)}, the demo users' SOTU text; ` +
      `at most ${s.timeoutS} s a point.`,
    ...fallbackLines(results),
    '',
    'Memory is each process\'s peak over the rounds: "held" is the per-user training state the process held ' +
      '(LoRA copies, AdamW moments, saved activations; exact bytes, the quantity the schemes differ in), ' +
      '"RSS" the process\'s high-water resident set during a round (VmHWM, which the edges and the cloud reset ' +
      'when a round starts, so start-up does not set it; the largest over the rounds). Round time is the median over ' +
      'the rounds; bytes are per round, means over the rounds.',
    '',
    `## Headline: hierarchical vs sfl`,
    '',
    ...headline(results),
    '',
    '## Points',
    '',
    '| scheme | N | E | users | link | status | edge held | edge RSS | cloud held | cloud RSS | round s | ' +
      'tokens / round | user-edge / round | edge-cloud / round | train loss | held-out loss |',
    '|---|--:|--:|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|',
    ...results.points.map(row),
    '',
    "Edge columns: the largest edge of the point. Tokens / round: the tokens a round trained ('sequential' " +
      "trains one edge's users a round, the edges taking turns; the other schemes every edge's)." +
      (results.baseHeldOutLoss !== null
        ? ` Held-out loss: after the last round; the base model's is ${results.baseHeldOutLoss.toFixed(4)}.`
        : ''),
    '',
    '## Plots',
    '',
    ...plots.map((p) =>
      p.file ? `![${p.title}](${p.file.split('/').pop()})` : `- ${p.title}: not drawn (${p.skipped})`,
    ),
    '',
  ];
  if (failed.length > 0) {
    lines.push('## Failed and skipped points', '');
    for (const p of failed) {
      lines.push(`### ${p.id}: ${p.status}`, '', p.reason ?? '', '');
      if (p.logTail) lines.push('```', p.logTail, '```', '');
    }
  }
  const file = join(out, 'results.md');
  writeFileSync(file, lines.join('\n'));
  return file;
}
