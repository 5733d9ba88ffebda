/**
 * The one waiting primitive of the tiers: a peer's next message of an expected type, with a
 * deadline. The edge waits on its users and on the cloud with it, the user client on its edge.
 *
 * Why a class and not a bare promise: a wait must never outlive what it waits for. Three rules
 * make that hold, and each was a crash or a stray error before:
 * - `request(send, type)` installs the wait, then sends; when the send throws, the wait is removed
 *   without rejecting, so no promise is left to reject later with nobody listening.
 * - a wait's timer and its cleanup only touch that wait: a late timeout of an old wait cannot
 *   clear a newer one.
 * - `fail(err)` (the peer left, the turn is over) settles the current wait at once.
 */

export interface WaitOptions<M> {
  /** Reject with `onTimeout()` when nothing arrives within this many ms (omit: no deadline). */
  timeoutMs?: number;
  onTimeout?: () => Error;
  /** Checks a matching message before it is accepted; a throw rejects the wait with that error. */
  accept?: (m: M) => void;
}

interface Pending<M> {
  type: string;
  accept?: (m: M) => void;
  resolve: (m: M) => void;
  reject: (e: Error) => void;
  timer?: ReturnType<typeof setTimeout>;
}

export class MessageWaiter<M extends { type: string }> {
  private pending?: Pending<M>;

  /** The type the current wait expects, if any. */
  get waitingFor(): string | undefined {
    return this.pending?.type;
  }

  /**
   * Waits for the next message of `type`. One wait at a time: asking for a second while one is
   * pending is a bug in the caller and throws at once (rejecting the first would leave a promise
   * nobody may be listening to).
   */
  wait<T extends M['type']>(
    type: T,
    opts: WaitOptions<Extract<M, { type: T }>> = {},
  ): Promise<Extract<M, { type: T }>> {
    if (this.pending) throw new Error(`a wait for "${this.pending.type}" is pending; cannot wait for "${type}" too`);
    return new Promise<Extract<M, { type: T }>>((resolve, reject) => {
      const p: Pending<M> = {
        type,
        accept: opts.accept as ((m: M) => void) | undefined,
        resolve: (m) => {
          this.clear(p);
          resolve(m as Extract<M, { type: T }>);
        },
        reject: (e) => {
          this.clear(p);
          reject(e);
        },
      };
      if (opts.timeoutMs !== undefined) {
        const onTimeout = opts.onTimeout ?? (() => new Error(`no "${type}" message within ${opts.timeoutMs} ms`));
        p.timer = setTimeout(() => p.reject(onTimeout()), opts.timeoutMs);
      }
      this.pending = p;
    });
  }

  /**
   * Installs the wait, then calls `send`. When `send` throws, the wait is withdrawn (its timer
   * cleared, its promise never settled and never awaited) and the error propagates to the caller.
   */
  request<T extends M['type']>(
    send: () => void,
    type: T,
    opts: WaitOptions<Extract<M, { type: T }>> = {},
  ): Promise<Extract<M, { type: T }>> {
    const waiting = this.wait(type, opts);
    const mine = this.pending;
    try {
      send();
    } catch (err) {
      if (mine) this.clear(mine);
      // the withdrawn promise is never settled; nothing is left pending
      throw err;
    }
    return waiting;
  }

  /**
   * Hands a received message to the current wait. Returns false when nobody waits for a message
   * of its type (the caller decides what an unexpected message means).
   */
  deliver(m: M): boolean {
    const p = this.pending;
    if (!p || p.type !== m.type) return false;
    try {
      p.accept?.(m);
    } catch (err) {
      p.reject(err instanceof Error ? err : new Error(String(err)));
      return true;
    }
    p.resolve(m);
    return true;
  }

  /** Rejects the current wait, if there is one. */
  fail(err: Error): void {
    this.pending?.reject(err);
  }

  private clear(p: Pending<M>): void {
    if (p.timer !== undefined) clearTimeout(p.timer);
    if (this.pending === p) this.pending = undefined;
  }
}
