/** MessageWaiter: one wait at a time, and no wait (nor its timer) outlives what it waited for. */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { MessageWaiter } from '../src/index';

type M = { type: 'a'; n: number } | { type: 'b' };

/** Lets any unhandled rejection surface: Node reports them once the microtask queue has drained. */
async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) await new Promise<void>((r) => setImmediate(r));
}

describe('MessageWaiter', () => {
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => unhandled.push(reason);

  beforeEach(() => {
    // only the timers the waiter uses: setImmediate stays real so settle() can wait for Node
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    unhandled.length = 0;
    process.on('unhandledRejection', onUnhandled);
  });

  afterEach(async () => {
    await settle();
    process.off('unhandledRejection', onUnhandled);
    vi.useRealTimers();
    expect(unhandled).toEqual([]);
  });

  it('deliver resolves the wait with the message, and the waiter is free again', async () => {
    const w = new MessageWaiter<M>();
    expect(w.waitingFor).toBeUndefined();
    expect(w.deliver({ type: 'a', n: 0 })).toBe(false); // nobody waits
    const p = w.wait('a', { timeoutMs: 1000 });
    expect(w.waitingFor).toBe('a');
    const msg = { type: 'a', n: 1 } as const;
    expect(w.deliver(msg)).toBe(true);
    const got: { type: 'a'; n: number } = await p;
    expect(got).toBe(msg);
    expect(w.waitingFor).toBeUndefined();
    expect(vi.getTimerCount()).toBe(0); // the deadline went with the wait
    expect(w.deliver({ type: 'a', n: 2 })).toBe(false); // delivered once only
  });

  it('a message of another type is not delivered; the wait stays', async () => {
    const w = new MessageWaiter<M>();
    const p = w.wait('a');
    expect(w.deliver({ type: 'b' })).toBe(false);
    expect(w.waitingFor).toBe('a');
    expect(w.deliver({ type: 'a', n: 3 })).toBe(true);
    expect((await p).n).toBe(3);
  });

  it('accept() throwing rejects the wait with its error (a non-Error is wrapped)', async () => {
    const w = new MessageWaiter<M>();
    const bad = new Error('round 2, expected 1');
    const p = w.wait('a', {
      timeoutMs: 1000,
      accept: (m) => {
        if (m.n !== 1) throw bad;
      },
    });
    expect(w.deliver({ type: 'a', n: 2 })).toBe(true); // taken, and refused
    await expect(p).rejects.toBe(bad);
    expect(w.waitingFor).toBeUndefined();
    expect(vi.getTimerCount()).toBe(0);
    const q = w.wait('a', {
      accept: () => {
        throw 'not an error';
      },
    });
    w.deliver({ type: 'a', n: 1 });
    await expect(q).rejects.toThrow('not an error');
    // accept() passing resolves
    const r = w.wait('a', { accept: (m) => expect(m.n).toBe(5) });
    w.deliver({ type: 'a', n: 5 });
    expect((await r).n).toBe(5);
  });

  it("a timeout rejects with onTimeout's error, then frees the waiter", async () => {
    const w = new MessageWaiter<M>();
    const late = new Error('no gradient in time');
    const p = w.wait('a', { timeoutMs: 100, onTimeout: () => late });
    const rejected = expect(p).rejects.toBe(late);
    await vi.advanceTimersByTimeAsync(99);
    expect(w.waitingFor).toBe('a');
    await vi.advanceTimersByTimeAsync(1);
    await rejected;
    expect(w.waitingFor).toBeUndefined();
    expect(w.deliver({ type: 'a', n: 1 })).toBe(false); // too late: nobody waits
    // without onTimeout, a default error names the type and the deadline
    const q = w.wait('b', { timeoutMs: 50 });
    const named = expect(q).rejects.toThrow('no "b" message within 50 ms');
    await vi.advanceTimersByTimeAsync(50);
    await named;
  });

  it('request: the wait is installed before send, so an immediate answer is caught', async () => {
    const w = new MessageWaiter<M>();
    const p = w.request(() => w.deliver({ type: 'a', n: 7 }), 'a', { timeoutMs: 100 });
    expect((await p).n).toBe(7);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('request whose send throws: it propagates, no wait and no timer remain, nothing rejects later', async () => {
    const w = new MessageWaiter<M>();
    const broken = new Error('socket closed');
    const onTimeout = vi.fn(() => new Error('timeout'));
    expect(() =>
      w.request(
        () => {
          throw broken;
        },
        'a',
        { timeoutMs: 100, onTimeout },
      ),
    ).toThrow(broken);
    expect(w.waitingFor).toBeUndefined();
    expect(vi.getTimerCount()).toBe(0);
    await vi.advanceTimersByTimeAsync(1000);
    await settle();
    expect(onTimeout).not.toHaveBeenCalled();
    expect(unhandled).toEqual([]);
    // the waiter is usable again
    expect(w.deliver({ type: 'a', n: 1 })).toBe(false);
    const p = w.wait('a');
    w.deliver({ type: 'a', n: 2 });
    expect((await p).n).toBe(2);
  });

  it('a second wait while one is pending throws at once; the first is untouched', async () => {
    const w = new MessageWaiter<M>();
    const p = w.wait('a', { timeoutMs: 100 });
    expect(() => w.wait('b')).toThrow(/pending/);
    expect(() => w.request(() => undefined, 'a')).toThrow(/pending/);
    expect(w.waitingFor).toBe('a');
    expect(vi.getTimerCount()).toBe(1);
    w.deliver({ type: 'a', n: 4 });
    expect((await p).n).toBe(4);
  });

  it("an old wait's timeout never clears or rejects a newer wait", async () => {
    const w = new MessageWaiter<M>();
    // settled early: its deadline at t=100 must not touch the wait installed after it
    const first = w.wait('a', { timeoutMs: 100, onTimeout: () => new Error('first timed out') });
    await vi.advanceTimersByTimeAsync(50);
    w.deliver({ type: 'a', n: 1 });
    await first;
    const second = w.wait('a', { timeoutMs: 1000, onTimeout: () => new Error('second timed out') });
    await vi.advanceTimersByTimeAsync(100);
    expect(w.waitingFor).toBe('a');
    // withdrawn by a failed send: its deadline must not touch the next wait either
    w.deliver({ type: 'a', n: 2 });
    expect((await second).n).toBe(2);
    expect(() =>
      w.request(
        () => {
          throw new Error('send failed');
        },
        'a',
        { timeoutMs: 100 },
      ),
    ).toThrow('send failed');
    const third = w.wait('b', { timeoutMs: 1000 });
    await vi.advanceTimersByTimeAsync(500);
    expect(w.waitingFor).toBe('b');
    // timed out: the next wait still gets its own full deadline
    w.deliver({ type: 'b' });
    await third;
    const fourth = w.wait('a', { timeoutMs: 100, onTimeout: () => new Error('fourth timed out') });
    const fourthRejected = expect(fourth).rejects.toThrow('fourth timed out');
    await vi.advanceTimersByTimeAsync(100);
    await fourthRejected;
    const fifth = w.wait('a', { timeoutMs: 300 });
    await vi.advanceTimersByTimeAsync(200);
    expect(w.waitingFor).toBe('a');
    w.deliver({ type: 'a', n: 5 });
    expect((await fifth).n).toBe(5);
  });

  it('fail() rejects the pending wait and clears its timer; with none pending it does nothing', async () => {
    const w = new MessageWaiter<M>();
    w.fail(new Error('nobody waits'));
    const gone = new Error('the user left');
    const p = w.wait('a', { timeoutMs: 100 });
    w.fail(gone);
    await expect(p).rejects.toBe(gone);
    expect(w.waitingFor).toBe(undefined);
    expect(vi.getTimerCount()).toBe(0);
    expect(w.deliver({ type: 'a', n: 1 })).toBe(false);
    const q = w.wait('a');
    w.deliver({ type: 'a', n: 2 });
    expect((await q).n).toBe(2);
  });
});
