#!/usr/bin/env node
/**
 * Writes the Grafana dashboard the chart ships (charts/maas/dashboards/maas.json).
 *
 * The JSON is generated rather than hand-edited so that every panel follows the same conventions:
 * series of one release are selected by `namespace` and `maas_instance` (the labels the chart's
 * ServiceMonitor adds), rates use $__rate_interval, latencies are histogram_quantile over `le`.
 * `node scripts/k8s/dashboard.js --check` fails when the file is stale (CI runs it through the tests).
 */
'use strict';
const { readFileSync, writeFileSync } = require('node:fs');
const { join } = require('node:path');

const OUT = join(__dirname, '..', '..', 'charts', 'maas', 'dashboards', 'maas.json');
const SEL = 'namespace="$namespace", maas_instance="$instance"';
const API = 'grpc_service!~"grpc\\\\..*"'; // not health checks and reflection
const RATE = '[$__rate_interval]';

const rate = (metric, extra = '') => `rate(${metric}{${SEL}${extra ? `, ${extra}` : ''}}${RATE})`;
const quantile = (q, metric, by, extra) =>
  `histogram_quantile(${q}, sum by (le, ${by}) (${rate(`${metric}_bucket`, extra)}))`;

let nextId = 1;
function panel(title, description, targets, { unit = 'short', type = 'timeseries', w = 12, h = 8, stack } = {}) {
  return {
    id: nextId++,
    type,
    title,
    description,
    datasource: { type: 'prometheus', uid: '${datasource}' },
    fieldConfig: {
      defaults: {
        unit,
        ...(type === 'timeseries'
          ? { custom: { drawStyle: 'line', fillOpacity: stack ? 30 : 10, stacking: { mode: stack ? 'normal' : 'none' } } }
          : {}),
      },
      overrides: [],
    },
    options:
      type === 'table'
        ? { showHeader: true, sortBy: [{ displayName: 'Value', desc: true }] }
        : { legend: { displayMode: 'table', placement: 'bottom', calcs: ['mean', 'max', 'lastNotNull'] }, tooltip: { mode: 'multi' } },
    targets: targets.map(([expr, legendFormat], i) => ({
      refId: String.fromCharCode(65 + i),
      expr,
      legendFormat,
      ...(type === 'table' ? { instant: true, format: 'table' } : {}),
    })),
    gridPos: { w, h },
  };
}

const row = (title) => ({ id: nextId++, type: 'row', title, collapsed: false, panels: [], gridPos: { w: 24, h: 1 } });

const percentiles = (metric, by, legend, extra) =>
  [0.5, 0.95, 0.99].map((q) => [quantile(q, metric, by, extra), `p${Math.round(q * 100)} ${legend}`]);

const panels = [
  row('Requests and errors'),
  panel(
    'Public API requests by method and code',
    'Calls to the orchestrator (maas.orchestrator.v1) per second, by method and gRPC status code.',
    [[`sum by (grpc_method, grpc_code) (${rate('grpc_server_handled_total', `component="orchestrator", ${API}`)})`, '{{grpc_method}} {{grpc_code}}']],
    { unit: 'reqps', stack: true },
  ),
  panel(
    'Errors by service, method and code',
    'Calls per second that did not end OK, on every service (client errors such as INVALID_ARGUMENT included).',
    [
      [
        `sum by (component, grpc_method, grpc_code) (${rate('grpc_server_handled_total', `grpc_code!="OK", ${API}`)})`,
        '{{component}} {{grpc_method}} {{grpc_code}}',
      ],
    ],
    { unit: 'reqps', stack: true },
  ),
  panel(
    'Server error ratio by service',
    'Share of calls ending in Unknown, Internal, Unavailable, DataLoss, DeadlineExceeded or Unimplemented.',
    [
      [
        `sum by (component) (${rate('grpc_server_handled_total', `grpc_code=~"Unknown|Internal|Unavailable|DataLoss|DeadlineExceeded|Unimplemented", ${API}`)})` +
          ` / sum by (component) (${rate('grpc_server_handled_total', API)})`,
        '{{component}}',
      ],
    ],
    { unit: 'percentunit' },
  ),
  panel(
    'Requests by service',
    'Calls per second each service handles (the tokenizer and runner count coalesced batches).',
    [[`sum by (component) (${rate('grpc_server_handled_total', API)})`, '{{component}}']],
    { unit: 'reqps' },
  ),
  row('Latency'),
  panel(
    'Unary latency percentiles by service',
    'p50, p95 and p99 of unary calls (streams last as long as their text and are left out).',
    percentiles('grpc_server_handling_seconds', 'component', '{{component}}', `grpc_type="unary", ${API}`),
    { unit: 's' },
  ),
  panel(
    'Public API p99 by method',
    'p99 latency of each orchestrator method (Generate: the whole stream).',
    [
      [
        quantile(0.99, 'grpc_server_handling_seconds', 'grpc_method', `component="orchestrator", ${API}`),
        '{{grpc_method}}',
      ],
    ],
    { unit: 's' },
  ),
  row('Model runner'),
  panel(
    'Queue time percentiles by model',
    'Time requests wait in the dynamic-batching queue before their batch starts.',
    percentiles('maas_runner_queue_duration_seconds', 'model', '{{model}}'),
    { unit: 's' },
  ),
  panel(
    'Compute time p95 by model',
    'onnxruntime time of one execution (a whole batch).',
    [[quantile(0.95, 'maas_runner_compute_duration_seconds', 'model'), '{{model}}']],
    { unit: 's' },
  ),
  panel(
    'Batch size by model',
    'Rows per model execution: the mean (inferences / executions) and the p95.',
    [
      [
        `sum by (model) (${rate('maas_runner_inferences_total')}) / sum by (model) (${rate('maas_runner_executions_total')})`,
        'mean {{model}}',
      ],
      [quantile(0.95, 'maas_runner_batch_size', 'model'), 'p95 {{model}}'],
    ],
  ),
  panel(
    'Inferences by model',
    'Rows inferred per second, and requests refused or failed by reason.',
    [
      [`sum by (model) (${rate('maas_runner_inferences_total')})`, '{{model}}'],
      [`sum by (model, reason) (${rate('maas_runner_inference_failures_total')})`, 'failed {{model}} {{reason}}'],
    ],
    { unit: 'ops' },
  ),
  panel(
    'Model versions by state',
    'Model versions per state over the runner pods (READY serves; LOADING includes warm-up), and the last load time.',
    [
      [`sum by (model, state) (maas_runner_model_state{${SEL}})`, '{{model}} {{state}}'],
      [`max by (model) (maas_runner_model_load_duration_seconds{${SEL}})`, 'load seconds {{model}}'],
    ],
  ),
  row('Generation'),
  panel(
    'Tokens per second by model',
    'Generated tokens per second (decode) and prompt tokens per second (prefill).',
    [
      [`sum by (model) (${rate('maas_runner_generation_generated_tokens_total')})`, 'generated {{model}}'],
      [`sum by (model) (${rate('maas_runner_generation_prompt_tokens_total')})`, 'prompt {{model}}'],
    ],
    { unit: 'short' },
  ),
  panel(
    'Time to first token',
    'From a sequence reaching the runner to its first generated token (queue + prefill).',
    percentiles('maas_runner_generation_time_to_first_token_seconds', 'model', '{{model}}'),
    { unit: 's' },
  ),
  panel(
    'Inter-token latency p95',
    'Time between consecutive tokens of a sequence.',
    [[quantile(0.95, 'maas_runner_generation_inter_token_latency_seconds', 'model'), '{{model}}']],
    { unit: 's' },
  ),
  panel(
    'Sequences running and waiting',
    'Sequences holding a slot of the running batch, and sequences waiting for one.',
    [
      [`sum by (model) (maas_runner_generation_running_sequences{${SEL}})`, 'running {{model}}'],
      [`sum by (model) (maas_runner_generation_waiting_sequences{${SEL}})`, 'waiting {{model}}'],
    ],
  ),
  row('Usage per API key'),
  panel(
    'Requests per key and model',
    'Public API calls per second by API key id, model and status code.',
    [[`sum by (key_id, model, code) (${rate('maas_usage_requests_total')})`, '{{key_id}} {{model}} {{code}}']],
    { unit: 'reqps', stack: true },
  ),
  panel(
    'Tokens per second per key',
    'Prompt and generated tokens per second by API key id.',
    [
      [`sum by (key_id) (${rate('maas_usage_prompt_tokens_total')})`, 'prompt {{key_id}}'],
      [`sum by (key_id) (${rate('maas_usage_generated_tokens_total')})`, 'generated {{key_id}}'],
    ],
    { stack: true },
  ),
  panel(
    'Tokens per key and model over the time range',
    'Prompt plus generated tokens in the selected time range: the billing view.',
    [
      [
        `sum by (key_id, model) (increase(maas_usage_prompt_tokens_total{${SEL}}[$__range]))` +
          ` + sum by (key_id, model) (increase(maas_usage_generated_tokens_total{${SEL}}[$__range]))`,
        '',
      ],
    ],
    { type: 'table', w: 24 },
  ),
  row('Saturation per service'),
  panel(
    'CPU per pod',
    'CPU seconds per second (1 = one core) of each pod, by service.',
    [[`sum by (component, pod) (${rate('process_cpu_seconds_total')})`, '{{component}} {{pod}}']],
    { unit: 'short' },
  ),
  panel(
    'Event loop lag p99 per pod',
    'A busy Node.js event loop delays every call on the pod.',
    [[`max by (component, pod) (nodejs_eventloop_lag_p99_seconds{${SEL}})`, '{{component}} {{pod}}']],
    { unit: 's' },
  ),
  panel(
    'Runner requests in flight per pod',
    'Queued or executing requests (the autoscaling signal) and the queue depth alone.',
    [
      [`sum by (pod) (maas_runner_pending_requests{${SEL}})`, 'in flight {{pod}}'],
      [`sum by (pod) (maas_runner_queued_requests{${SEL}})`, 'queued {{pod}}'],
    ],
  ),
  panel(
    'Resident memory per pod',
    'Process resident set size, by service.',
    [[`sum by (component, pod) (process_resident_memory_bytes{${SEL}})`, '{{component}} {{pod}}']],
    { unit: 'bytes' },
  ),
  panel(
    'Pods scraped per service',
    'Pods whose metrics endpoint answers, by service.',
    [[`sum by (component) (up{${SEL}})`, '{{component}}']],
  ),
  panel(
    'Orchestrator coalescing',
    'Texts and requests per coalesced downstream batch (p95), and tokenizer throughput.',
    [
      [quantile(0.95, 'maas_orchestrator_batch_rows', 'model'), 'rows p95 {{model}}'],
      [quantile(0.95, 'maas_orchestrator_batch_requests', 'model'), 'requests p95 {{model}}'],
      [`sum(${rate('maas_tokenizer_tokens_total')})`, 'tokenizer tokens/s'],
    ],
  ),
];

/** Lays panels out left to right, 24 columns wide; a row starts a new line. */
function layout(list) {
  let x = 0;
  let y = 0;
  let rowHeight = 0;
  for (const p of list) {
    if (p.type === 'row' || x + p.gridPos.w > 24) {
      y += rowHeight;
      x = 0;
      rowHeight = 0;
    }
    p.gridPos = { ...p.gridPos, x, y };
    x += p.gridPos.w;
    rowHeight = Math.max(rowHeight, p.gridPos.h);
    if (p.type === 'row') {
      y += p.gridPos.h;
      x = 0;
      rowHeight = 0;
    }
  }
  return list;
}

const dashboard = {
  uid: 'maas-overview',
  title: 'maas',
  description: 'maas: requests, errors, latency, batching, generation, per-key usage and saturation.',
  tags: ['maas', 'grpc', 'inference'],
  editable: true,
  graphTooltip: 1,
  refresh: '30s',
  schemaVersion: 39,
  time: { from: 'now-1h', to: 'now' },
  timezone: '',
  templating: {
    list: [
      { name: 'datasource', label: 'Data source', type: 'datasource', query: 'prometheus', current: {}, hide: 0 },
      {
        name: 'namespace',
        label: 'Namespace',
        type: 'query',
        datasource: { type: 'prometheus', uid: '${datasource}' },
        query: { query: 'label_values(up{maas_instance!=""}, namespace)', refId: 'namespace' },
        definition: 'label_values(up{maas_instance!=""}, namespace)',
        refresh: 2,
        sort: 1,
        current: {},
        hide: 0,
      },
      {
        name: 'instance',
        label: 'Release',
        type: 'query',
        datasource: { type: 'prometheus', uid: '${datasource}' },
        query: { query: 'label_values(up{namespace="$namespace", maas_instance!=""}, maas_instance)', refId: 'instance' },
        definition: 'label_values(up{namespace="$namespace", maas_instance!=""}, maas_instance)',
        refresh: 2,
        sort: 1,
        current: {},
        hide: 0,
      },
    ],
  },
  annotations: { list: [] },
  panels: layout(panels),
};

const text = `${JSON.stringify(dashboard, null, 2)}\n`;
if (process.argv.includes('--check')) {
  let current = '';
  try {
    current = readFileSync(OUT, 'utf8');
  } catch {
    // missing counts as stale
  }
  if (current !== text) {
    console.error(`${OUT} is stale: run node scripts/k8s/dashboard.js`);
    process.exit(1);
  }
} else {
  writeFileSync(OUT, text);
  console.log(`wrote ${OUT} (${panels.filter((p) => p.type !== 'row').length} panels)`);
}
