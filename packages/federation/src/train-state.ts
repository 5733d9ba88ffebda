/**
 * One tier's trainable LoRA segment and its AdamW state, with snapshots: the edge and the
 * cloud take a snapshot when a user's turn begins and restore it when that user drops out,
 * so a dropped user leaves no trace in the round's aggregate. AdamW is elementwise, so three
 * tiers each stepping their own part with the same t is exactly one AdamW over the whole
 * adapter (what the centralized baseline does).
 */
import {
  cloneAdapter,
  type LoraAdapter,
  type LoraGrads,
  type AdamWOptions,
  AdamW,
  loraGradArrays,
  loraParameters,
  type AdamWSnapshot,
} from '@splitllm/model';

export type LoraTrainSnapshot = AdamWSnapshot;

export class LoraTrainState {
  /** The live adapter (its arrays change with every step); a copy of the one given. */
  readonly adapter: LoraAdapter;
  private readonly optimizer: AdamW;

  constructor(adapter: LoraAdapter, adamw: AdamWOptions) {
    this.adapter = cloneAdapter(adapter);
    this.optimizer = new AdamW(loraParameters(this.adapter), adamw);
  }

  /** AdamW steps taken since the adapter was set */
  get t(): number {
    return this.optimizer.t;
  }

  /** One AdamW step; every module of the adapter needs its gradient (a missing one is a wiring bug). */
  step(grads: LoraGrads, lr?: number): void {
    this.optimizer.step(loraGradArrays(grads), lr);
  }

  snapshot(): LoraTrainSnapshot {
    return this.optimizer.snapshot();
  }

  restore(snap: LoraTrainSnapshot): void {
    this.optimizer.restore(snap);
  }

  /** A copy of the current adapter (for upload). */
  copyAdapter(): LoraAdapter {
    return cloneAdapter(this.adapter);
  }
}
