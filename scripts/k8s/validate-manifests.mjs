#!/usr/bin/env node
/**
 * Validates Kubernetes manifests offline against the API's OpenAPI schemas (kubernetes-models, API
 * level 1.34) and the CRDs the chart uses (KEDA ScaledObject, prometheus-operator ServiceMonitor and
 * PrometheusRule): wrong types, bad enums, missing required fields.
 *
 *   helm template ... | node scripts/k8s/validate-manifests.mjs -
 *   node scripts/k8s/validate-manifests.mjs rendered.yaml other.yaml [--json]
 *
 * Exit code 1 when any object is invalid or of a kind it has no schema for. ESM because
 * kubernetes-models is ESM-only (the jest tests run this as a child process).
 */
import { readFileSync } from 'node:fs';
import { parseAllDocuments } from 'yaml';

/** The module of a kind's model, by apiVersion. */
function modulePath(apiVersion, kind) {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion];
  if (group === 'keda.sh') return `@kubernetes-models/keda/keda.sh/${version}/${kind}`;
  if (group === 'monitoring.coreos.com')
    return `@kubernetes-models/prometheus-operator/monitoring.coreos.com/${version}/${kind}`;
  return group ? `kubernetes-models/${group}/${version}/${kind}` : `kubernetes-models/${version}/${kind}`;
}

async function validate(object) {
  const { apiVersion, kind } = object;
  if (typeof apiVersion !== 'string' || typeof kind !== 'string') return ['apiVersion and kind are required'];
  let Model;
  try {
    Model = (await import(modulePath(apiVersion, kind)))[kind];
  } catch {
    return [`no schema for ${apiVersion} ${kind}`];
  }
  try {
    new Model(object).validate();
    return [];
  } catch (error) {
    return String(error.message)
      .split(/,\s*(?=data\/)|\n/)
      .filter(Boolean);
  }
}

const args = process.argv.slice(2);
const json = args.includes('--json');
const files = args.filter((a) => a !== '--json');
if (files.length === 0) {
  console.error('usage: validate-manifests.mjs <file.yaml|-> ... [--json]');
  process.exit(2);
}

const results = [];
for (const file of files) {
  const text = readFileSync(file === '-' ? 0 : file, 'utf8');
  for (const document of parseAllDocuments(text)) {
    if (document.errors.length > 0) {
      results.push({ file, kind: '?', name: '?', errors: document.errors.map((e) => e.message) });
      continue;
    }
    const object = document.toJS();
    if (object === null || object === undefined) continue;
    results.push({
      file,
      apiVersion: object.apiVersion,
      kind: object.kind,
      name: object.metadata?.name,
      errors: await validate(object),
    });
  }
}

const invalid = results.filter((r) => r.errors.length > 0);
if (json) {
  console.log(JSON.stringify(results));
} else {
  for (const r of invalid) console.error(`${r.file}: ${r.kind}/${r.name}: ${r.errors.join('; ')}`);
  console.log(`${results.length - invalid.length} valid, ${invalid.length} invalid`);
}
process.exit(invalid.length > 0 ? 1 : 0);
