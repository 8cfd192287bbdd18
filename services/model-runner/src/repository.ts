/**
 * The models this runner serves: loaded from the model repository, warmed up,
 * then READY. A load of a loaded model reloads it beside the old versions and
 * switches atomically; old versions drain their in-flight work before their
 * sessions are released. One model failing to load never affects the others.
 */
import type * as ort from 'onnxruntime-node';
import { notFound, readLabels, scanModel, scanRepository, unavailable } from '@maas/shared';
import type { Logger, ModelConfig, RepositoryModel } from '@maas/shared';
import { DynamicBatcher } from './batcher.js';
import { GenerationEngine, type GenerationMetrics } from './generation/index.js';
import type { RunnerMetrics } from './metrics.js';
import { createSession, type ThreadDefaults } from './session.js';
import { datatypeOfOrt } from './tensors.js';

export type VersionState = 'LOADING' | 'READY' | 'UNLOADING' | 'UNAVAILABLE';

export interface ModelVersion {
  name: string;
  version: number;
  state: VersionState;
  reason: string;
  config: ModelConfig;
  labels?: string[];
  sessions: ort.InferenceSession[];
  batcher?: DynamicBatcher;
  engine?: GenerationEngine;
  provider?: 'cpu' | 'cuda';
}

interface ModelEntry {
  name: string;
  versions: Map<number, ModelVersion>;
  /** Why the model as a whole cannot load (bad config, no versions). */
  error?: string;
}

export interface RepositoryDeps {
  root: string;
  threads: ThreadDefaults;
  warmup: boolean;
  metrics: RunnerMetrics;
  generationMetrics: GenerationMetrics;
  logger: Logger;
}

export class ModelRepository {
  private readonly models = new Map<string, ModelEntry>();
  private readonly loading = new Map<string, Promise<void>>();

  constructor(private readonly deps: RepositoryDeps) {}

  /** Loads every model (or the named ones), each on its own; failures are recorded, not thrown. */
  async loadAll(names?: string[]): Promise<void> {
    const found = names ?? scanRepository(this.deps.root).map((m) => m.name);
    for (const name of found) await this.load(name);
  }

  /** Loads or reloads one model. Concurrent loads of the same model share one attempt. */
  load(name: string): Promise<void> {
    const current = this.loading.get(name);
    if (current) return current;
    const attempt = this.loadModel(name).finally(() => this.loading.delete(name));
    this.loading.set(name, attempt);
    return attempt;
  }

  private async loadModel(name: string): Promise<void> {
    const scanned = scanModel(this.deps.root, name);
    const entry = this.models.get(name) ?? { name, versions: new Map<number, ModelVersion>() };
    this.models.set(name, entry);
    if (scanned.error || !scanned.config) {
      entry.error = scanned.error ?? 'invalid model';
      this.deps.logger.error({ model: name, reason: entry.error }, 'model failed to load');
      return; // versions already loaded keep serving
    }
    entry.error = undefined;
    const fresh = await Promise.all(
      scanned.versions.map((v) => this.loadVersion(scanned, v.version, v.modelPath, v.dir)),
    );
    const old = [...entry.versions.values()];
    if (!fresh.some((v) => v.state === 'READY') && old.some((v) => v.state === 'READY')) {
      // A failed reload keeps the versions that work (as Triton does); the failure is reported.
      entry.error = `reload failed: ${fresh.map((v) => v.reason).join('; ')}`;
      this.deps.logger.error(
        { model: name, reason: entry.error },
        'model reload failed, keeping the loaded versions',
      );
      return;
    }
    // Switch: requests that resolve a version from now on get the new ones.
    entry.versions = new Map(fresh.map((v) => [v.version, v]));
    for (const v of fresh) this.setStateMetric(v);
    await Promise.all(old.map((v) => this.release(v)));
  }

  private async loadVersion(
    model: RepositoryModel,
    version: number,
    modelPath: string,
    dir: string,
  ): Promise<ModelVersion> {
    const config = model.config!;
    const mv: ModelVersion = {
      name: model.name,
      version,
      state: 'LOADING',
      reason: '',
      config,
      sessions: [],
    };
    const { logger } = this.deps;
    try {
      for (let i = 0; i < config.instanceCount; i++) {
        const created = await createSession(modelPath, config, this.deps.threads, logger);
        mv.sessions.push(created.session);
        mv.provider = created.provider;
      }
      const session = mv.sessions[0]!;
      if (config.task === 'generation') {
        mv.engine = new GenerationEngine({
          modelName: model.name,
          modelVersion: String(version),
          session,
          config,
          metrics: this.deps.generationMetrics,
          logger,
        });
      } else {
        checkAgainstGraph(config, session);
        mv.batcher = new DynamicBatcher(mv.sessions, config, version, this.deps.metrics, logger);
      }
      mv.labels = readLabels(config, dir);
      if (this.deps.warmup) await this.warmUp(mv);
      mv.state = 'READY';
      logger.info(
        { model: model.name, version, provider: mv.provider, instances: mv.sessions.length },
        'model ready',
      );
    } catch (error) {
      mv.state = 'UNAVAILABLE';
      mv.reason = (error as Error).message;
      logger.error({ model: model.name, version, reason: mv.reason }, 'model version failed to load');
      await Promise.all(mv.sessions.map((s) => s.release().catch(() => undefined)));
      mv.sessions = [];
    }
    return mv;
  }

  /** Runs a small input through the model so the first real request does not pay for lazy initialisation. */
  private async warmUp(mv: ModelVersion): Promise<void> {
    if (mv.engine) {
      const controller = new AbortController();
      await mv.engine.generate(
        {
          promptIds: [1, 2, 3],
          maxNewTokens: 2,
          sampling: {},
          stopTokenIds: [],
          ignoreEos: true,
          signal: controller.signal,
        },
        () => undefined,
      );
      return;
    }
    const { config } = mv;
    const batching = config.maxBatchSize > 0;
    for (const rows of batching ? [1, Math.min(config.maxBatchSize, 8)] : [1]) {
      const inputs = config.inputs
        .filter((spec) => !spec.optional)
        .map((spec) => {
          const shape = [...(batching ? [rows] : []), ...spec.dims.map((d) => (d < 0 ? 4 : d))];
          const count = shape.reduce((a, b) => a * b, 1);
          const isMask = spec.name.includes('mask');
          const data =
            spec.datatype === 'INT64'
              ? new BigInt64Array(count).fill(isMask ? 1n : 0n)
              : spec.datatype === 'FP32'
                ? new Float32Array(count)
                : new Int32Array(count).fill(isMask ? 1 : 0);
          return { name: spec.name, datatype: spec.datatype, shape, data };
        });
      await mv.batcher!.submit({
        inputs,
        outputs: config.outputs.map((o) => o.name),
        isCancelled: () => false,
      });
    }
  }

  async unload(name: string): Promise<void> {
    const entry = this.models.get(name);
    if (!entry) throw notFound(`model '${name}' is not loaded`);
    this.models.delete(name);
    await Promise.all([...entry.versions.values()].map((v) => this.release(v)));
  }

  private async release(mv: ModelVersion): Promise<void> {
    mv.state = 'UNLOADING';
    this.setStateMetric(mv);
    await mv.batcher?.drain();
    await mv.engine?.close();
    await Promise.all(mv.sessions.map((s) => s.release().catch(() => undefined)));
    mv.sessions = [];
    mv.state = 'UNAVAILABLE';
    mv.reason = 'unloaded';
    this.setStateMetric(mv);
  }

  private setStateMetric(mv: ModelVersion): void {
    this.deps.metrics.modelState.set(
      { model: mv.name, version: String(mv.version) },
      mv.state === 'READY' ? 1 : 0,
    );
  }

  /** The version a request asks for (newest ready one when none is named). */
  resolve(name: string, version?: string): ModelVersion {
    const entry = this.models.get(name);
    if (!entry) throw notFound(`model '${name}' not found`);
    if (version) {
      const mv = entry.versions.get(Number(version));
      if (!mv) throw notFound(`model '${name}' has no version '${version}'`);
      if (mv.state !== 'READY')
        throw unavailable(
          `model '${name}' version ${version} is ${mv.state}${mv.reason ? `: ${mv.reason}` : ''}`,
        );
      return mv;
    }
    const ready = [...entry.versions.values()]
      .filter((v) => v.state === 'READY')
      .sort((a, b) => b.version - a.version);
    if (ready.length === 0) {
      const reasons = entry.error ?? [...entry.versions.values()].map((v) => v.reason).join('; ');
      throw unavailable(`model '${name}' is not ready${reasons ? `: ${reasons}` : ''}`);
    }
    return ready[0]!;
  }

  /** Every model version known, for RepositoryIndex. */
  index(): { name: string; version: string; state: VersionState; reason: string }[] {
    const rows: { name: string; version: string; state: VersionState; reason: string }[] = [];
    const known = new Set<string>();
    for (const entry of this.models.values()) {
      known.add(entry.name);
      if (entry.versions.size === 0)
        rows.push({ name: entry.name, version: '', state: 'UNAVAILABLE', reason: entry.error ?? '' });
      for (const v of entry.versions.values()) {
        rows.push({
          name: v.name,
          version: String(v.version),
          state: v.state,
          reason: v.reason || entry.error || '',
        });
      }
    }
    for (const m of scanRepository(this.deps.root)) {
      if (!known.has(m.name))
        rows.push({ name: m.name, version: '', state: 'UNAVAILABLE', reason: m.error ?? 'not loaded' });
    }
    return rows.sort((a, b) => a.name.localeCompare(b.name) || a.version.localeCompare(b.version));
  }

  versionsOf(name: string): ModelVersion[] {
    return [...(this.models.get(name)?.versions.values() ?? [])];
  }

  /** Ready when at least one model version is READY. */
  isReady(): boolean {
    for (const entry of this.models.values())
      for (const v of entry.versions.values()) if (v.state === 'READY') return true;
    return false;
  }

  async close(): Promise<void> {
    await Promise.all([...this.models.keys()].map((name) => this.unload(name)));
  }
}

/** The config must describe the graph: every graph input configured, names and types matching. */
function checkAgainstGraph(config: ModelConfig, session: ort.InferenceSession): void {
  const problems: string[] = [];
  const graphInputs = new Set(session.inputNames);
  const configured = new Set(config.inputs.map((i) => i.name));
  for (const spec of config.inputs) {
    if (!graphInputs.has(spec.name))
      problems.push(
        `input '${spec.name}' is not in the graph (graph inputs: ${session.inputNames.join(', ')})`,
      );
  }
  for (const name of session.inputNames)
    if (!configured.has(name)) problems.push(`graph input '${name}' is missing from the config`);
  const graphOutputs = new Set(session.outputNames);
  for (const spec of config.outputs) {
    if (!graphOutputs.has(spec.name))
      problems.push(
        `output '${spec.name}' is not in the graph (graph outputs: ${session.outputNames.join(', ')})`,
      );
  }
  const metadata =
    (session as unknown as { inputMetadata?: { name: string; isTensor: boolean; type?: string }[] })
      .inputMetadata ?? [];
  for (const meta of metadata) {
    const spec = config.inputs.find((i) => i.name === meta.name);
    const graphType = meta.isTensor && meta.type ? datatypeOfOrt(meta.type) : undefined;
    if (spec && graphType && graphType !== spec.datatype) {
      problems.push(`input '${spec.name}' is ${graphType} in the graph, ${spec.datatype} in the config`);
    }
  }
  if (problems.length > 0) throw new Error(`config disagrees with the graph: ${problems.join('; ')}`);
}
