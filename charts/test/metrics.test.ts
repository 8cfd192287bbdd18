/**
 * The dashboard, the alerts and the autoscalers query metrics by name: a renamed metric would leave a
 * blank panel or an alert that never fires, silently. This starts the three real services in-process
 * (as `npm start` and the pods run them), sends a little traffic, scrapes each /metrics endpoint as
 * Prometheus does, and checks every metric name and label the chart's queries use against it.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createClient, createMetricsRegistry, createLogger } from '@maas/shared';
import { scrapeMetrics } from '@maas/shared/testing';
import {
  ClassifyRequest,
  GenerateRequest,
  MaasServiceClient,
} from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import { makeTempDir, writeFixtureRepository } from '@maas/models';
import type { Registry } from 'prom-client';
import { byKind, CHART, parseObjects, SCENARIOS, template } from './helpers';

interface Running {
  grpcPort: number;
  metricsPort: number;
  stop(): Promise<void>;
}
type Start = (config: never, deps: { logger: unknown; metricsRegistry: Registry }) => Promise<Running>;

/** A service's start function and config loader, or why they cannot be used (yet). */
function service(
  pkg: string,
  start: string,
  load: string,
): { start: Start; load: (env: object) => never } | string {
  const mod = require(pkg) as Record<string, unknown>;
  if (typeof mod[start] !== 'function' || typeof mod[load] !== 'function') {
    return `${pkg} does not export ${start} and ${load} yet`;
  }
  return { start: mod[start] as Start, load: mod[load] as (env: object) => never };
}

const services = {
  tokenizer: service('@maas/tokenizer', 'startTokenizer', 'loadTokenizerConfig'),
  'model-runner': service('@maas/model-runner', 'startModelRunner', 'loadRunnerConfig'),
  orchestrator: service('@maas/orchestrator', 'startOrchestrator', 'loadOrchestratorConfig'),
};
const missing = Object.values(services).filter((s): s is string => typeof s === 'string');
if (missing.length > 0) {
  console.warn(`SKIPPED: metric names are not checked against a live scrape: ${missing.join('; ')}`);
}
const describeLive = missing.length > 0 ? describe.skip : describe;

/** Labels Prometheus adds at scrape time (target labels, the ServiceMonitor's relabelings) or histogram buckets carry. */
const SCRAPE_LABELS = new Set([
  'namespace',
  'pod',
  'service',
  'job',
  'instance',
  'endpoint',
  'container',
  'component',
  'maas_instance',
  'le',
]);
/** Series the queries may use that the services do not export: Prometheus' own and kube-state-metrics'. */
const EXTERNAL = new Set([
  'up',
  'kube_deployment_status_replicas_available',
  'kube_deployment_spec_replicas',
]);
const KEYWORDS = new Set([
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'bool',
  'and',
  'or',
  'unless',
  'offset',
]);

interface Family {
  type: string;
  labels: Set<string>;
  samples: number;
}

/** Metric families of a scrape: `# TYPE` lines, sample counts; label names from the same registry. */
function families(scrape: string, registry: Registry): Map<string, Family> {
  const found = new Map<string, Family>();
  for (const line of scrape.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) found.set(type[1]!, { type: type[2]!, labels: new Set(), samples: 0 });
  }
  for (const line of scrape.split('\n')) {
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s/.exec(line);
    if (!sample) continue;
    const name = sample[1]!;
    const family = found.get(name) ?? found.get(name.replace(/_(bucket|sum|count)$/, ''));
    if (family) family.samples += 1;
  }
  for (const metric of registry.getMetricsAsArray()) {
    const { name, labelNames } = metric as unknown as { name: string; labelNames?: string[] };
    for (const label of labelNames ?? []) found.get(name)?.labels.add(label);
  }
  return found;
}

/** The series names a sample name may belong to: a histogram's _bucket/_sum/_count, or the name itself. */
function familyOf(name: string, all: Map<string, Family>): Family | undefined {
  const direct = all.get(name);
  if (direct && direct.type !== 'histogram' && direct.type !== 'summary') return direct;
  const suffix = /^(.*)_(bucket|sum|count)$/.exec(name);
  if (suffix) {
    const family = all.get(suffix[1]!);
    if (family?.type === 'histogram' || (family?.type === 'summary' && suffix[2] !== 'bucket')) return family;
  }
  return undefined;
}

/** Metric names and the label names a PromQL expression uses. */
export function parsePromql(expr: string): { metrics: string[]; labels: string[] } {
  const labels: string[] = [];
  let rest = expr.replace(/\{([^}]*)\}/g, (_m, matchers: string) => {
    for (const m of matchers.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)/g)) labels.push(m[1]!);
    return ' ';
  });
  rest = rest.replace(/\[[^\]]*\]/g, ' ');
  rest = rest.replace(
    /\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g,
    (_m, _kw, list: string) => {
      labels.push(
        ...list
          .split(',')
          .map((l) => l.trim())
          .filter(Boolean),
      );
      return ' ';
    },
  );
  rest = rest.replace(/"(?:[^"\\]|\\.)*"/g, ' ');
  const metrics = [...rest.matchAll(/(?<![$\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()/g)]
    .map((m) => m[1]!)
    .filter((word) => !KEYWORDS.has(word));
  return { metrics: [...new Set(metrics)], labels: [...new Set(labels)] };
}

describe('parsePromql', () => {
  test('finds metrics and labels, not functions, keywords or variables', () => {
    expect(
      parsePromql(
        'histogram_quantile(0.99, sum by (le, model) (rate(x_seconds_bucket{namespace="$namespace", reason!~"a|b"}[$__rate_interval]))) > 2 or up{job="j"} == 0',
      ),
    ).toEqual({ metrics: ['x_seconds_bucket', 'up'], labels: ['namespace', 'reason', 'job', 'le', 'model'] });
  });
});

describeLive('metric names the chart queries are exported by the running services', () => {
  const scraped = new Map<string, Map<string, Family>>();
  const stops: Array<() => Promise<void>> = [];

  beforeAll(async () => {
    const live = services as unknown as Record<string, { start: Start; load: (env: object) => never }>;
    const repository = writeFixtureRepository(makeTempDir('maas-chart-metrics-'), { tokenizers: 'tiny' });
    const env = {
      GRPC_HOST: '127.0.0.1',
      GRPC_PORT: '0',
      METRICS_HOST: '127.0.0.1',
      METRICS_PORT: '0',
      SHUTDOWN_DRAIN_MS: '1000',
      MODEL_REPOSITORY: repository.root,
    };
    const logger = (name: string) => createLogger({ service: name, level: 'silent' });
    const registries: Record<string, Registry> = {};
    const ports: Record<string, number> = {};
    const run = async (name: string, extraEnv: object) => {
      registries[name] = createMetricsRegistry();
      const running = await live[name]!.start(live[name]!.load({ ...env, ...extraEnv }), {
        logger: logger(name),
        metricsRegistry: registries[name]!,
      });
      stops.unshift(() => running.stop());
      ports[name] = running.metricsPort;
      return running;
    };
    const tokenizer = await run('tokenizer', { TOKENIZER_RELOAD_INTERVAL_MS: '0' });
    const runner = await run('model-runner', { RUNNER_WARMUP: 'false' });
    const orchestrator = await run('orchestrator', {
      AUTH_MODE: 'disabled',
      TOKENIZER_ADDRESS: `127.0.0.1:${tokenizer.grpcPort}`,
      RUNNER_ADDRESS: `127.0.0.1:${runner.grpcPort}`,
    });

    // A little traffic, so that the labelled series exist in the scrape as they would in production.
    const client = createClient(MaasServiceClient, `127.0.0.1:${orchestrator.grpcPort}`);
    try {
      await waitFor(async () => {
        await new Promise((resolve, reject) =>
          client.classify(
            ClassifyRequest.fromPartial({ model: 'bert-classifier', texts: ['a fine day'] }),
            (e, r) => (e ? reject(e) : resolve(r)),
          ),
        );
      });
      await new Promise<void>((resolve, reject) => {
        const stream = client.generate(
          GenerateRequest.fromPartial({ model: 'tiny-gpt2', prompt: 'hello', maxNewTokens: 3 }),
        );
        stream.on('data', () => {});
        stream.on('end', () => resolve());
        stream.on('error', reject);
      });
    } finally {
      client.close();
    }
    for (const name of Object.keys(ports)) {
      scraped.set(name, families(await scrapeMetrics(ports[name]!), registries[name]!));
    }
  }, 60_000);

  afterAll(async () => {
    for (const stop of stops) await stop();
  });

  /** Every (metric, labels) use of an expression, checked; returns the problems. */
  function check(source: string, expr: string): string[] {
    const all = new Map<string, Family>();
    for (const found of scraped.values()) for (const [name, family] of found) all.set(name, family);
    const { metrics, labels } = parsePromql(expr);
    const problems: string[] = [];
    const used: Family[] = [];
    for (const metric of metrics) {
      if (EXTERNAL.has(metric)) continue;
      const family = familyOf(metric, all);
      if (!family) problems.push(`${source}: ${metric} is not exported by any service`);
      else used.push(family);
    }
    for (const label of labels) {
      if (SCRAPE_LABELS.has(label) || used.length === 0) continue;
      if (!used.some((f) => f.labels.has(label))) {
        problems.push(`${source}: label ${label} is on none of ${metrics.join(', ')}`);
      }
    }
    return problems;
  }

  test('the scrapes are real: each service exports its gRPC, process and own metrics, with samples', () => {
    for (const [name, found] of scraped) {
      expect(found.get('grpc_server_handled_total')?.samples).toBeGreaterThan(0);
      expect(found.get('process_cpu_seconds_total')?.samples).toBeGreaterThan(0);
      expect(
        [...found.keys()].some((n) =>
          n.startsWith(
            `maas_${name === 'model-runner' ? 'runner' : name === 'orchestrator' ? 'usage' : name}_`,
          ),
        ),
      ).toBe(true);
    }
    expect(
      scraped.get('model-runner')!.get('maas_runner_generation_time_to_first_token_seconds')!.samples,
    ).toBeGreaterThan(0);
    expect(scraped.get('orchestrator')!.get('maas_usage_requests_total')!.labels).toEqual(
      new Set(['key_id', 'model', 'task', 'code']),
    );
  });

  test('every dashboard query', () => {
    const dashboard = JSON.parse(readFileSync(join(CHART, 'dashboards', 'maas.json'), 'utf8'));
    const exprs: Array<[string, string]> = [];
    for (const panel of dashboard.panels) {
      for (const target of panel.targets ?? []) exprs.push([`panel "${panel.title}"`, target.expr]);
    }
    for (const variable of dashboard.templating.list) {
      if (variable.query?.query)
        exprs.push([
          `variable ${variable.name}`,
          variable.query.query.replace(/^label_values\((.*),\s*\w+\)$/, '$1'),
        ]);
    }
    expect(exprs.length).toBeGreaterThan(30);
    expect(exprs.flatMap(([source, expr]) => check(source, expr))).toEqual([]);
  });

  test('every alert, the runner HPA metric and the KEDA query', () => {
    const monitoring = parseObjects(template(SCENARIOS.find((s) => s.name === 'monitoring')!));
    const rules = byKind(monitoring, 'PrometheusRule')[0]!.spec.groups.flatMap(
      (g: { rules: object[] }) => g.rules,
    );
    const problems = rules.flatMap((r: { alert: string; expr: string }) => check(`alert ${r.alert}`, r.expr));
    const hpa = byKind(parseObjects(template({ values: [] })), 'HorizontalPodAutoscaler').find(
      (h) => h.metadata.labels!['app.kubernetes.io/component'] === 'model-runner',
    )!;
    problems.push(...check('runner HPA', hpa.spec.metrics[0].pods.metric.name));
    const keda = byKind(
      parseObjects(template(SCENARIOS.find((s) => s.name === 'keda')!)),
      'ScaledObject',
    )[0]!;
    problems.push(...check('KEDA trigger', keda.spec.triggers[0].metadata.query));
    expect(rules.length).toBeGreaterThanOrEqual(5);
    expect(problems).toEqual([]);
  });

  test('a metric the services do not export is caught', () => {
    expect(check('test', 'sum by (model) (rate(maas_runner_queue_seconds_bucket[5m]))')).toEqual([
      'test: maas_runner_queue_seconds_bucket is not exported by any service',
    ]);
    expect(check('test', 'sum by (tenant) (rate(maas_usage_requests_total[5m]))')).toEqual([
      'test: label tenant is on none of maas_usage_requests_total',
    ]);
  });
});

async function waitFor(attempt: () => Promise<void>, timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await attempt();
    } catch (error) {
      if (Date.now() > until) throw error;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}
