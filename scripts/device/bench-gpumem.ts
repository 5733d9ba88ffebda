/**
 * Device memory per point of a `splitllm bench` sweep: joins the sweep's results.json with the per-process
 * device memory that scripts/device/gpumem.py sampled while the sweep ran (the GPU device run, run.sh).
 *
 *   node --import tsx scripts/device/bench-gpumem.ts --results DIR/results.json --mem gpumem.csv [--markdown FILE]
 *
 * Each round in results.json names the process ids of its cloud and edges (`pids`), and each point when it
 * started (`startedAt`) and how long it ran (`wallMs`). gpumem.csv has lines `time_s,pid,used_mib` (Unix
 * seconds; pid 0 is the whole card) after a `# source` line and a header. A process's peak is the largest
 * sample of its pid inside its point's time (a second either side, for the sampler's 0.25 s period and
 * the CSV's 10 ms time stamps), so an id the system reused for a later point's process is not counted
 * twice. Printed per point (scheme, N users per edge, E edges): the peak device MiB of the cloud, of the
 * largest edge and of all edges together, edges + cloud (the sum of each process's own peak, as bench sums
 * RSS), the card's peak over the point (users included), and next to them the peak RSS bench recorded.
 * A process without samples prints '-', never 0: a GPU provider that fell back to cpu, a point without
 * pids (results written before bench recorded them), or nvidia-smi's fallback, which sees no Vulkan
 * (WebGPU) process. Then the headline: hierarchical against sfl at the largest N both ran, edges + cloud
 * device memory. --markdown writes the same as a Markdown table.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { BenchResults, PointResult } from '../../packages/cli/src/bench/results';
import { type MemSample, parseMemCsv, textTable } from './report-io';

/** A point's figures: device memory from the samples (null: none), RSS from results.json (MiB). */
export interface PointMemory {
  id: string;
  scheme: string;
  usersPerEdge: number;
  edges: number;
  status: string;
  cloudMib: number | null;
  edgeMaxMib: number | null;
  edgesSumMib: number | null;
  serversMib: number | null;
  cardMib: number | null;
  cloudRssMib: number | null;
  edgeMaxRssMib: number | null;
  serversRssMib: number | null;
  /** how many of the point's processes (cloud and edges) had samples, of how many */
  sampled: number;
  processes: number;
}

/** A point's time, Unix seconds, widened by this on each side (see the header). */
const WINDOW_SLACK_S = 1;

const maxOf = (xs: number[]): number | null => (xs.length === 0 ? null : Math.max(...xs));
const toMib = (bytes: number | null | undefined): number | null => (bytes == null ? null : bytes / 2 ** 20);

/**
 * The join (see the header): per point of `results`, each of its processes' peak device MiB among
 * `samples`, with bench's RSS beside them. Pure: the script's I/O is around it.
 */
export function joinPoints(results: BenchResults, samples: MemSample[]): PointMemory[] {
  const byPid = new Map<number, MemSample[]>();
  for (const s of samples) {
    const list = byPid.get(s.pid);
    if (list) list.push(s);
    else byPid.set(s.pid, [s]);
  }
  return results.points.map((p: PointResult) => {
    const start = p.startedAt === undefined ? Number.NaN : Date.parse(p.startedAt) / 1000;
    // no time recorded: every sample of the pid counts (ids are not reused within a short sweep in practice)
    const from = Number.isFinite(start) ? start - WINDOW_SLACK_S : -Infinity;
    const to = Number.isFinite(start) && p.wallMs !== undefined ? start + p.wallMs / 1000 + WINDOW_SLACK_S : Infinity;
    const peak = (pid: number | undefined): number | null =>
      pid === undefined
        ? null
        : maxOf((byPid.get(pid) ?? []).filter((s) => s.t >= from && s.t <= to).map((s) => s.mib));
    // every round names the same processes (simulate starts each part once); the last round's are kept
    const pids = [...p.rounds].reverse().find((r) => r.pids !== undefined)?.pids;
    const cloudMib = peak(pids?.cloud);
    const edgeMibs = Object.values(pids?.edges ?? {}).map(peak);
    const edgesKnown = edgeMibs.filter((m): m is number => m !== null);
    const allEdges = edgeMibs.length > 0 && edgesKnown.length === edgeMibs.length;
    const edgesSumMib = allEdges ? edgesKnown.reduce((a, b) => a + b, 0) : null;
    const s = p.summary;
    return {
      id: p.id,
      scheme: p.scheme,
      usersPerEdge: p.usersPerEdge,
      edges: p.edges,
      status: p.status,
      cloudMib,
      edgeMaxMib: maxOf(edgesKnown),
      edgesSumMib,
      // a sum with a process missing would read as a smaller system: only when every process was sampled
      serversMib: cloudMib !== null && edgesSumMib !== null ? cloudMib + edgesSumMib : null,
      cardMib: pids === undefined ? null : peak(0),
      cloudRssMib: toMib(s?.cloud.peakRss),
      edgeMaxRssMib: toMib(s?.edgeMax.peakRss),
      serversRssMib: toMib(s?.serversTotal.peakRss),
      sampled: (cloudMib !== null ? 1 : 0) + edgesKnown.length,
      processes: pids === undefined ? 0 : 1 + edgeMibs.length,
    };
  });
}

/** "-74.0%": how much smaller `a` is than `b` (bench's results.md says it the same way). */
function reduction(a: number, b: number): string {
  const r = 100 * (1 - a / b);
  return `${r >= 0 ? '-' : '+'}${Math.abs(r).toFixed(1)}%`;
}

const mibText = (m: number | null, digits = 0) => (m === null ? '-' : m.toFixed(digits));

/**
 * Per E: hierarchical against sfl at the largest N where both have edges + cloud device memory; where
 * no N has both, says which figures are missing.
 */
export function headlineLines(rows: PointMemory[]): string[] {
  const lines: string[] = [];
  for (const E of [...new Set(rows.map((r) => r.edges))].sort((a, b) => a - b)) {
    const at = (scheme: string, N: number) =>
      rows.find((r) => r.scheme === scheme && r.usersPerEdge === N && r.edges === E && r.status === 'ok');
    const Ns = [...new Set(rows.filter((r) => r.edges === E).map((r) => r.usersPerEdge))].sort((a, b) => a - b);
    const both = Ns.filter((N) => at('hierarchical', N) && at('sfl', N));
    if (both.length === 0) continue;
    const sampled = both.filter((N) => at('hierarchical', N)!.serversMib !== null && at('sfl', N)!.serversMib !== null);
    if (sampled.length === 0) {
      const N = both[both.length - 1];
      const h = at('hierarchical', N)!.cardMib;
      const sf = at('sfl', N)!.cardMib;
      // the card's total still compares the schemes (users' processes included) where no process was matched,
      // e.g. when the sampler sees the processes under other ids (a container's own pid namespace)
      const card =
        h !== null && sf !== null
          ? `; the card's peak (every process, users included) ${mibText(h)} vs ${mibText(sf)} MiB ` +
            `(${reduction(h, sf)})`
          : '';
      lines.push(
        `E = ${E}, N = ${N}: no edges + cloud device memory for both schemes (a process without samples)${card}`,
      );
      continue;
    }
    const N = sampled[sampled.length - 1];
    const h = at('hierarchical', N)!;
    const s = at('sfl', N)!;
    const note = N === both[both.length - 1] ? '' : ` (N = ${both[both.length - 1]} lacks device samples)`;
    lines.push(
      `E = ${E}, N = ${N}${note}: edges + cloud device memory hierarchical ${mibText(h.serversMib)} MiB vs sfl ` +
        `${mibText(s.serversMib)} MiB (${reduction(h.serversMib!, s.serversMib!)}); the largest edge ` +
        `${mibText(h.edgeMaxMib)} vs ${mibText(s.edgeMaxMib)} MiB; peak RSS edges + cloud ` +
        `${mibText(h.serversRssMib)} vs ${mibText(s.serversRssMib)} MiB`,
    );
  }
  return lines.length > 0 ? lines : ['(needs a successful hierarchical and sfl point at the same N and E)'];
}

const HEADER = [
  'point',
  'scheme',
  'N',
  'E',
  'status',
  'sampled',
  'cloud dev',
  'edge max dev',
  'edges sum dev',
  'edges+cloud dev',
  'card peak',
  'cloud RSS',
  'edge max RSS',
  'edges+cloud RSS',
];

function cells(r: PointMemory): string[] {
  return [
    r.id,
    r.scheme,
    String(r.usersPerEdge),
    String(r.edges),
    r.status,
    `${r.sampled}/${r.processes}`,
    mibText(r.cloudMib),
    mibText(r.edgeMaxMib),
    mibText(r.edgesSumMib),
    mibText(r.serversMib),
    mibText(r.cardMib),
    mibText(r.cloudRssMib),
    mibText(r.edgeMaxRssMib),
    mibText(r.serversRssMib),
  ];
}

function main(): void {
  const { values } = parseArgs({
    options: { results: { type: 'string' }, mem: { type: 'string' }, markdown: { type: 'string' } },
  });
  if (!values.results || !values.mem)
    throw new Error('usage: bench-gpumem.ts --results DIR/results.json --mem gpumem.csv [--markdown FILE]');
  const results = JSON.parse(readFileSync(values.results, 'utf8')) as BenchResults;
  const { source, samples } = parseMemCsv(readFileSync(values.mem, 'utf8'));
  const rows = joinPoints(results, samples);
  const s = results.settings;
  const intro = [
    `bench ${values.results}: model ${s.model}, edges and cloud on ${s.provider || 'cpu'}, ` +
      `users' engine ${s.engine}, ` +
      `${s.rounds} round(s) x ${s.stepsPerUser} step(s) per user`,
    `device memory: ${values.mem} (${source}, ${samples.length} samples); peak MiB per process over its point; ` +
      `'-': no samples; RSS: bench's peak per round (MiB)`,
  ];
  const headline = headlineLines(rows);
  console.log([...intro, '', ...textTable([HEADER, ...rows.map(cells)]), '', 'headline:', ...headline].join('\n'));
  if (values.markdown) {
    const md = [
      '# Device memory per bench point',
      '',
      ...intro.map((l) => `${l}.`),
      '',
      `| ${HEADER.join(' | ')} |`,
      `|${HEADER.map((_, i) => (i < 2 || i === 4 ? '---' : '--:')).join('|')}|`,
      ...rows.map((r) => `| ${cells(r).join(' | ')} |`),
      '',
      '## Headline: hierarchical vs sfl',
      '',
      ...headline.map((l) => `- ${l}`),
      '',
    ];
    writeFileSync(values.markdown, md.join('\n'));
    console.log(`markdown: ${values.markdown}`);
  }
}

main();
