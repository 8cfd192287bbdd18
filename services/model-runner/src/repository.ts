/**
 * The models this runner serves, from the model repository (layout and
 * config schema: @maas/shared model-repository.ts). Each selected version of
 * a model gets its sessions, is checked against its graph, warmed up, and
 * only then is READY. A (re)load loads the new versions beside the serving
 * ones and switches atomically; the old ones stop taking requests, finish
 * the ones they have (drain), then release their sessions. One model failing
 * to load never affects the others.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { notFound, readLabels, scanModel, unavailable } from '@maas/shared';
import type { Logger, ModelConfig, ModelVersionFiles, RepositoryModel } from '@maas/shared';
import { DynamicBatcher } from './batcher.js';
import { checkAgainstGraph, checkConfig } from './graph-check.js';
import { servedModel } from './best-class-outputs.js';
import { GenerationEngine, WorkerDecoder, type GenerationMetrics } from './generation/index.js';
import { MODEL_STATES, type ModelState, type RunnerMetrics } from './metrics.js';
import { type CreatedSession, createSession, type SessionOpener, type ThreadDefaults } from './session.js';
import { sampleInputs } from './warmup.js';
import { InThreadSession } from './in-thread-session.js';
import { WorkerSession, type RunnableSession } from './worker-session.js';

export type { ModelState } from './metrics.js';

export interface ModelVersion {
  name: string;
  version: number;
  state: ModelState;
  /** Why the version is in its state (when READY: empty, or why it runs on a less preferred provider). */
  reason: string;
  config: ModelConfig;
  /** Batched models: their sessions, each in a worker thread or on the event loop (sessionThread). */
  sessions: RunnableSession[];
  /** Generation models: the engine's decoder (session and KV cache), in a worker thread. */
  decoder?: WorkerDecoder;
  /** Set for every task but generation. */
  batcher?: DynamicBatcher;
  /** Set for generation models. */
  engine?: GenerationEngine;
  provider?: CreatedSession['provider'];
  /** Its maas_runner_model_provider series, removed when the version goes. */
  providerLabels?: Record<string, string>;
}

interface ModelEntry {
  name: string;
  /** The versions of the last completed (re)load; requests go to the READY ones. */
  serving: ModelVersion[];
  /** Versions loading or draining, shown in the index until they settle. */
  transient: Set<ModelVersion>;
  /** A problem of the model as a whole (bad config, no version, failed reload). */
  error?: string;
  /** Unloaded at run time: requests get NOT_FOUND. */
  unloaded: boolean;
  /** The files the serving versions were loaded from, for polling. */
  signature?: string;
}

export interface IndexEntry {
  name: string;
  version: string;
  state: ModelState;
  reason: string;
}

export interface LoadOutcome {
  ready: boolean;
  reason: string;
}

export interface RepositoryDeps {
  root: string;
  threads: ThreadDefaults;
  warmup: boolean;
  metrics: RunnerMetrics;
  generationMetrics: GenerationMetrics;
  logger: Logger;
  /** Called whenever a model version changes state (readiness may have changed). */
  onStateChange?: () => void;
  /** Creates the sessions of a version; session.ts's createSession unless another is given. */
  createSession?: typeof createSession;
}

export class ModelRepository {
  private readonly models = new Map<string, ModelEntry>();
  /** One load or unload at a time per model, in arrival order. */
  private readonly locks = new Map<string, Promise<unknown>>();
  private startupFinished = false;

  constructor(private readonly deps: RepositoryDeps) {}

  /**
   * The start-up load: every model of the repository, or the named ones, one after the other.
   * Failures are recorded per model, never thrown.
   */
  async loadAll(names?: string[]): Promise<void> {
    try {
      for (const name of names ?? this.modelFolders())
        await this.load(name).catch((error: Error) => this.recordMissing(name, error));
    } finally {
      this.startupFinished = true;
      this.deps.onStateChange?.();
    }
  }

  /**
   * Ready when the start-up load has finished trying every model it should load and at least
   * one model version is READY. After start-up it follows the second half alone, so unloading
   * the last model makes the server not ready and loading one makes it ready again.
   */
  isReady(): boolean {
    if (!this.startupFinished) return false;
    for (const entry of this.models.values()) if (entry.serving.some((v) => v.state === 'READY')) return true;
    return false;
  }

  /** Loads, or reloads, one model; the outcome says whether a version is READY and why not. */
  load(name: string): Promise<LoadOutcome> {
    return this.exclusive(name, () => this.loadModel(name));
  }

  /** Unloads a model: it stops taking requests at once; requests already accepted finish first. */
  unload(name: string): Promise<void> {
    return this.exclusive(name, () => this.unloadModel(name));
  }

  /** Loads new and changed models and unloads removed ones (REPOSITORY_POLL_SECONDS). */
  async poll(names?: string[]): Promise<void> {
    const present = new Set(this.modelFolders());
    const wanted = names ? names.filter((n) => present.has(n)) : [...present];
    for (const name of wanted) {
      const entry = this.models.get(name);
      const signature = this.signatureOf(name);
      if (entry?.signature === signature) continue;
      // An explicit unload sticks until the model's files change.
      if (entry?.unloaded && entry.signature === undefined) {
        entry.signature = signature;
        continue;
      }
      this.deps.logger.info(
        { model: name },
        entry ? 'model files changed; reloading' : 'new model found; loading',
      );
      await this.load(name).catch(() => undefined);
    }
    for (const [name, entry] of this.models) {
      if (!present.has(name) && !entry.unloaded && entry.serving.length > 0) {
        this.deps.logger.info({ model: name }, 'model removed from the repository; unloading');
        await this.unload(name).catch(() => undefined);
      }
    }
  }

  /** The version a request asks for; the newest READY one when none is named. */
  resolve(name: string, version?: string): ModelVersion {
    const entry = this.models.get(name);
    if (!entry) {
      // While the runner starts, a model of the repository that it has not reached yet is coming:
      // UNAVAILABLE tells callers to retry, where NOT_FOUND would say it will never exist.
      if (!this.startupFinished && this.modelFolders().includes(name)) {
        throw unavailable(`model '${name}' is not loaded yet: the runner is starting`);
      }
      throw notFound(`model '${name}' not found`);
    }
    if (entry.unloaded) throw notFound(`model '${name}' is not loaded (it was unloaded)`);
    if (version) {
      const mv = entry.serving.find((v) => String(v.version) === version);
      if (!mv) throw notFound(`model '${name}' has no version '${version}'`);
      if (mv.state !== 'READY')
        throw unavailable(
          `model '${name}' version ${version} is ${mv.state}${mv.reason ? `: ${mv.reason}` : ''}`,
        );
      return mv;
    }
    const ready = entry.serving.filter((v) => v.state === 'READY').sort((a, b) => b.version - a.version);
    if (ready[0]) return ready[0];
    throw unavailable(`model '${name}' is not ready: ${this.whyNotReady(entry)}`);
  }

  /** The READY versions of a model, newest first. */
  readyVersions(name: string): ModelVersion[] {
    const entry = this.models.get(name);
    if (!entry || entry.unloaded) return [];
    return entry.serving.filter((v) => v.state === 'READY').sort((a, b) => b.version - a.version);
  }

  /** True when the model is known to the repository manager (loaded, failed, or unloaded). */
  knows(name: string): boolean {
    return this.models.has(name) || this.modelFolders().includes(name);
  }

  /** Every model version known, as Triton's RepositoryIndex reports them. */
  index(): IndexEntry[] {
    const rows: IndexEntry[] = [];
    for (const entry of this.models.values()) {
      const shown = new Map<number, ModelVersion>();
      for (const v of entry.transient) shown.set(v.version, v);
      // The serving versions win over a loading or draining one of the same number.
      for (const v of entry.serving)
        if (v.state === 'READY' || !shown.has(v.version)) shown.set(v.version, v);
      if (shown.size === 0) {
        rows.push({ name: entry.name, version: '', state: 'UNAVAILABLE', reason: entry.error ?? '' });
      }
      for (const v of shown.values()) {
        const reason = v.reason || (v.state === 'READY' ? '' : (entry.error ?? ''));
        rows.push({ name: v.name, version: String(v.version), state: v.state, reason });
      }
    }
    for (const name of this.modelFolders()) {
      if (!this.models.has(name))
        rows.push({ name, version: '', state: 'UNAVAILABLE', reason: 'not loaded' });
    }
    return rows.sort((a, b) => a.name.localeCompare(b.name) || Number(a.version) - Number(b.version));
  }

  /** Unloads everything (shutdown): queued and running requests finish first. */
  async close(): Promise<void> {
    await Promise.all(
      [...this.models.values()]
        .filter((e) => !e.unloaded)
        .map((e) => this.unload(e.name).catch(() => undefined)),
    );
  }

  private exclusive<T>(name: string, task: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(name) ?? Promise.resolve();
    const run = previous.then(task, task);
    const settled = run.catch(() => undefined);
    this.locks.set(name, settled);
    void settled.then(() => {
      if (this.locks.get(name) === settled) this.locks.delete(name);
    });
    return run;
  }

  private modelFolders(): string[] {
    const { root } = this.deps;
    if (!existsSync(root)) return [];
    return readdirSync(root)
      .filter((entry) => !entry.startsWith('.') && !entry.startsWith('_'))
      .filter((entry) => statSync(join(root, entry)).isDirectory())
      .sort();
  }

  /** A model named at start-up that is not in the repository still shows in the index, with why. */
  private recordMissing(name: string, error: Error): void {
    this.models.set(name, { name, serving: [], transient: new Set(), error: error.message, unloaded: false });
    this.deps.logger.error({ model: name, reason: error.message }, 'model failed to load');
  }

  private whyNotReady(entry: ModelEntry): string {
    const reasons = [
      entry.error,
      ...[...entry.transient, ...entry.serving].map(
        (v) => `version ${v.version} ${v.state}${v.reason ? `: ${v.reason}` : ''}`,
      ),
    ];
    return reasons.filter(Boolean).join('; ') || 'no version loaded';
  }

  private async loadModel(name: string): Promise<LoadOutcome> {
    const dir = join(this.deps.root, name);
    if (!existsSync(dir)) throw notFound(`model '${name}' is not in the repository ${this.deps.root}`);
    const signature = this.signatureOf(name);
    const scanned = scanModel(this.deps.root, name);
    let entry = this.models.get(name);
    if (!entry) {
      entry = { name, serving: [], transient: new Set(), unloaded: false };
      this.models.set(name, entry);
    }
    const hadReady = !entry.unloaded && entry.serving.some((v) => v.state === 'READY');
    const problem =
      scanned.error ?? (scanned.config ? checkConfig(scanned.config).join('; ') : 'invalid config');
    if (problem || !scanned.config) {
      return this.failModel(
        entry,
        signature,
        hadReady ? `reload failed, serving the loaded versions: ${problem}` : problem,
      );
    }
    const fresh = await Promise.all(scanned.versions.map((files) => this.loadVersion(entry, scanned, files)));
    const ready = fresh.filter((v) => v.state === 'READY');
    if (ready.length === 0 && hadReady) {
      // As Triton does: a failed reload keeps the versions that work, and says why.
      const reasons = fresh.map((v) => `version ${v.version}: ${v.reason}`).join('; ');
      return this.failModel(entry, signature, `reload failed, serving the loaded versions: ${reasons}`);
    }
    // The switch: from here on requests resolve to the new versions.
    const old = entry.unloaded ? [] : entry.serving;
    entry.serving = fresh;
    entry.unloaded = false;
    entry.error = undefined;
    entry.signature = signature;
    this.changed();
    await Promise.all(old.map((v) => this.release(entry, v, 'replaced by a reload')));
    return ready.length > 0
      ? { ready: true, reason: '' }
      : { ready: false, reason: fresh.map((v) => `version ${v.version}: ${v.reason}`).join('; ') };
  }

  private failModel(entry: ModelEntry, signature: string, reason: string): LoadOutcome {
    entry.error = reason;
    entry.signature = signature;
    this.deps.logger.error({ model: entry.name, reason }, 'model failed to load');
    this.changed();
    return { ready: false, reason };
  }

  private async loadVersion(
    entry: ModelEntry,
    model: RepositoryModel,
    files: ModelVersionFiles,
  ): Promise<ModelVersion> {
    // Text recognizers also serve each step's best class and its probability (best-class-outputs.ts):
    // the served config, and the graph to open, come from servedModel once the file is there.
    let config = model.config!;
    const mv: ModelVersion = {
      name: model.name,
      version: files.version,
      state: 'LOADING',
      reason: '',
      config,
      sessions: [],
    };
    const { logger } = this.deps;
    const started = performance.now();
    entry.transient.add(mv);
    this.setState(mv, 'LOADING');
    try {
      if (!existsSync(files.modelPath)) throw new Error(`${files.modelPath} is missing`);
      const served = servedModel(files.modelPath, model.config!);
      mv.config = config = served.config;
      readLabels(config, files.dir);
      const open = this.deps.createSession ?? createSession;
      let fallbackReason = '';
      const opened = (created: CreatedSession<unknown>) => {
        mv.provider = created.provider;
        fallbackReason = created.fallbackReason;
        mv.providerLabels = {
          model: model.name,
          version: String(files.version),
          provider: created.provider,
          device: created.deviceId === undefined ? '' : String(created.deviceId),
        };
        this.deps.metrics.provider.set(mv.providerLabels, 1);
      };
      const failed = (error: Error) => this.sessionFailed(mv, error);
      if (config.task === 'generation') {
        // One decoder, its session and KV cache in a worker; its graph edited to return only new
        // keys/values (new-kv-outputs.ts).
        const created = await open(files.modelPath, config, this.deps.threads, logger, (path, options) =>
          WorkerDecoder.create(path, config.generation!, options, model.name, logger),
        );
        mv.decoder = created.session;
        mv.decoder.onFailure = failed;
        opened(created);
      } else {
        for (let i = 0; i < config.instanceCount; i++) {
          const create = config.sessionThread === 'main' ? InThreadSession.create : WorkerSession.create;
          const opener: SessionOpener<InThreadSession | WorkerSession> = (path, options) =>
            create(typeof served.model === 'string' ? path : served.model, options);
          const created = await open(files.modelPath, config, this.deps.threads, logger, opener);
          mv.sessions.push(created.session);
          created.session.onFailure = failed;
          opened(created);
        }
      }
      const problems = checkAgainstGraph(config, mv.decoder ?? mv.sessions[0]!);
      if (problems.length > 0) throw new Error(`config disagrees with the graph: ${problems.join('; ')}`);
      if (config.task === 'generation') {
        mv.engine = new GenerationEngine({
          modelName: model.name,
          modelVersion: String(files.version),
          decoder: mv.decoder!,
          config,
          metrics: this.deps.generationMetrics,
          logger,
        });
      } else {
        mv.batcher = new DynamicBatcher({
          sessions: mv.sessions,
          config,
          version: files.version,
          metrics: this.deps.metrics,
          logger,
        });
      }
      if (this.deps.warmup) await this.warmUp(mv);
      mv.reason = fallbackReason ? `running on ${mv.provider}: ${fallbackReason}` : '';
      this.setState(mv, 'READY');
      logger.info(
        {
          model: model.name,
          version: files.version,
          provider: mv.provider,
          instances: mv.decoder ? 1 : mv.sessions.length,
          loadMs: Math.round(performance.now() - started),
        },
        'model version ready',
      );
    } catch (error) {
      mv.reason = (error as Error).message;
      logger.error(
        { model: model.name, version: files.version, reason: mv.reason },
        'model version failed to load',
      );
      await mv.engine?.close({ force: true }).catch(() => undefined);
      await releaseSessions(mv);
      mv.batcher = undefined;
      mv.engine = undefined;
      this.setState(mv, 'UNAVAILABLE');
    } finally {
      entry.transient.delete(mv);
      this.deps.metrics.loadSeconds.set(
        { model: mv.name, version: String(mv.version) },
        (performance.now() - started) / 1000,
      );
    }
    return mv;
  }

  /**
   * Runs sample inputs on every session (batch 1 and the largest batch, a few
   * tokens long), or a short generation (prefill and one decode step), so that
   * the first real request does not pay for lazy initialisation.
   */
  private async warmUp(mv: ModelVersion): Promise<void> {
    try {
      if (mv.engine) {
        const g = mv.config.generation!;
        await mv.engine.generate(
          {
            promptIds: [0, 1, 2].map((id) => Math.min(id, g.vocabSize - 1)),
            maxNewTokens: 2,
            sampling: {},
            stopTokenIds: [],
            ignoreEos: true,
            signal: new AbortController().signal,
          },
          () => undefined,
        );
        return;
      }
      const sizes =
        mv.config.maxBatchSize > 0 ? [...new Set([1, Math.min(mv.config.maxBatchSize, 256)])] : [1];
      for (const session of mv.sessions) {
        for (const rows of sizes)
          await session.run(sampleInputs(mv.config, rows), undefined, { transferFeeds: true });
      }
    } catch (error) {
      throw new Error(`warm-up failed: ${(error as Error).message}`);
    }
  }

  private async unloadModel(name: string): Promise<void> {
    const entry = this.models.get(name);
    if (!entry || entry.unloaded) throw notFound(`model '${name}' is not loaded`);
    entry.unloaded = true;
    entry.signature = undefined;
    const versions = entry.serving;
    this.changed();
    await Promise.all(versions.map((v) => this.release(entry, v, 'unloaded')));
  }

  /** Stops routing to a version, lets its accepted requests finish, then frees its sessions. */
  private async release(entry: ModelEntry, mv: ModelVersion, reason: string): Promise<void> {
    if (mv.providerLabels) this.deps.metrics.provider.remove(mv.providerLabels);
    if (mv.state !== 'READY') return;
    entry.transient.add(mv);
    this.setState(mv, 'UNLOADING');
    await mv.batcher?.drain();
    await mv.engine?.close();
    await releaseSessions(mv);
    mv.reason = reason;
    entry.transient.delete(mv);
    this.setState(mv, 'UNAVAILABLE');
    this.deps.logger.info({ model: mv.name, version: mv.version, reason }, 'model version released');
  }

  /** A session's worker died (a native crash, say): the version stops serving until it is reloaded. */
  private sessionFailed(mv: ModelVersion, error: Error): void {
    if (mv.state !== 'READY' && mv.state !== 'LOADING') return;
    this.deps.logger.error({ model: mv.name, version: mv.version, err: error }, 'model session failed');
    mv.reason = `${error.message}; load the model again to recover`;
    this.setState(mv, 'UNAVAILABLE');
    void releaseSessions(mv);
  }

  private setState(mv: ModelVersion, state: ModelState): void {
    mv.state = state;
    for (const s of MODEL_STATES) {
      this.deps.metrics.modelState.set(
        { model: mv.name, version: String(mv.version), state: s },
        s === state ? 1 : 0,
      );
    }
    this.changed();
  }

  private changed(): void {
    this.deps.onStateChange?.();
  }

  /** What the model's files look like now: config, version folders, model files (mtime and size). */
  private signatureOf(name: string): string {
    const dir = join(this.deps.root, name);
    const stamp = (path: string) => {
      try {
        const s = statSync(path);
        return `${s.mtimeMs}:${s.size}`;
      } catch {
        return '-';
      }
    };
    try {
      return readdirSync(dir)
        .sort()
        .map((e) => {
          const path = join(dir, e);
          return statSync(path).isDirectory()
            ? `${e}/${stamp(join(path, 'model.onnx'))}`
            : `${e}:${stamp(path)}`;
        })
        .join('|');
    } catch {
      return '';
    }
  }
}

/** Frees a version's sessions (or decoder); a release that fails has nothing left to free. */
async function releaseSessions(mv: ModelVersion): Promise<void> {
  const sessions: { release(): Promise<void> }[] = [...mv.sessions, ...(mv.decoder ? [mv.decoder] : [])];
  mv.sessions = [];
  mv.decoder = undefined;
  await Promise.all(sessions.map((s) => s.release().catch(() => undefined)));
}
