/**
 * Runs the real tools over the chart: helm and kubectl fetched by scripts/k8s/fetch-tools.sh (cached
 * in .cache/k8s-tools), kubernetes-models through scripts/k8s/validate-manifests.mjs (ESM, so a child
 * process), and parses what they print.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';

export const ROOT = join(__dirname, '..', '..');
export const CHART = join(ROOT, 'charts', 'maas');
export const SCRIPTS = join(ROOT, 'scripts', 'k8s');

let toolsDir: string | undefined;
/** helm and kubectl, fetched once per machine. */
export function tools(): { helm: string; kubectl: string } {
  toolsDir ??= execFileSync(join(SCRIPTS, 'fetch-tools.sh'), { encoding: 'utf8' }).trim().split('\n').pop()!;
  return { helm: join(toolsDir, 'helm'), kubectl: join(toolsDir, 'kubectl') };
}

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  // Rendered manifests are free-form; tests narrow what they read.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  spec?: any;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  [field: string]: any;
}

export interface Scenario {
  name: string;
  /** Values files, relative to the chart. */
  values: string[];
  release?: string;
  namespace?: string;
  /** What the scenario turns on, for the assertions that depend on it. */
  gpu: boolean;
  keda?: boolean;
  monitoring?: boolean;
  ingress?: boolean;
}

/** One values file per scenario the issue names, plus the model-repository sources and a split install. */
export const SCENARIOS: Scenario[] = [
  { name: 'default', values: [], gpu: true },
  { name: 'cpu-only', values: ['values-cpu-only.yaml'], gpu: false },
  { name: 'gpu', values: ['values-gpu.yaml'], gpu: true },
  { name: 'keda', values: ['ci/keda-values.yaml'], gpu: true, keda: true },
  { name: 'monitoring', values: ['ci/monitoring-values.yaml'], gpu: true, monitoring: true },
  { name: 'existing-secret-claim', values: ['ci/existing-secret-claim-values.yaml'], gpu: true },
  { name: 'pvc', values: ['ci/pvc-values.yaml'], gpu: false },
  { name: 'init-url', values: ['ci/init-url-values.yaml'], gpu: true },
  { name: 'init-image', values: ['ci/init-image-values.yaml'], gpu: true },
  { name: 'split', values: ['ci/split-values.yaml'], gpu: false },
  { name: 'ingress', values: ['ci/ingress-values.yaml'], gpu: true, ingress: true },
  {
    // Helm's longest release name: every name must still fit in 63 characters.
    name: 'long-release-name',
    values: ['values-cpu-only.yaml', 'ci/monitoring-values.yaml'],
    release: 'a-release-name-of-fifty-three-characters-for-testing',
    namespace: 'a-namespace-with-quite-a-long-name-too',
    gpu: false,
    monitoring: true,
  },
];

export interface HelmResult {
  status: number;
  stdout: string;
  stderr: string;
}

export function helm(args: string[]): HelmResult {
  const result = spawnSync(tools().helm, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  return { status: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
}

const valuesArgs = (files: string[]) => files.flatMap((f) => ['-f', join(CHART, f)]);

export function lint(scenario: Scenario): HelmResult {
  return helm(['lint', '--strict', CHART, ...valuesArgs(scenario.values)]);
}

/** `helm template` of a scenario (or of extra --set arguments), failing loudly. */
export function template(
  scenario: Pick<Scenario, 'values' | 'release' | 'namespace'>,
  extra: string[] = [],
): string {
  const result = helm([
    'template',
    scenario.release ?? 'maas',
    CHART,
    '--namespace',
    scenario.namespace ?? 'maas',
    ...valuesArgs(scenario.values),
    ...extra,
  ]);
  if (result.status !== 0) throw new Error(`helm template failed: ${result.stderr}`);
  return result.stdout;
}

export function parseObjects(yamlText: string): K8sObject[] {
  return parseAllDocuments(yamlText)
    .map((d) => {
      if (d.errors.length > 0) throw new Error(`rendered YAML does not parse: ${d.errors[0]!.message}`);
      return d.toJS() as K8sObject | null;
    })
    .filter((o): o is K8sObject => o !== null && o !== undefined);
}

export interface Validation {
  file: string;
  kind: string;
  name: string;
  errors: string[];
}

/** kubernetes-models validation of every object of every file, in one child process. */
export function validateFiles(texts: Record<string, string>): Validation[] {
  const dir = mkdtempSync(join(tmpdir(), 'maas-chart-'));
  const files = Object.entries(texts).map(([name, text]) => {
    const file = join(dir, `${name}.yaml`);
    writeFileSync(file, text);
    return file;
  });
  const result = spawnSync(process.execPath, [join(SCRIPTS, 'validate-manifests.mjs'), '--json', ...files], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  if (!result.stdout) throw new Error(`validate-manifests.mjs printed nothing: ${result.stderr}`);
  return (JSON.parse(result.stdout) as Validation[]).map((v) => ({
    ...v,
    file: v.file.slice(dir.length + 1).replace(/\.yaml$/, ''),
  }));
}

export const byKind = (objects: K8sObject[], kind: string) => objects.filter((o) => o.kind === kind);

/** Does a selector's matchLabels (or a plain selector map) select these labels? */
export function selects(
  selector: Record<string, string> | undefined,
  labels: Record<string, string> | undefined,
) {
  if (!selector || Object.keys(selector).length === 0) return false;
  return Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

/** Pod templates' containers, init containers included, with the Deployment they belong to. */
export function containersOf(deployment: K8sObject) {
  const spec = deployment.spec.template.spec;
  return [...(spec.initContainers ?? []), ...spec.containers] as Array<{
    name: string;
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    [field: string]: any;
  }>;
}

export const envOf = (container: { env?: Array<{ name: string; value?: string }> }, name: string) =>
  container.env?.find((e) => e.name === name)?.value;
