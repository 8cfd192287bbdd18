import { status } from '@grpc/grpc-js';
import { StatusError } from '@maas/shared';
import { InFlightLimit } from '../src/core/in-flight-limit.js';

function refusal(fn: () => unknown): StatusError {
  try {
    fn();
  } catch (err) {
    if (err instanceof StatusError) return err;
    throw err;
  }
  throw new Error('expected a refusal');
}

describe('InFlightLimit', () => {
  it('refuses calls beyond the limit and admits again once a slot is given back', () => {
    const refused: string[] = [];
    const limit = new InFlightLimit(2, (reason) => refused.push(reason));
    const first = limit.acquire();
    const second = limit.acquire();
    const err = refusal(() => limit.acquire());
    expect(err.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(err.message).toMatch(/2 calls in flight \(limit 2\)/);
    expect(refused).toEqual(['in_flight']);
    first();
    first(); // giving back twice frees one slot only
    expect(limit.current).toBe(1);
    const third = limit.acquire();
    expect(() => limit.acquire()).toThrow(StatusError);
    second();
    third();
    expect(limit.current).toBe(0);
    limit.close();
  });

  it('refuses new calls while the event loop runs late, and admits them once it catches up', async () => {
    const refused: string[] = [];
    const limit = new InFlightLimit(0, (reason) => refused.push(reason), 60);
    try {
      await new Promise((resolve) => setTimeout(resolve, 50));
      limit.acquire()();
      // Hold the loop well past the bound, then let the sampler see how late it fired.
      const until = performance.now() + 200;
      while (performance.now() < until);
      await new Promise((resolve) => setImmediate(resolve));
      await new Promise((resolve) => setTimeout(resolve, 0));
      const err = refusal(() => limit.acquire());
      expect(err.code).toBe(status.RESOURCE_EXHAUSTED);
      expect(err.message).toMatch(/event loop runs \d+ ms late/);
      expect(refused).toEqual(['event_loop_lag']);
      // An idle loop is on time again within a couple of samples.
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(() => limit.acquire()()).not.toThrow();
    } finally {
      limit.close();
    }
  });
});
