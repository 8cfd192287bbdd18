/** The benchmark's own arithmetic: calls in flight at once must all be counted. */
import { tokensPerSecond } from '../bench/measure';

it('counts every loop when several calls are in flight', async () => {
  // Each call takes 10 ms of waiting, not CPU: 8 in flight do 8 times the work of one.
  const call = () => new Promise<number>((resolve) => setTimeout(() => resolve(1), 10));
  const one = await tokensPerSecond(call, 300, 1);
  const eight = await tokensPerSecond(call, 300, 8);
  expect(eight / one).toBeGreaterThan(5);
});
