/**
 * The public API over gRPC: maps each call onto the transport-independent
 * use cases (`core/`) — the request message as it is, the `authorization`
 * metadata, the deadline and cancellation as a `Caller` — and nothing else.
 */
import type { Metadata } from '@grpc/grpc-js';
import { serverStream, unary } from '@maas/shared';
import type { MaasServiceServer } from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import { CALLER_GONE, type Caller } from '../core/caller.js';
import type { MaasCore } from '../core/maas-core.js';

interface GrpcCall {
  metadata: Metadata;
  cancelled: boolean;
  getDeadline(): Date | number;
  on(event: 'cancelled', listener: () => void): unknown;
}

/** grpc-js emits 'cancelled' when the client cancels, its deadline passes or its connection closes. */
export function callerOf(call: GrpcCall): Caller {
  const controller = new AbortController();
  if (call.cancelled) controller.abort(CALLER_GONE);
  else call.on('cancelled', () => controller.abort(CALLER_GONE));
  const [authorization] = call.metadata.get('authorization');
  const deadline = call.getDeadline();
  const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
  return {
    authorization: authorization === undefined ? undefined : String(authorization),
    deadline: Number.isFinite(deadlineMs) ? new Date(deadlineMs) : undefined,
    signal: controller.signal,
  };
}

export function createMaasGrpcService(core: MaasCore): MaasServiceServer {
  return {
    classify: unary((request, call) => core.classify(request, callerOf(call))),
    embed: unary((request, call) => core.embed(request, callerOf(call))),
    generate: serverStream((request, call) => {
      const caller = callerOf(call);
      return core.generate(request, caller, (message) => {
        if (!caller.signal.aborted) call.write(message);
      });
    }),
    tokenize: unary((request, call) => core.tokenize(request, callerOf(call))),
    countTokens: unary((request, call) => core.countTokens(request, callerOf(call))),
    listModels: unary((_request, call) => core.listModels(callerOf(call))),
    getModel: unary((request, call) => core.getModel(request, callerOf(call))),
    classifyImage: unary((request, call) => core.classifyImage(request, callerOf(call))),
    detectObjects: unary((request, call) => core.detectObjects(request, callerOf(call))),
    readText: unary((request, call) => core.readText(request, callerOf(call))),
  };
}
