import { describe, expect, it } from 'vitest';
import { FedAvg } from '../src/fedavg';
import { AGGREGATION_STRATEGIES } from '../src/registry';
import type { EdgeCandidate, RoundSettings } from '../src/strategy';

const settings: RoundSettings = { minEdges: 1, minUsers: 1, usersPerEdge: 2, stepsPerUser: 20, lr: 1e-3 };
const edges = (...waiting: number[]): EdgeCandidate[] => waiting.map((w, i) => ({ edgeId: `e${i + 1}`, waiting: w }));

describe('FedAvg selection', () => {
  const s = new FedAvg();

  it('takes every edge with waiting users, in the order given', () => {
    expect(s.selectEdges(1, edges(2, 0, 1), settings)).toEqual(['e1', 'e3']);
    expect(s.selectEdges(1, edges(0, 5), settings)).toEqual(['e2']);
  });

  it('starts nothing without an edge with waiting users', () => {
    expect(s.selectEdges(1, [], settings)).toEqual([]);
    expect(s.selectEdges(1, edges(0, 0), settings)).toEqual([]);
  });

  it('waits for minEdges edges with waiting users', () => {
    const two = { ...settings, minEdges: 2 };
    expect(s.selectEdges(1, edges(3, 0), two)).toEqual([]);
    expect(s.selectEdges(1, edges(3, 1), two)).toEqual(['e1', 'e2']);
  });

  it('waits for minUsers waiting users over all edges', () => {
    const three = { ...settings, minUsers: 3 };
    expect(s.selectEdges(1, edges(1, 1), three)).toEqual([]);
    expect(s.selectEdges(1, edges(1, 0, 2), three)).toEqual(['e1', 'e3']);
  });
});

describe('FedAvg configuration', () => {
  it("is the run's settings, every round", () => {
    const s = new FedAvg();
    for (const round of [1, 2, 50]) {
      expect(s.configureRound(round, settings)).toEqual({ usersPerEdge: 2, stepsPerUser: 20, lr: 1e-3 });
    }
    expect(s.configureRound(1, { ...settings, usersPerEdge: 1, stepsPerUser: 3, lr: 0.02 })).toEqual({
      usersPerEdge: 1,
      stepsPerUser: 3,
      lr: 0.02,
    });
  });

  it('is the registry entry "fedavg"', () => {
    expect(AGGREGATION_STRATEGIES.fedavg().name).toBe('fedavg');
    expect(AGGREGATION_STRATEGIES.fedavg()).toBeInstanceOf(FedAvg);
  });
});
