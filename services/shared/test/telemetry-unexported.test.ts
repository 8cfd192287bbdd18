/**
 * With nothing to export to, spans are not recorded (recording them only to drop them cost CPU on every
 * call), yet every span still has a trace id, so logs and downstream calls carry one.
 */
import { context, propagation, trace } from '@opentelemetry/api';
import { startTelemetry, type Telemetry } from '../src/telemetry';

let telemetry: Telemetry;
beforeAll(() => {
  telemetry = startTelemetry({ serviceName: 'unexported-test', env: {} });
});
afterAll(async () => {
  await telemetry.shutdown();
});

it('records no span but gives each a trace id and propagates it as traceparent', () => {
  const span = trace.getTracer('test').startSpan('a call');
  expect(span.isRecording()).toBe(false);
  const { traceId, spanId } = span.spanContext();
  expect(traceId).toMatch(/^[0-9a-f]{32}$/);
  expect(traceId).not.toBe('0'.repeat(32));
  const headers: Record<string, string> = {};
  propagation.inject(trace.setSpan(context.active(), span), headers);
  expect(headers.traceparent).toBe(`00-${traceId}-${spanId}-00`);
  // A child continues the caller's trace.
  const child = trace
    .getTracer('test')
    .startSpan('downstream', {}, propagation.extract(context.active(), headers));
  expect(child.spanContext().traceId).toBe(traceId);
  span.end();
  child.end();
});
