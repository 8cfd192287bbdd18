/**
 * The Helm chart through the real helm binary: lint --strict and template of every scenario values
 * file, every rendered object validated by kubernetes-models, and the rules schemas cannot express.
 */
import { cpSync, mkdtempSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { parseKeysFile } from '@maas/orchestrator/access/api-keys';
import {
  byKind,
  CHART,
  containersOf,
  envOf,
  helm,
  type K8sObject,
  lint,
  parseObjects,
  SCENARIOS,
  type Scenario,
  selects,
  template,
  validateFiles,
} from './helpers';

const rendered = new Map<string, K8sObject[]>();
const texts: Record<string, string> = {};

beforeAll(() => {
  for (const scenario of SCENARIOS) {
    texts[scenario.name] = template(scenario);
    rendered.set(scenario.name, parseObjects(texts[scenario.name]!));
  }
});

const objectsOf = (scenario: Scenario) => rendered.get(scenario.name)!;
const deploymentNamed = (objects: K8sObject[], component: string) =>
  byKind(objects, 'Deployment').find((d) => d.metadata.labels?.['app.kubernetes.io/component'] === component);
const each = SCENARIOS.map((s) => [s.name, s] as const);

describe('helm lint --strict', () => {
  test.each(each)('%s', (_name, scenario) => {
    const result = lint(scenario);
    expect(result.stderr + result.stdout).toContain('0 chart(s) failed');
    expect(result.status).toBe(0);
  });
});

describe('rendered objects', () => {
  test('every object of every scenario is valid for the Kubernetes API (kubernetes-models)', () => {
    const results = validateFiles(texts);
    const count = [...rendered.values()].reduce((n, objects) => n + objects.length, 0);
    expect(results).toHaveLength(count);
    expect(results.filter((r) => r.errors.length > 0)).toEqual([]);
  });

  test.each(each)('%s: the expected kinds, one Deployment per enabled component', (_name, scenario) => {
    const objects = objectsOf(scenario);
    const components = byKind(objects, 'Deployment').map(
      (d) => d.metadata.labels!['app.kubernetes.io/component'],
    );
    expect(components.sort()).toEqual(
      scenario.name === 'split' ? ['orchestrator'] : ['model-runner', 'orchestrator', 'tokenizer'],
    );
    expect(byKind(objects, 'ScaledObject')).toHaveLength(scenario.keda ? 1 : 0);
    for (const kind of ['ServiceMonitor', 'PrometheusRule']) {
      expect(byKind(objects, kind)).toHaveLength(scenario.monitoring ? 1 : 0);
    }
    expect(byKind(objects, 'Ingress')).toHaveLength(scenario.ingress ? 1 : 0);
  });

  test.each(each)('%s: names fit in 63 characters; labels are complete', (_name, scenario) => {
    for (const object of objectsOf(scenario)) {
      expect(object.metadata.name.length).toBeLessThanOrEqual(63);
      expect(object.metadata.name).toMatch(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/);
      const labels = object.metadata.labels ?? {};
      for (const key of ['name', 'instance', 'part-of', 'version', 'managed-by']) {
        expect(labels[`app.kubernetes.io/${key}`]).toBeTruthy();
      }
      for (const value of Object.values(labels)) expect(value.length).toBeLessThanOrEqual(63);
      if (object.kind === 'Service') expect(object.metadata.name).toMatch(/^[a-z]([-a-z0-9]*[a-z0-9])?$/);
    }
    for (const d of byKind(objectsOf(scenario), 'Deployment')) {
      expect(d.metadata.labels!['app.kubernetes.io/component']).toBeTruthy();
    }
    // Cutting long names must never make two objects of a kind collide.
    const keys = objectsOf(scenario).map((o) => `${o.kind}/${o.metadata.name}`);
    expect(new Set(keys).size).toBe(keys.length);
  });
});

describe('selectors match labels', () => {
  test.each(each)('%s', (_name, scenario) => {
    const objects = objectsOf(scenario);
    const deployments = byKind(objects, 'Deployment');
    const podLabels = (d: K8sObject) => d.spec.template.metadata.labels as Record<string, string>;
    const portNames = (d: K8sObject) =>
      d.spec.template.spec.containers.flatMap((c: { ports?: Array<{ name: string }> }) =>
        (c.ports ?? []).map((p) => p.name),
      ) as string[];

    for (const d of deployments) {
      expect(selects(d.spec.selector.matchLabels, podLabels(d))).toBe(true);
      for (const constraint of d.spec.template.spec.topologySpreadConstraints ?? []) {
        expect(selects(constraint.labelSelector.matchLabels, podLabels(d))).toBe(true);
      }
    }
    // Each Service, PDB and NetworkPolicy selects the pods of exactly one Deployment, by ports it has.
    for (const service of byKind(objects, 'Service')) {
      const targets = deployments.filter((d) => selects(service.spec.selector, podLabels(d)));
      expect(targets).toHaveLength(1);
      for (const port of service.spec.ports) expect(portNames(targets[0]!)).toContain(port.targetPort);
    }
    for (const pdb of byKind(objects, 'PodDisruptionBudget')) {
      expect(deployments.filter((d) => selects(pdb.spec.selector.matchLabels, podLabels(d)))).toHaveLength(1);
    }
    const orchestrator = deploymentNamed(objects, 'orchestrator')!;
    for (const policy of byKind(objects, 'NetworkPolicy')) {
      const targets = deployments.filter((d) => selects(policy.spec.podSelector.matchLabels, podLabels(d)));
      expect(targets).toHaveLength(1);
      for (const rule of policy.spec.ingress) {
        for (const port of rule.ports) expect(portNames(targets[0]!)).toContain(port.port);
        for (const peer of rule.from ?? []) {
          if (peer.podSelector)
            expect(selects(peer.podSelector.matchLabels, podLabels(orchestrator))).toBe(true);
        }
      }
    }
    // Autoscalers point at Deployments of this render.
    const names = deployments.map((d) => d.metadata.name);
    for (const scaler of [
      ...byKind(objects, 'HorizontalPodAutoscaler'),
      ...byKind(objects, 'ScaledObject'),
    ]) {
      expect(scaler.spec.scaleTargetRef.kind ?? 'Deployment').toBe('Deployment');
      expect(names).toContain(scaler.spec.scaleTargetRef.name);
    }
    // The ServiceMonitor finds every ClusterIP Service, each with a metrics port.
    for (const monitor of byKind(objects, 'ServiceMonitor')) {
      const selected = byKind(objects, 'Service').filter(
        (s) =>
          selects(monitor.spec.selector.matchLabels, s.metadata.labels) &&
          monitor.spec.selector.matchExpressions.every((e: { key: string; values: string[] }) =>
            e.values.includes(s.metadata.labels![e.key]!),
          ) &&
          s.spec.ports.some((p: { name: string }) => p.name === monitor.spec.endpoints[0].port),
      );
      expect(selected.map((s) => s.metadata.name).sort()).toEqual(
        byKind(objects, 'Service')
          .filter((s) => s.spec.clusterIP !== 'None')
          .map((s) => s.metadata.name)
          .sort(),
      );
    }
  });
});

describe('pods', () => {
  test.each(each)(
    '%s: gRPC probes on the port named grpc; startup outlasts model loading',
    (_name, scenario) => {
      for (const d of byKind(objectsOf(scenario), 'Deployment')) {
        const container = d.spec.template.spec.containers[0];
        const grpcPort = container.ports.find((p: { name: string }) => p.name === 'grpc').containerPort;
        expect(envOf(container, 'GRPC_PORT')).toBe(String(grpcPort));
        for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
          expect(container[probe].grpc).toEqual({ port: grpcPort });
        }
        const startupSeconds = container.startupProbe.periodSeconds * container.startupProbe.failureThreshold;
        expect(startupSeconds).toBeGreaterThanOrEqual(
          d.metadata.labels!['app.kubernetes.io/component'] === 'model-runner' ? 300 : 60,
        );
        const metricsPort = container.ports.find((p: { name: string }) => p.name === 'metrics').containerPort;
        expect(envOf(container, 'METRICS_PORT')).toBe(String(metricsPort));
        expect(envOf(container, 'GRPC_HOST')).toBe('0.0.0.0');
      }
    },
  );

  test.each(each)(
    '%s: nothing runs as root; read-only root filesystem with /tmp mounted',
    (_name, scenario) => {
      for (const d of byKind(objectsOf(scenario), 'Deployment')) {
        const pod = d.spec.template.spec;
        expect(pod.securityContext.runAsNonRoot).toBe(true);
        expect(pod.securityContext.runAsUser).toBeGreaterThan(0);
        expect(pod.automountServiceAccountToken).toBe(false);
        for (const container of containersOf(d)) {
          const sc = container.securityContext;
          expect(sc.runAsNonRoot).toBe(true);
          expect(sc.runAsUser ?? pod.securityContext.runAsUser).toBeGreaterThan(0);
          expect(sc.privileged).not.toBe(true);
          expect(sc.allowPrivilegeEscalation).toBe(false);
          expect(sc.readOnlyRootFilesystem).toBe(true);
          expect(sc.capabilities.drop).toEqual(['ALL']);
          expect(sc.capabilities.add).toBeUndefined();
          expect((sc.seccompProfile ?? pod.securityContext.seccompProfile).type).toBe('RuntimeDefault');
          expect(container.volumeMounts).toEqual(
            expect.arrayContaining([{ name: 'tmp', mountPath: '/tmp' }]),
          );
        }
      }
    },
  );

  test.each(each)('%s: every container has CPU and memory requests and a memory limit', (_name, scenario) => {
    for (const d of byKind(objectsOf(scenario), 'Deployment')) {
      for (const container of containersOf(d)) {
        expect(container.resources.requests.cpu).toBeDefined();
        expect(container.resources.requests.memory).toBeDefined();
        expect(container.resources.limits.memory).toBeDefined();
      }
    }
  });

  test.each(each)('%s: GPUs only for the model-runner, and only in GPU scenarios', (_name, scenario) => {
    for (const d of byKind(objectsOf(scenario), 'Deployment')) {
      const runner = d.metadata.labels!['app.kubernetes.io/component'] === 'model-runner';
      const pod = d.spec.template.spec;
      for (const container of containersOf(d)) {
        const gpus = container.resources.limits['nvidia.com/gpu'];
        const isMain = container === pod.containers[0];
        expect(gpus).toBe(runner && isMain && scenario.gpu ? 1 : undefined);
        expect(container.resources.requests['nvidia.com/gpu']).toBeUndefined();
      }
      const onGpuPool = runner && scenario.gpu;
      expect(pod.runtimeClassName).toBe(onGpuPool ? 'nvidia' : undefined);
      expect(pod.nodeSelector?.['nvidia.com/gpu.present']).toBe(onGpuPool ? 'true' : undefined);
      expect(Boolean(pod.tolerations?.some((t: { key: string }) => t.key === 'nvidia.com/gpu'))).toBe(
        onGpuPool,
      );
      expect(pod.containers[0].image.endsWith('-gpu')).toBe(onGpuPool);
      // The GPU pool picks the providers of models that list none, and mounts the Vulkan driver for WebGPU.
      expect(envOf(pod.containers[0], 'RUNNER_EXECUTION_PROVIDERS')).toBe(
        onGpuPool ? 'webgpu,cuda,cpu' : undefined,
      );
      expect(envOf(pod.containers[0], 'NVIDIA_DRIVER_CAPABILITIES')).toBe(
        onGpuPool ? 'compute,utility,graphics' : undefined,
      );
    }
  });

  test('the GPU pool can be set to CUDA only (the CUDA variant), or WebGPU only', () => {
    for (const [providers, capabilities] of [
      ['cuda:0,cpu', 'compute,utility'],
      ['webgpu', 'graphics,utility'],
    ]) {
      const objects = parseObjects(
        template({ values: ['values-gpu.yaml'] }, [
          '--set',
          `modelRunner.gpu.executionProviders=${providers.replace(/,/g, '\\,')}`,
          '--set',
          `modelRunner.gpu.driverCapabilities=${capabilities!.replace(/,/g, '\\,')}`,
        ]),
      );
      const container = deploymentNamed(objects, 'model-runner')!.spec.template.spec.containers[0];
      expect(envOf(container, 'RUNNER_EXECUTION_PROVIDERS')).toBe(providers);
      expect(envOf(container, 'NVIDIA_DRIVER_CAPABILITIES')).toBe(capabilities);
    }
  });

  test.each(each)('%s: SIGKILL comes after the preStop pause and the drain', (_name, scenario) => {
    for (const d of byKind(objectsOf(scenario), 'Deployment')) {
      const pod = d.spec.template.spec;
      const container = pod.containers[0];
      const drainMs = Number(envOf(container, 'SHUTDOWN_DRAIN_MS'));
      const preStopSeconds = Number(container.lifecycle?.preStop?.exec?.command?.[1] ?? 0);
      expect(drainMs).toBeGreaterThan(0);
      expect(pod.terminationGracePeriodSeconds * 1000).toBeGreaterThan(drainMs + preStopSeconds * 1000);
    }
  });
});

describe('wiring', () => {
  test.each(SCENARIOS.filter((s) => s.name !== 'split').map((s) => [s.name, s] as const))(
    '%s: the orchestrator reaches every tokenizer and runner pod through their headless Services',
    (_name, scenario) => {
      const objects = objectsOf(scenario);
      const container = deploymentNamed(objects, 'orchestrator')!.spec.template.spec.containers[0];
      const namespace = scenario.namespace ?? 'maas';
      for (const [variable, component] of [
        ['TOKENIZER_ADDRESS', 'tokenizer'],
        ['RUNNER_ADDRESS', 'model-runner'],
      ] as const) {
        const match = /^dns:\/\/\/([^.]+)\.([^.]+)\.svc\.cluster\.local:(\d+)$/.exec(
          envOf(container, variable)!,
        );
        expect(match).not.toBeNull();
        const service = byKind(objects, 'Service').find((s) => s.metadata.name === match![1])!;
        expect(service.spec.clusterIP).toBe('None');
        expect(service.metadata.labels!['app.kubernetes.io/component']).toBe(component);
        expect(match![2]).toBe(namespace);
        expect(service.spec.ports[0].port).toBe(Number(match![3]));
      }
    },
  );

  test('split: the orchestrator alone, pointed at the addresses given, without keys', () => {
    const objects = rendered.get('split')!;
    const container = deploymentNamed(objects, 'orchestrator')!.spec.template.spec.containers[0];
    expect(envOf(container, 'TOKENIZER_ADDRESS')).toBe('dns:///tokenizer.inference.svc.cluster.local:50051');
    expect(envOf(container, 'RUNNER_ADDRESS')).toBe('10.0.0.10:50052,10.0.0.11:50052');
    expect(envOf(container, 'AUTH_MODE')).toBe('disabled');
    expect(envOf(container, 'API_KEYS_FILE')).toBeUndefined();
    expect(byKind(objects, 'Secret')).toHaveLength(0);
    expect(deploymentNamed(objects, 'orchestrator')!.spec.replicas).toBe(3);
  });

  test('API keys: the generated Secret is a keys file the orchestrator accepts, mounted where API_KEYS_FILE says', () => {
    const objects = rendered.get('monitoring')!;
    const secret = byKind(objects, 'Secret')[0]!;
    const text = Buffer.from(secret.data['keys.yaml'], 'base64').toString('utf8');
    const keys = parseKeysFile(text, 'keys.yaml');
    expect(keys.map((k) => k.id)).toEqual(['shop-frontend', 'batch-jobs']);
    expect(keys[0]!.limits).toEqual({
      requestsPerSecond: 50,
      tokensPerMinute: 200000,
      concurrentStreams: undefined,
    });
    const pod = deploymentNamed(objects, 'orchestrator')!.spec.template.spec;
    const volume = pod.volumes.find(
      (v: { secret?: { secretName: string } }) => v.secret?.secretName === secret.metadata.name,
    );
    const mount = pod.containers[0].volumeMounts.find((m: { name: string }) => m.name === volume.name);
    expect(envOf(pod.containers[0], 'API_KEYS_FILE')).toBe(`${mount.mountPath}/keys.yaml`);
    expect(mount.subPath).toBeUndefined(); // a rotated Secret must reach the running pod
    // No keys at all (the default) is an empty list: nobody gets in until keys are added.
    const empty = byKind(rendered.get('default')!, 'Secret')[0]!;
    expect(
      parseKeysFile(Buffer.from(empty.data['keys.yaml'], 'base64').toString('utf8'), 'keys.yaml'),
    ).toEqual([]);
  });

  test('existing Secret and claim: nothing generated, both mounted read-only', () => {
    const objects = rendered.get('existing-secret-claim')!;
    expect(byKind(objects, 'Secret')).toHaveLength(0);
    expect(byKind(objects, 'PersistentVolumeClaim')).toHaveLength(0);
    for (const d of byKind(objects, 'Deployment')) {
      const pod = d.spec.template.spec;
      const models = pod.volumes.find((v: { name: string }) => v.name === 'models');
      expect(models.persistentVolumeClaim).toEqual({ claimName: 'shared-models', readOnly: true });
      const mount = pod.containers[0].volumeMounts.find((m: { name: string }) => m.name === 'models');
      expect(mount).toEqual({
        name: 'models',
        mountPath: '/models',
        readOnly: true,
        subPath: 'maas/repository',
      });
      expect(envOf(pod.containers[0], 'MODEL_REPOSITORY')).toBe('/models');
    }
    const orchestrator = deploymentNamed(objects, 'orchestrator')!.spec.template.spec;
    expect(orchestrator.volumes.find((v: { name: string }) => v.name === 'api-keys').secret.secretName).toBe(
      'maas-api-keys',
    );
    expect(envOf(orchestrator.containers[0], 'API_KEYS_FILE')).toBe('/etc/maas/api-keys/keys.json');
  });

  test('model repository from a URL or an image: an init container fills an emptyDir', () => {
    const url = rendered.get('init-url')!;
    const configMap = byKind(url, 'ConfigMap').find((c) => c.metadata.name.endsWith('fetch-models'))!;
    expect(configMap.data['fetch-models.js']).toContain('createHash');
    for (const d of byKind(url, 'Deployment')) {
      const pod = d.spec.template.spec;
      const init = pod.initContainers[0];
      expect(init.command).toEqual(['node', '/opt/maas/fetch-models.js']);
      expect(init.image).toBe(pod.containers[0].image);
      expect(envOf(init, 'MODELS_SHA256')).toMatch(/^[0-9a-f]{64}$/);
      expect(pod.volumes.find((v: { name: string }) => v.name === 'models').emptyDir.sizeLimit).toBe('8Gi');
    }
    const image = rendered.get('init-image')!;
    for (const d of byKind(image, 'Deployment')) {
      const pod = d.spec.template.spec;
      expect(pod.initContainers[0].image).toBe('registry.example.com/ml/maas-models:2025-01');
      expect(pod.containers[0].image).toMatch(/^registry\.example\.com\/ml\/maas-[a-z-]+:1\.2\.3(-gpu)?$/);
      expect(pod.imagePullSecrets).toEqual([{ name: 'regcred' }]);
    }
    const pvc = byKind(rendered.get('pvc')!, 'PersistentVolumeClaim')[0]!;
    expect(pvc.spec.resources.requests.storage).toBe('50Gi');
    expect(pvc.metadata.annotations!['helm.sh/resource-policy']).toBe('keep');
  });

  test('OpenTelemetry endpoint and sampling come from values', () => {
    const container = deploymentNamed(rendered.get('monitoring')!, 'tokenizer')!.spec.template.spec
      .containers[0];
    expect(envOf(container, 'OTEL_EXPORTER_OTLP_ENDPOINT')).toBe(
      'http://otel-collector.observability.svc:4317',
    );
    expect(envOf(container, 'OTEL_TRACES_SAMPLER')).toBe('parentbased_traceidratio');
    expect(envOf(container, 'OTEL_TRACES_SAMPLER_ARG')).toBe('0.25');
    expect(envOf(container, 'OTEL_SERVICE_NAME')).toBe('maas-tokenizer');
    expect(envOf(container, 'OTEL_EXPORTER_OTLP_COMPRESSION')).toBe('gzip');
    const quiet = deploymentNamed(rendered.get('default')!, 'tokenizer')!.spec.template.spec.containers[0];
    expect(envOf(quiet, 'OTEL_EXPORTER_OTLP_ENDPOINT')).toBeUndefined();
  });
});

describe('the HTTP API', () => {
  const httpPortOf = (objects: K8sObject[]) => {
    const service = byKind(objects, 'Service').find((s) => s.metadata.name === 'maas-orchestrator')!;
    return service.spec.ports.find((p: { name: string }) => p.name === 'http');
  };

  test('the orchestrator serves it on a port named http, in its Service, pod and NetworkPolicy', () => {
    const objects = rendered.get('default')!;
    expect(httpPortOf(objects)).toEqual({ name: 'http', port: 8080, targetPort: 'http', protocol: 'TCP' });
    const container = deploymentNamed(objects, 'orchestrator')!.spec.template.spec.containers[0];
    expect(container.ports).toContainEqual({ name: 'http', containerPort: 8080, protocol: 'TCP' });
    expect(envOf(container, 'HTTP_PORT')).toBe('8080');
    expect(envOf(container, 'HTTP_HOST')).toBe('0.0.0.0');
    // The tokenizer has no HTTP API; the runner's (KServe v2 REST) is off unless its httpPort is set.
    const envOfComponent = (component: string, name: string) =>
      envOf(deploymentNamed(objects, component)!.spec.template.spec.containers[0], name);
    expect(envOfComponent('tokenizer', 'HTTP_PORT')).toBeUndefined();
    expect(envOfComponent('model-runner', 'HTTP_PORT')).toBe('-1');
    const policy = byKind(objects, 'NetworkPolicy').find(
      (p) => p.metadata.labels!['app.kubernetes.io/component'] === 'orchestrator',
    )!;
    expect(policy.spec.ingress[0].ports.map((p: { port: string }) => p.port)).toEqual(['grpc', 'http']);
    expect(byKind(objects, 'Ingress')).toEqual([]);
  });

  test('httpPort 0 turns it off everywhere (HTTP_PORT=-1)', () => {
    const objects = parseObjects(template({ values: [] }, ['--set', 'orchestrator.httpPort=0']));
    expect(httpPortOf(objects)).toBeUndefined();
    const container = deploymentNamed(objects, 'orchestrator')!.spec.template.spec.containers[0];
    expect(envOf(container, 'HTTP_PORT')).toBe('-1');
    expect(container.ports.map((p: { name: string }) => p.name)).toEqual(['grpc', 'metrics']);
    const policy = byKind(objects, 'NetworkPolicy').find(
      (p) => p.metadata.labels!['app.kubernetes.io/component'] === 'orchestrator',
    )!;
    expect(policy.spec.ingress[0].ports.map((p: { port: string }) => p.port)).toEqual(['grpc']);
  });

  test('modelRunner.httpPort serves KServe v2 REST, open to the orchestrator and networkPolicy.runnerHttpFrom', () => {
    const objects = parseObjects(
      template({ values: [] }, [
        '--set',
        'modelRunner.httpPort=8000',
        '--set-json',
        'networkPolicy.runnerHttpFrom=[{"namespaceSelector":{"matchLabels":{"team":"ml"}}}]',
      ]),
    );
    const runner = deploymentNamed(objects, 'model-runner')!;
    const container = runner.spec.template.spec.containers[0];
    expect(envOf(container, 'HTTP_PORT')).toBe('8000');
    expect(container.ports).toContainEqual({ name: 'http', containerPort: 8000, protocol: 'TCP' });
    const service = byKind(objects, 'Service').find((s) => s.metadata.name === 'maas-model-runner')!;
    expect(service.spec.ports.map((p: { name: string }) => p.name)).toEqual(['grpc', 'http', 'metrics']);
    const policy = byKind(objects, 'NetworkPolicy').find(
      (p) => p.metadata.labels!['app.kubernetes.io/component'] === 'model-runner',
    )!;
    const http = policy.spec.ingress.find((r: { ports: { port: string }[] }) => r.ports[0]!.port === 'http');
    const orchestratorLabels = deploymentNamed(objects, 'orchestrator')!.spec.template.metadata.labels;
    expect(http.from).toHaveLength(2);
    expect(selects(http.from[0].podSelector.matchLabels, orchestratorLabels)).toBe(true);
    expect(http.from[1]).toEqual({ namespaceSelector: { matchLabels: { team: 'ml' } } });
  });

  test('an Ingress routes each host to the http port of the orchestrator Service, with TLS', () => {
    const objects = rendered.get('ingress')!;
    const [ingress] = byKind(objects, 'Ingress');
    expect(ingress!.spec.ingressClassName).toBe('nginx');
    expect(ingress!.spec.tls).toEqual([
      { secretName: 'maas-example-tls', hosts: ['maas.example.com', 'api.example.com'] },
    ]);
    const paths = ingress!.spec.rules.map((r: { host: string; http: { paths: { path: string }[] } }) => [
      r.host,
      r.http.paths.map((p) => p.path),
    ]);
    expect(paths).toEqual([
      ['maas.example.com', ['/']],
      ['api.example.com', ['/v1']],
    ]);
    for (const rule of ingress!.spec.rules) {
      const backend = rule.http.paths[0].backend.service;
      const service = byKind(objects, 'Service').find((s) => s.metadata.name === backend.name)!;
      expect(service.spec.ports.map((p: { name: string }) => p.name)).toContain(backend.port.name);
    }
  });
});

describe('autoscaling', () => {
  const hpaOf = (objects: K8sObject[], component: string) =>
    byKind(objects, 'HorizontalPodAutoscaler').find(
      (h) => h.metadata.labels!['app.kubernetes.io/component'] === component,
    );

  test('tokenizer and orchestrator on CPU; the runner on in-flight requests (a Pods metric)', () => {
    const objects = rendered.get('default')!;
    for (const component of ['tokenizer', 'orchestrator']) {
      const hpa = hpaOf(objects, component)!;
      expect(hpa.apiVersion).toBe('autoscaling/v2');
      expect(hpa.spec.metrics).toEqual([
        {
          type: 'Resource',
          resource: { name: 'cpu', target: { type: 'Utilization', averageUtilization: 70 } },
        },
      ]);
      expect(deploymentNamed(objects, component)!.spec.replicas).toBeUndefined();
    }
    const runner = hpaOf(objects, 'model-runner')!;
    expect(runner.spec.metrics).toEqual([
      {
        type: 'Pods',
        pods: {
          metric: { name: 'maas_runner_pending_requests' },
          target: { type: 'AverageValue', averageValue: '16' },
        },
      },
    ]);
  });

  test('KEDA: a ScaledObject instead of the runner HPA, never both', () => {
    const objects = rendered.get('keda')!;
    expect(hpaOf(objects, 'model-runner')).toBeUndefined();
    expect(hpaOf(objects, 'tokenizer')).toBeDefined();
    const scaled = byKind(objects, 'ScaledObject')[0]!;
    expect(scaled.spec.triggers[0]).toEqual({
      type: 'prometheus',
      metadata: {
        serverAddress: 'http://kube-prometheus-stack-prometheus.monitoring.svc:9090',
        query:
          '(sum(maas_runner_queued_requests{namespace="maas", pod=~"maas-model-runner-.*"}) or vector(0)) + ' +
          '(sum(maas_runner_generation_waiting_sequences{namespace="maas", pod=~"maas-model-runner-.*"}) or vector(0))',
        threshold: '24',
      },
    });
    expect(
      scaled.spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleDown.stabilizationWindowSeconds,
    ).toBe(300);
  });

  test('no autoscaling: a fixed replica count', () => {
    const deployment = deploymentNamed(rendered.get('split')!, 'orchestrator')!;
    expect(deployment.spec.replicas).toBe(3);
    expect(hpaOf(rendered.get('split')!, 'orchestrator')).toBeUndefined();
  });
});

describe('network policies', () => {
  test('only the orchestrator calls the tokenizer and runner; metrics from the monitoring namespace', () => {
    const objects = rendered.get('default')!;
    const orchestratorLabels = deploymentNamed(objects, 'orchestrator')!.spec.template.metadata.labels;
    for (const policy of byKind(objects, 'NetworkPolicy')) {
      const component = policy.metadata.labels!['app.kubernetes.io/component'];
      expect(policy.spec.policyTypes).toEqual(['Ingress']);
      const grpc = policy.spec.ingress.find(
        (r: { ports: Array<{ port: string }> }) => r.ports[0]!.port === 'grpc',
      );
      const metrics = policy.spec.ingress.find(
        (r: { ports: Array<{ port: string }> }) => r.ports[0]!.port === 'metrics',
      );
      expect(policy.spec.ingress).toHaveLength(2);
      expect(metrics.from).toEqual([
        { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } },
      ]);
      if (component === 'orchestrator') {
        expect(grpc.from).toBeUndefined(); // the public API
      } else {
        expect(grpc.from).toHaveLength(1);
        expect(grpc.from[0].namespaceSelector).toBeUndefined();
        expect(selects(grpc.from[0].podSelector.matchLabels, orchestratorLabels)).toBe(true);
      }
    }
    const split = byKind(rendered.get('split')!, 'NetworkPolicy')[0]!;
    expect(split.spec.ingress[0].from).toEqual([
      { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'frontend' } } },
    ]);
  });
});

describe('monitoring', () => {
  test('ServiceMonitor, PrometheusRule and dashboard carry the labels kube-prometheus-stack selects by', () => {
    const objects = rendered.get('monitoring')!;
    for (const kind of ['ServiceMonitor', 'PrometheusRule']) {
      expect(byKind(objects, kind)[0]!.metadata.labels!.release).toBe('kube-prometheus-stack');
    }
    expect(byKind(objects, 'PrometheusRule')[0]!.metadata.labels!.team).toBe('ml-platform');
    const dashboard = byKind(objects, 'ConfigMap').find((c) => c.metadata.labels?.grafana_dashboard === '1')!;
    expect(dashboard.metadata.namespace).toBe('monitoring');
    expect(dashboard.metadata.labels!.release).toBe('kube-prometheus-stack');
    expect(dashboard.metadata.annotations!.grafana_folder).toBe('maas');
    const monitor = byKind(objects, 'ServiceMonitor')[0]!;
    expect(monitor.spec.endpoints[0].relabelings.map((r: { targetLabel: string }) => r.targetLabel)).toEqual([
      'component',
      'maas_instance',
    ]);
  });

  test('alerts: error rate, p99 latency, queue saturation, time to first token, pods not ready', () => {
    const rule = byKind(rendered.get('monitoring')!, 'PrometheusRule')[0]!;
    const alerts = rule.spec.groups.flatMap((g: { rules: Array<{ alert: string }> }) => g.rules);
    expect(alerts.map((a: { alert: string }) => a.alert)).toEqual(
      expect.arrayContaining([
        'MaasHighErrorRate',
        'MaasHighLatencyP99',
        'MaasRunnerQueueSaturated',
        'MaasTimeToFirstTokenHigh',
        'MaasPodsNotReady',
      ]),
    );
    for (const alert of alerts) {
      expect(alert.expr).toContain('namespace="maas"');
      expect(alert.labels.severity).toMatch(/^(warning|critical)$/);
      expect(alert.annotations.summary).toBeTruthy();
    }
    const notReady = alerts.find((a: { alert: string }) => a.alert === 'MaasPodsNotReady');
    expect(notReady.expr).toContain('deployment=~"maas-model-runner|maas-orchestrator|maas-tokenizer"');
  });

  test('the dashboard JSON parses and has the panels the issue lists', () => {
    const configMap = byKind(rendered.get('monitoring')!, 'ConfigMap').find(
      (c) => c.metadata.labels?.grafana_dashboard === '1',
    )!;
    const dashboard = JSON.parse(configMap.data['maas.json']);
    const titles: string[] = dashboard.panels.map((p: { title: string }) => p.title);
    for (const wanted of [
      /requests by method and code/i,
      /errors by service, method and code/i,
      /latency percentiles/i,
      /queue time/i,
      /batch size/i,
      /tokens per second/i,
      /time to first token/i,
      /per key/i,
      /cpu per pod/i,
      /event loop lag/i,
      /in flight per pod/i,
    ]) {
      expect(titles.some((t) => wanted.test(t))).toBe(true);
    }
    const ids = dashboard.panels.map((p: { id: number }) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const panel of dashboard.panels.filter((p: { type: string }) => p.type !== 'row')) {
      expect(panel.targets.length).toBeGreaterThan(0);
      for (const target of panel.targets) expect(target.expr).toContain('namespace="$namespace"');
    }
  });
});

describe('values.schema.json refuses bad values', () => {
  const refuse = (args: string[]) => {
    const result = helm(['template', 'maas', `${__dirname}/../maas`, ...args]);
    expect(result.status).not.toBe(0);
    return result.stderr;
  };

  test('a wrong type', () => {
    expect(refuse(['--set', 'tokenizer.replicaCount=two'])).toMatch(
      /tokenizer\.replicaCount: Invalid type\. Expected: integer/,
    );
  });

  test('both custom-metric autoscalers of the runner at once', () => {
    expect(refuse(['--set', 'modelRunner.autoscaling.keda.enabled=true'])).toMatch(
      /modelRunner\.autoscaling: Must not validate the schema/,
    );
  });

  test('a misspelt key', () => {
    expect(refuse(['--set', 'orchestrator.replcias=3'])).toMatch(
      /Additional property replcias is not allowed/,
    );
  });

  test('an execution provider the runner does not know', () => {
    expect(refuse(['--set', 'modelRunner.gpu.executionProviders=tensorrt'])).toMatch(
      /modelRunner\.gpu\.executionProviders/,
    );
  });

  test('a plaintext API key in values', () => {
    expect(refuse(['--set-json', 'apiKeys.keys=[{"id":"a","key":"plaintext-key-0123456789"}]'])).toMatch(
      /apiKeys\.keys\.0/,
    );
  });

  test('an existing claim without its name, a URL source without a URL', () => {
    expect(refuse(['--set', 'modelRepository.source=existingClaim'])).toMatch(/existingClaim/);
    expect(refuse(['--set', 'modelRepository.source=url'])).toMatch(/url/);
  });

  test('an unknown sampler, a root user', () => {
    expect(refuse(['--set', 'telemetry.sampler=sometimes'])).toMatch(/telemetry\.sampler/);
    expect(refuse(['--set', 'podSecurityContext.runAsNonRoot=false'])).toMatch(/runAsNonRoot/);
  });

  test('a disabled downstream without an address to use instead', () => {
    expect(refuse(['--set', 'tokenizer.enabled=false'])).toMatch(
      /orchestrator\.tokenizerAddress is required when tokenizer\.enabled is false/,
    );
  });
});

test('profiles and scenario files parse as YAML', () => {
  for (const scenario of SCENARIOS) {
    for (const file of scenario.values) {
      expect(() =>
        parseYaml(require('node:fs').readFileSync(`${__dirname}/../maas/${file}`, 'utf8')),
      ).not.toThrow();
    }
  }
});

describe('NOTES.txt', () => {
  /** helm renders NOTES only on install; a copy of the chart renders it into a ConfigMap instead. */
  function notes(values: string[]): string {
    const dir = mkdtempSync(join(tmpdir(), 'maas-notes-'));
    cpSync(CHART, join(dir, 'maas'), { recursive: true });
    renameSync(join(dir, 'maas', 'templates', 'NOTES.txt'), join(dir, 'maas', 'notes.txt'));
    writeFileSync(
      join(dir, 'maas', 'templates', 'notes-preview.yaml'),
      'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n',
    );
    const result = helm([
      'template',
      'maas',
      join(dir, 'maas'),
      '-n',
      'maas',
      '--show-only',
      'templates/notes-preview.yaml',
      ...values.flatMap((v) => ['-f', join(CHART, v)]),
    ]);
    if (result.status !== 0) throw new Error(result.stderr);
    return parseObjects(result.stdout)[0]!.data.notes;
  }

  test('tell how to reach and call the API, and what is missing', () => {
    const text = notes([]);
    expect(text).toContain('kubectl -n maas port-forward service/maas-orchestrator 50050:50050');
    expect(text).toContain('npx maas models');
    expect(text).toContain('maas.orchestrator.v1.MaasService/Classify');
    expect(text).toContain('-H "authorization: Bearer $MAAS_API_KEY"');
    expect(text).toContain('kubectl -n maas port-forward service/maas-orchestrator 8080:8080');
    expect(text).toContain(
      'curl -s http://127.0.0.1:8080/v1/classify -H "authorization: Bearer $MAAS_API_KEY"',
    );
    expect(text).toMatch(/no API key is configured/);
    expect(text).toContain('1 nvidia.com/gpu per pod');
    const split = notes(['ci/split-values.yaml']);
    expect(split).toMatch(/WARNING: apiKeys.authMode is "disabled"/);
    expect(split).not.toContain('nvidia.com/gpu');
    expect(notes(['ci/monitoring-values.yaml'])).not.toMatch(/no API key is configured/);
  });
});
