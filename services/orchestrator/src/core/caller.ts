/**
 * Who is calling and for how long, as every transport (gRPC, HTTP) can say
 * it: the use cases in this folder see only this, never a wire object.
 */
export interface Caller {
  /** The caller's `authorization` header value; undefined when it sent none. */
  authorization: string | undefined;
  /** When the caller stops waiting; undefined when it set no deadline. */
  deadline: Date | undefined;
  /** Aborted when the caller has gone: it cancelled, its deadline passed or its connection closed. */
  signal: AbortSignal;
}

/** Whether a caller that has gone went because its deadline passed (rather than by cancelling). */
export const deadlinePassed = (caller: Caller): boolean =>
  caller.deadline !== undefined && Date.now() >= caller.deadline.getTime();

export { CALLER_GONE } from '@maas/shared';
