#!/usr/bin/env node
/**
 * Writes charts/maas/values.schema.json, which Helm enforces on every install, upgrade, lint and
 * template, whatever values files are given.
 *
 * Generated because the three components share most of their shape, and JSON Schema cannot extend an
 * object that forbids unknown keys (additionalProperties: false catches typos such as `replcias`).
 * `node scripts/k8s/values-schema.js --check` fails when the file is stale.
 */
'use strict';
const { readFileSync, writeFileSync } = require('node:fs');
const { join } = require('node:path');

const OUT = join(__dirname, '..', '..', 'charts', 'maas', 'values.schema.json');

// ---- building blocks -------------------------------------------------------------------------------
const obj = (properties, extra = {}) => ({ type: 'object', additionalProperties: false, properties, ...extra });
const str = (extra = {}) => ({ type: 'string', ...extra });
const int = (minimum, maximum, extra = {}) => ({
  type: 'integer',
  ...(minimum !== undefined ? { minimum } : {}),
  ...(maximum !== undefined ? { maximum } : {}),
  ...extra,
});
const bool = { type: 'boolean' };
const stringMap = { type: 'object', additionalProperties: { type: 'string' } };
const anyObject = { type: 'object' };
const anyList = { type: 'array', items: { type: 'object' } };
const port = int(1, 65535);
/** Kubernetes quantity: "500m", "2", 2, "4Gi". */
const quantity = { type: ['string', 'number'], pattern: '^[0-9.]+([eE][-+]?[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$' };
const duration = str({ pattern: '^([0-9]+(ms|s|m|h))+$' });
const envName = '^[A-Za-z_][A-Za-z0-9_]*$';
const envMap = {
  type: 'object',
  propertyNames: { pattern: envName },
  additionalProperties: { type: ['string', 'number', 'boolean'] },
};
const resources = obj({
  requests: { type: 'object', additionalProperties: quantity },
  limits: { type: 'object', additionalProperties: quantity },
});
const probe = obj(
  { periodSeconds: int(1, 3600), failureThreshold: int(1, 10000), timeoutSeconds: int(1, 600) },
  { required: ['periodSeconds', 'failureThreshold', 'timeoutSeconds'] },
);
const pdb = {
  type: 'object',
  additionalProperties: false,
  properties: {
    enabled: bool,
    maxUnavailable: { type: ['integer', 'string'], pattern: '^[0-9]+%$', minimum: 0 },
    minAvailable: { type: ['integer', 'string'], pattern: '^[0-9]+%$', minimum: 0 },
  },
  required: ['enabled'],
};

function component(name, { grpcPort, extra = {}, autoscaling = {} }) {
  return obj(
    {
      enabled: bool,
      replicaCount: int(0, 1000),
      image: obj(
        {
          repository: str({ minLength: 1 }),
          tag: str({ description: 'empty: image.tag or the chart appVersion' }),
          digest: str({ pattern: '^(sha256:[0-9a-f]{64})?$' }),
        },
        { required: ['repository'] },
      ),
      grpcPort: { ...port, default: grpcPort },
      metricsPort: port,
      drainSeconds: int(0, 600, { description: 'SHUTDOWN_DRAIN_MS in seconds' }),
      config: { ...envMap, description: `${name} settings as environment variables` },
      extraEnv: anyList,
      service: obj({
        type: { enum: ['ClusterIP', 'NodePort', 'LoadBalancer'] },
        annotations: stringMap,
      }),
      resources,
      autoscaling: obj(
        {
          enabled: bool,
          minReplicas: int(1, 1000),
          maxReplicas: int(1, 1000),
          targetCPUUtilizationPercentage: int(1, 1000),
          behavior: anyObject,
          ...autoscaling,
        },
        { required: ['enabled', 'minReplicas', 'maxReplicas'] },
      ),
      pdb,
      updateStrategy: anyObject,
      probes: obj({ startup: probe, readiness: probe, liveness: probe }, { required: ['startup', 'readiness', 'liveness'] }),
      topologySpread: obj({
        enabled: bool,
        maxSkew: int(1, 100),
        whenUnsatisfiable: { enum: ['ScheduleAnyway', 'DoNotSchedule'] },
        topologyKeys: { type: 'array', items: str({ minLength: 1 }) },
      }),
      nodeSelector: stringMap,
      tolerations: anyList,
      affinity: anyObject,
      priorityClassName: str(),
      podAnnotations: stringMap,
      podLabels: stringMap,
      ...extra,
    },
    { required: ['enabled', 'image', 'grpcPort', 'metricsPort', 'drainSeconds', 'resources', 'probes'] },
  );
}

const address = str({
  description: 'host:port, ip:port,ip:port or dns:///name:port; empty: this release\'s component',
  pattern: '^$|^(dns:///)?[^\\s/]+:[0-9]+(,[^\\s/]+:[0-9]+)*$',
});

const enabledTrue = { properties: { enabled: { const: true } }, required: ['enabled'] };

const schema = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  title: 'maas Helm chart values',
  type: 'object',
  additionalProperties: false,
  properties: {
    global: anyObject,
    nameOverride: str({ maxLength: 40 }),
    fullnameOverride: str({ maxLength: 63 }),
    commonLabels: stringMap,
    clusterDomain: str({ minLength: 1 }),
    image: obj({ registry: str(), tag: str(), pullPolicy: { enum: ['Always', 'IfNotPresent', 'Never'] } }),
    imagePullSecrets: { type: 'array', items: obj({ name: str({ minLength: 1 }) }, { required: ['name'] }) },
    listenHost: str({ minLength: 1 }),
    logLevel: { enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] },
    serviceAccount: obj({ create: bool, name: str(), annotations: stringMap }),
    podSecurityContext: {
      type: 'object',
      description: 'runAsNonRoot must stay true: the images run as uid 10001',
      properties: { runAsNonRoot: { const: true }, runAsUser: int(1) },
    },
    containerSecurityContext: {
      type: 'object',
      properties: {
        runAsNonRoot: { const: true },
        runAsUser: int(1),
        allowPrivilegeEscalation: { const: false },
        privileged: { const: false },
      },
    },
    tmpSizeLimit: quantity,
    telemetry: obj({
      otlpEndpoint: str({ pattern: '^$|^https?://' }),
      sampler: {
        enum: [
          'always_on',
          'always_off',
          'traceidratio',
          'parentbased_always_on',
          'parentbased_always_off',
          'parentbased_traceidratio',
        ],
      },
      samplerArg: { type: ['string', 'number'], pattern: '^(0(\\.[0-9]+)?|1(\\.0+)?)$', minimum: 0, maximum: 1 },
      extraEnv: envMap,
    }),
    modelRepository: {
      ...obj({
        source: { enum: ['builtin', 'pvc', 'existingClaim', 'image', 'url'] },
        mountPath: str({ pattern: '^/' }),
        subPath: str({ pattern: '^$|^[^/]' }),
        pvc: obj({
          size: quantity,
          storageClassName: str(),
          accessModes: {
            type: 'array',
            minItems: 1,
            items: { enum: ['ReadWriteOnce', 'ReadOnlyMany', 'ReadWriteMany', 'ReadWriteOncePod'] },
          },
          annotations: stringMap,
        }),
        existingClaim: str(),
        image: obj({
          repository: str(),
          tag: str(),
          pullPolicy: { enum: ['Always', 'IfNotPresent', 'Never'] },
          path: str({ pattern: '^/' }),
        }),
        url: obj({ url: str({ pattern: '^$|^https?://' }), sha256: str({ pattern: '^$|^[0-9a-fA-F]{64}$' }) }),
        emptyDirSizeLimit: quantity,
        initResources: resources,
      }),
      required: ['source', 'mountPath'],
      allOf: [
        {
          if: { properties: { source: { const: 'existingClaim' } } },
          then: { properties: { existingClaim: { minLength: 1 } }, required: ['existingClaim'] },
        },
        {
          if: { properties: { source: { const: 'image' } } },
          then: { properties: { image: { properties: { repository: { minLength: 1 } }, required: ['repository'] } } },
        },
        {
          if: { properties: { source: { const: 'url' } } },
          then: { properties: { url: { properties: { url: { minLength: 1 } }, required: ['url'] } } },
        },
      ],
    },
    apiKeys: obj({
      authMode: { enum: ['api-keys', 'disabled'] },
      existingSecret: str(),
      existingSecretKey: str({ pattern: '^[-._a-zA-Z0-9]+$' }),
      keys: {
        type: 'array',
        description: 'digests only: a plaintext `key` would be stored in the Helm release',
        items: obj(
          {
            id: str({ pattern: '^[A-Za-z0-9._:@-]{1,64}$' }),
            key_sha256: str({ pattern: '^[0-9a-fA-F]{64}$' }),
            models: { type: 'array', minItems: 1, items: str({ minLength: 1 }) },
            limits: obj({
              requests_per_second: { type: 'number', exclusiveMinimum: 0 },
              tokens_per_minute: int(1),
              concurrent_streams: int(1),
            }),
          },
          { required: ['id', 'key_sha256'] },
        ),
      },
      reloadMs: int(0),
    }),
    shutdown: obj({ preStopSleepSeconds: int(0, 120) }),
    networkPolicy: obj({
      enabled: bool,
      orchestratorFrom: anyList,
      runnerHttpFrom: anyList,
      metrics: obj({ from: anyList }),
    }),
    monitoring: obj({
      labels: stringMap,
      serviceMonitor: obj({
        enabled: bool,
        interval: duration,
        scrapeTimeout: duration,
        namespace: str(),
        labels: stringMap,
      }),
      prometheusRule: obj({
        enabled: bool,
        namespace: str(),
        labels: stringMap,
        errorRatio: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
        p99LatencySeconds: { type: 'number', exclusiveMinimum: 0 },
        pendingRequestsPerPod: { type: 'number', exclusiveMinimum: 0 },
        queueP95Seconds: { type: 'number', exclusiveMinimum: 0 },
        timeToFirstTokenP95Seconds: { type: 'number', exclusiveMinimum: 0 },
        for: duration,
      }),
      dashboard: obj({ enabled: bool, namespace: str(), labels: stringMap, annotations: stringMap }),
    }),
    orchestrator: component('orchestrator', {
      grpcPort: 50050,
      extra: {
        tokenizerAddress: address,
        runnerAddress: address,
        httpPort: int(0, 65535, {
          default: 8080,
          description: 'the HTTP API (OpenAI-compatible and JSON routes) on a port named http; 0: off',
        }),
        ingress: obj({
          enabled: { ...bool, description: 'an Ingress for the HTTP API' },
          className: str({ description: 'ingressClassName; empty: the cluster default' }),
          annotations: stringMap,
          hosts: {
            type: 'array',
            items: obj(
              {
                host: str({ minLength: 1 }),
                paths: {
                  type: 'array',
                  items: obj(
                    { path: str({ pattern: '^/' }), pathType: { enum: ['Prefix', 'Exact', 'ImplementationSpecific'] } },
                    { required: ['path'] },
                  ),
                },
              },
              { required: ['host'] },
            ),
          },
          tls: {
            type: 'array',
            items: obj(
              { secretName: str({ minLength: 1 }), hosts: { type: 'array', items: str() } },
              { required: ['secretName'] },
            ),
            description: 'TLS: [{secretName, hosts}]',
          },
        }),
      },
    }),
    tokenizer: component('tokenizer', { grpcPort: 50051 }),
    modelRunner: component('model-runner', {
      grpcPort: 50052,
      extra: {
        httpPort: int(0, 65535, { default: 0, description: 'KServe v2 REST on a port named http; 0: off' }),
        gpu: obj(
          {
            enabled: bool,
            count: int(1, 16),
            resourceName: str({ pattern: '^[a-z0-9.-]+/[a-z0-9.-]+$' }),
            runtimeClassName: str(),
            imageTagSuffix: str(),
            executionProviders: str({
              pattern: '^(cpu|webgpu|cuda(:[0-9]+)?)(,(cpu|webgpu|cuda(:[0-9]+)?))*$',
              description: 'RUNNER_EXECUTION_PROVIDERS, e.g. webgpu,cuda,cpu',
            }),
            driverCapabilities: str({
              pattern: '^[a-z]+(,[a-z]+)*$',
              description: 'NVIDIA_DRIVER_CAPABILITIES; graphics is what WebGPU (Vulkan) needs',
            }),
            nodeSelector: stringMap,
            tolerations: anyList,
            affinity: anyObject,
          },
          { required: ['enabled'] },
        ),
      },
      autoscaling: {
        podsMetric: obj({
          enabled: bool,
          metricName: str({ pattern: '^[a-zA-Z_:][a-zA-Z0-9_:]*$' }),
          targetAverageValue: quantity,
        }),
        keda: obj({
          enabled: bool,
          serverAddress: str({ pattern: '^https?://' }),
          query: str(),
          threshold: quantity,
          pollingInterval: int(1),
          cooldownPeriod: int(0),
        }),
      },
    }),
  },
};

// The runner scales on one custom metric: prometheus-adapter's (an HPA of type Pods) or KEDA's
// (a ScaledObject that makes its own HPA). Both at once would be two autoscalers fighting over one
// Deployment.
schema.properties.modelRunner.properties.autoscaling.not = {
  description: 'podsMetric.enabled and keda.enabled are mutually exclusive',
  properties: { podsMetric: enabledTrue, keda: enabledTrue },
  required: ['podsMetric', 'keda'],
};

const text = `${JSON.stringify(schema, null, 2)}\n`;
if (process.argv.includes('--check')) {
  let current = '';
  try {
    current = readFileSync(OUT, 'utf8');
  } catch {
    // missing counts as stale
  }
  if (current !== text) {
    console.error(`${OUT} is stale: run node scripts/k8s/values-schema.js`);
    process.exit(1);
  }
} else {
  writeFileSync(OUT, text);
  console.log(`wrote ${OUT}`);
}
