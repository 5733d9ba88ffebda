/**
 * The contributor's loss chart, drawn with uPlot (a small, maintained canvas chart library; Vite
 * bundles it and its CSS). One point per training step of this person, across turns; a smoothed
 * curve (exponential moving average) so progress shows through the noise of single steps; and a
 * dashed vertical line where each new turn starts, because every turn starts from the latest
 * shared model update and the loss can jump there.
 *
 * The axis titles are HTML next to the canvas (index.html), not canvas text: they stay crisp and
 * readable at any width, and they can be read by assistive technology and tests. The element's
 * accessible name says the latest loss and step; data-* attributes carry the numbers for tests.
 */
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import type { LossPoint } from './store';

/** Weight of the newest step in the smoothed curve: about the last 10 steps count. */
export const EMA_ALPHA = 0.1;
const HEIGHT = 220;
const FONT = '12px system-ui, sans-serif';
/** markers closer than this (CSS px) are drawn without their label, so labels never overlap */
const LABEL_SPACE = 56;

/** The exponential moving average of `ys` (the first value starts it). */
export function ema(ys: number[], alpha = EMA_ALPHA): number[] {
  const out: number[] = [];
  for (const [i, y] of ys.entries()) out.push(i === 0 ? y : alpha * y + (1 - alpha) * out[i - 1]);
  return out;
}

/** Indices of the steps that start a turn after the first: the round changed, or the step count began again. */
export function turnStarts(losses: LossPoint[]): number[] {
  const starts: number[] = [];
  for (let i = 1; i < losses.length; i++) {
    if (losses[i].round !== losses[i - 1].round || losses[i].step <= losses[i - 1].step) starts.push(i);
  }
  return starts;
}

export class LossChart {
  private plot?: uPlot;
  private starts: number[] = [];
  private losses: LossPoint[] = [];
  private readonly empty: HTMLParagraphElement;

  constructor(private readonly host: HTMLElement) {
    this.empty = document.createElement('p');
    this.empty.className = 'chart-empty';
    this.empty.textContent = 'No training steps yet: the chart fills in during your first turn.';
    host.append(this.empty);
    // the chart follows its box: a phone held upright, a resized window
    new ResizeObserver(() => this.fit()).observe(host);
  }

  private width(): number {
    return Math.max(200, Math.floor(this.host.clientWidth));
  }

  private fit(): void {
    if (this.plot && Math.abs(this.plot.width - this.width()) >= 1)
      this.plot.setSize({ width: this.width(), height: HEIGHT });
  }

  private create(): uPlot {
    const opts: uPlot.Options = {
      width: this.width(),
      height: HEIGHT,
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: { time: false, range: (_u, min, max) => [Math.min(1, min), Math.max(max, 2)] },
        y: { range: (_u, min, max) => (max - min < 1e-6 ? [min - 0.5, max + 0.5] : [min, max]) },
      },
      axes: [
        {
          font: FONT,
          size: 30,
          space: 48,
          incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000],
          values: (_u, splits) => splits.map((v) => (Number.isInteger(v) ? String(v) : '')),
        },
        {
          font: FONT,
          size: 44,
          space: 32,
          values: (_u, splits) => splits.map((v) => v.toFixed(2)),
        },
      ],
      series: [
        { label: 'step' },
        {
          label: 'loss at each step',
          stroke: '#8fb0e3',
          width: 1,
          points: { show: true, size: 4, stroke: '#8fb0e3', fill: '#8fb0e3' },
        },
        {
          label: `smoothed (exponential moving average, \u03b1 = ${EMA_ALPHA})`,
          stroke: '#123f87',
          width: 2.5,
          points: { show: false },
        },
      ],
      hooks: { draw: [(u) => this.drawTurns(u)] },
    };
    return new uPlot(opts, [[], [], []], this.host);
  }

  /** A dashed vertical line before each step that starts a turn, labelled with the turn number. */
  private drawTurns(u: uPlot): void {
    const ctx = u.ctx;
    const px = uPlot.pxRatio;
    const { top, height } = u.bbox;
    ctx.save();
    ctx.strokeStyle = '#c0392b';
    ctx.fillStyle = '#8e2a20';
    ctx.lineWidth = 1.5 * px;
    ctx.setLineDash([5 * px, 4 * px]);
    ctx.font = `${12 * px}px system-ui, sans-serif`;
    ctx.textBaseline = 'top';
    let lastLabel = -Infinity;
    for (const [k, i] of this.starts.entries()) {
      const x = u.valToPos(i + 0.5, 'x', true);
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
      if (x - lastLabel >= LABEL_SPACE * px) {
        ctx.fillText(`turn ${k + 2}`, x + 3 * px, top + 2 * px);
        lastLabel = x;
      }
    }
    ctx.restore();
  }

  /** Shows `losses` (the person's whole history, oldest first). */
  update(losses: LossPoint[]): void {
    this.losses = losses;
    const ys = losses.map((p) => p.loss);
    const smooth = ema(ys);
    this.starts = turnStarts(losses);
    const h = this.host;
    h.dataset.points = String(losses.length);
    h.dataset.losses = ys.map((y) => y.toFixed(5)).join(',');
    h.dataset.turnStarts = this.starts.map((i) => i + 1).join(',');
    h.dataset.turns = String(losses.length ? this.starts.length + 1 : 0);
    this.empty.hidden = losses.length > 0;
    if (losses.length === 0) {
      h.setAttribute('aria-label', 'Training loss by step: no steps yet.');
      this.plot?.destroy();
      this.plot = undefined;
      return;
    }
    this.plot ??= this.create();
    this.plot.setData([ys.map((_, i) => i + 1), ys, smooth]);
    const n = losses.length;
    const turns = this.starts.length + 1;
    h.setAttribute(
      'aria-label',
      `Training loss by step: latest loss ${ys[n - 1].toFixed(3)} at step ${n} ` +
        `(smoothed ${smooth[n - 1].toFixed(3)}; first ${ys[0].toFixed(3)}), over ${turns} turn${turns > 1 ? 's' : ''}.`,
    );
  }

  /** the steps now shown */
  get points(): number {
    return this.losses.length;
  }
}
