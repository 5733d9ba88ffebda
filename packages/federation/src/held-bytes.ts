/**
 * What a server holds per user, counted: the bytes of the LoRA copies, their AdamW moments and
 * the activations kept between a step's forward and its backward. This is the quantity the
 * training schemes differ in (docs/design.md, section 2): with 'hierarchical' an edge and its
 * cloud copy hold one of each whatever the number of users; with 'sfl' one per user in flight.
 *
 * Process RSS says the same with the runtime's own buffers and the allocator's slack on top, and
 * is what the benchmark also reports; this count is exact, so a test can hold the schemes to it.
 */
import { type LoraAdapter, loraParameters } from '@splitllm/model';

export class HeldBytes {
  private now = 0;
  private high = 0;

  /** The bytes held right now. */
  get current(): number {
    return this.now;
  }

  /** The most held at once since the last `resetPeak`. */
  get peak(): number {
    return this.high;
  }

  /** Counts `bytes` as held; returns a function that releases them (once, however often it is called). */
  hold(bytes: number): () => void {
    this.now += bytes;
    if (this.now > this.high) this.high = this.now;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.now -= bytes;
    };
  }

  /** Starts a new high-water mark from what is held now (a new round). */
  resetPeak(): void {
    this.high = this.now;
  }
}

/** The bytes of a LoRA copy with its AdamW state: the parameters and their two float32 moments. */
export function trainStateBytes(adapter: LoraAdapter): number {
  let n = 0;
  for (const p of loraParameters(adapter).values()) n += p.byteLength;
  return 3 * n;
}

/** The bytes of arrays kept for a backward (the step's input and the runtime's saved tensors). */
export function arraysBytes(arrays: Iterable<{ byteLength: number } | { data: { byteLength: number } }>): number {
  let n = 0;
  for (const a of arrays) n += 'data' in a ? a.data.byteLength : a.byteLength;
  return n;
}
