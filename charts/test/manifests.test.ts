/**
 * The generated files are current (k8s/, the values schema, the dashboard), and the kustomize base and
 * GPU overlay, built by the real kubectl, are the chart's own renders and valid for the API.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { type K8sObject, parseObjects, ROOT, SCRIPTS, tools, validateFiles } from './helpers';

const generator = require('../../scripts/k8s/generate-manifests.js') as {
  render(helm: string, valuesFiles: string[]): K8sObject[];
  CHART: string;
  OUT: string;
};

function run(script: string, args: string[]) {
  const result = spawnSync(process.execPath, [join(SCRIPTS, script), ...args], { encoding: 'utf8' });
  return { status: result.status, output: result.stdout + result.stderr };
}

function kustomize(dir: string): K8sObject[] {
  const result = spawnSync(tools().kubectl, ['kustomize', join(ROOT, dir)], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`kubectl kustomize ${dir}: ${result.stderr}`);
  return parseObjects(result.stdout);
}

const byKey = (objects: K8sObject[]) =>
  new Map(objects.map((o) => [`${o.apiVersion}/${o.kind}/${o.metadata.name}`, o]));

describe('generated files are current', () => {
  test.each([
    ['generate-manifests.js', 'k8s/'],
    ['values-schema.js', 'charts/maas/values.schema.json'],
    ['dashboard.js', 'charts/maas/dashboards/maas.json'],
  ])('%s --check (%s)', (script) => {
    const result = run(script, ['--check']);
    expect(result.output).not.toMatch(/stale/);
    expect(result.status).toBe(0);
  });
});

describe('kubectl kustomize', () => {
  const base = () => kustomize('k8s/base');
  const gpu = () => kustomize('k8s/overlays/gpu');

  test('the base is the chart with the CPU-only profile, in namespace maas, valid for the API', () => {
    const built = base();
    const expected = generator.render(tools().helm, [
      join(generator.CHART, 'values-cpu-only.yaml'),
      join(generator.OUT, 'values.yaml'),
    ]);
    const builtByKey = byKey(built);
    expect(builtByKey.get('v1/Namespace/maas')!.metadata.labels!['pod-security.kubernetes.io/enforce']).toBe(
      'restricted',
    );
    for (const [key, object] of byKey(expected)) expect(builtByKey.get(key)).toEqual(object);
    expect(built).toHaveLength(expected.length + 1);
    for (const object of built) {
      if (object.kind !== 'Namespace') expect(object.metadata.namespace).toBe('maas');
      expect(object.metadata.labels?.['helm.sh/chart']).toBeUndefined();
    }
    const runner = built.find((o) => o.kind === 'Deployment' && o.metadata.name === 'maas-model-runner')!;
    expect(runner.spec.template.spec.containers[0].resources.limits['nvidia.com/gpu']).toBeUndefined();
  });

  test('the GPU overlay is the chart with the GPU profile', () => {
    const built = gpu();
    const expected = generator.render(tools().helm, [
      join(generator.CHART, 'values-gpu.yaml'),
      join(generator.OUT, 'values.yaml'),
    ]);
    const builtByKey = byKey(built);
    for (const [key, object] of byKey(expected)) expect(builtByKey.get(key)).toEqual(object);
    const runner = builtByKey.get('apps/v1/Deployment/maas-model-runner')!;
    expect(runner.spec.template.spec.containers[0].resources.limits['nvidia.com/gpu']).toBe(1);
    expect(runner.spec.template.spec.runtimeClassName).toBe('nvidia');
  });

  test('both validate with kubernetes-models', () => {
    const results = validateFiles({
      base: base()
        .map((o) => JSON.stringify(o))
        .join('\n---\n'),
      gpu: gpu()
        .map((o) => JSON.stringify(o))
        .join('\n---\n'),
    });
    expect(results.length).toBeGreaterThan(30);
    expect(results.filter((r) => r.errors.length > 0)).toEqual([]);
  });
});
