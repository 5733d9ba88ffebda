/**
 * The 'reference' engine: the TypeScript reference (userSegmentForward/Backward + AdamW). Slow,
 * but it is the oracle the other engines are tested against. Browser-safe.
 */
import {
  AdamW,
  headLogits,
  headLossStep,
  loraGradArrays,
  loraParameters,
  userSegmentBackward,
  userSegmentForward,
  type AnyModel,
  type LoraAdapter,
  type TokenBatch,
  type UserSegmentState,
} from '@splitllm/model';
import {
  checkBatch,
  checkDh1,
  checkHeadInputs,
  checkLastHidden,
  checkTrainerInputs,
  checkUserAdapter,
  copyUserAdapter,
  destroyedError,
  type HeadStepResult,
  type UserTrainer,
  type UserTrainerOptions,
} from '../trainer';

export class ReferenceUserTrainer implements UserTrainer {
  readonly kind = 'reference' as const;
  readonly description = 'reference (TypeScript)';
  private adapter: LoraAdapter;
  private optimizer: AdamW;
  private state: UserSegmentState | undefined;
  private destroyed = false;

  private constructor(
    private readonly model: AnyModel,
    adapter: LoraAdapter,
    private readonly options: UserTrainerOptions,
  ) {
    this.adapter = copyUserAdapter(adapter, options);
    this.optimizer = new AdamW(loraParameters(this.adapter), options.adamw);
  }

  static create(model: AnyModel, adapter: LoraAdapter, o: UserTrainerOptions): ReferenceUserTrainer {
    checkTrainerInputs(model, adapter, o);
    return new ReferenceUserTrainer(model, adapter, o);
  }

  private alive(): void {
    if (this.destroyed) throw destroyedError();
  }

  async forward(batch: TokenBatch): Promise<Float32Array> {
    this.alive();
    checkBatch(this.model.config, this.options, batch);
    const r = userSegmentForward(this.model, this.adapter, batch, this.options.plan);
    this.state = r.state;
    return r.h1;
  }

  async backwardAndStep(dh1: Float32Array, lr?: number): Promise<void> {
    this.alive();
    if (!this.state) {
      throw new Error('user trainer: backwardAndStep needs a forward first (one backward per forward)');
    }
    checkDh1(this.model.config, this.options, dh1);
    const grads = userSegmentBackward(this.model, this.adapter, this.state, dh1);
    this.state = undefined;
    this.optimizer.step(loraGradArrays(grads), lr);
  }

  async headStep(hL: Float32Array, targets: Int32Array): Promise<HeadStepResult> {
    this.alive();
    checkHeadInputs(this.model.config, this.options, hL, targets);
    return headLossStep(this.model, hL, targets, this.options.batch, this.options.seq);
  }

  async headLogits(h: Float32Array): Promise<Float32Array> {
    this.alive();
    checkLastHidden(this.model.config, h);
    return headLogits(this.model, h);
  }

  async readAdapter(): Promise<LoraAdapter> {
    this.alive();
    return copyUserAdapter(this.adapter, this.options);
  }

  async setAdapter(adapter: LoraAdapter): Promise<void> {
    this.alive();
    checkUserAdapter(this.model.config, this.options, adapter);
    this.adapter = copyUserAdapter(adapter, this.options);
    this.optimizer = new AdamW(loraParameters(this.adapter), this.options.adamw);
    this.state = undefined;
  }

  destroy(): void {
    this.destroyed = true;
    this.state = undefined;
  }
}
