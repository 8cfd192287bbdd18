/**
 * The tokenizers this process serves, found in the model repository (each
 * model's config names its tokenizer, in the newest selected version folder)
 * and in an optional directory of extra tokenizers.
 *
 * A rescan builds a complete new map and swaps it in with one assignment: a
 * call that already holds a tokenizer finishes with it, new calls see the new
 * set, nothing is ever half-loaded. Unchanged files (same size and mtime) keep
 * their loaded tokenizer. A file that fails to load is logged once per change
 * and left out; the others keep working.
 */
import { existsSync, readdirSync, statSync, watch, type FSWatcher } from 'node:fs';
import { dirname, join } from 'node:path';
import { scanRepository, type Logger } from '@maas/shared';
import { FastTextTextTokenizer } from './fasttext-text-tokenizer.js';
import { HuggingFaceTokenizer } from './huggingface-tokenizer.js';
import type { TextTokenizer } from './text-tokenizer.js';

export interface TokenizerSource {
  name: string;
  path: string;
  kind: 'huggingface' | 'fasttext';
  modelMaxLength?: number;
  /** Changes when the file (or its tokenizer_config.json) changes. */
  stamp: string;
}

export interface RegistryOptions {
  repository: string;
  extraDir?: string;
  logger: Logger;
  /** After every rescan: how it went and how many tokenizers are loaded now. */
  onReload?(result: 'ok' | 'error', loaded: number): void;
  /** A tokenizer file that failed to load (once per change of the file). */
  onLoadFailure?(name: string): void;
}

/** Changes in a burst (a copy of several files) trigger one rescan. */
const WATCH_DEBOUNCE_MS = 250;

function fileStamp(path: string): string {
  const stat = statSync(path);
  const config = join(dirname(path), 'tokenizer_config.json');
  const extra = existsSync(config) ? `:${statSync(config).mtimeMs}` : '';
  return `${path}:${stat.size}:${stat.mtimeMs}${extra}`;
}

export async function loadTokenizer(source: Omit<TokenizerSource, 'stamp'>): Promise<TextTokenizer> {
  return source.kind === 'fasttext' ? new FastTextTextTokenizer(source) : HuggingFaceTokenizer.load(source);
}

export class TokenizerRegistry {
  private tokenizers = new Map<string, { tokenizer: TextTokenizer; stamp: string }>();
  /** name → stamp of the file that failed, so the same broken file is reported once. */
  private failures = new Map<string, string>();
  /** Problems already logged (a broken model config, a missing file), so each is reported once, not every rescan. */
  private reportedModelErrors = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private watchers: FSWatcher[] = [];
  private reloading: Promise<void> | undefined;
  private again = false;
  private closed = false;

  constructor(private readonly options: RegistryOptions) {}

  get(name: string): TextTokenizer | undefined {
    return this.tokenizers.get(name)?.tokenizer;
  }

  /** Sorted by name. */
  list(): TextTokenizer[] {
    return [...this.tokenizers.values()]
      .map((entry) => entry.tokenizer)
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  get size(): number {
    return this.tokenizers.size;
  }

  /**
   * Rescans and swaps in the new set. A call during a rescan waits for one
   * more rescan after it, so a change made during a rescan is never missed.
   */
  reload(): Promise<void> {
    if (this.reloading) {
      this.again = true;
      return this.reloading;
    }
    this.reloading = (async () => {
      try {
        do {
          this.again = false;
          await this.rescan();
        } while (this.again && !this.closed);
      } finally {
        this.reloading = undefined;
      }
    })();
    return this.reloading;
  }

  /** Rescans every `intervalMs` (0: never) and, with `watchFiles`, soon after a file changes. */
  watch(intervalMs: number, watchFiles: boolean): void {
    if (intervalMs > 0) {
      this.timer = setInterval(() => void this.reload(), intervalMs);
      this.timer.unref();
    }
    if (!watchFiles) return;
    for (const dir of [this.options.repository, this.options.extraDir]) {
      if (!dir || !existsSync(dir)) continue;
      try {
        const watcher = watch(dir, { recursive: true, persistent: false }, () => this.soon());
        watcher.on('error', (error) => {
          this.options.logger.warn({ dir, err: error }, 'file watch failed; relying on the periodic rescan');
          watcher.close();
        });
        this.watchers.push(watcher);
      } catch (error) {
        this.options.logger.warn({ dir, err: error }, 'cannot watch; relying on the periodic rescan');
      }
    }
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    if (this.debounce) clearTimeout(this.debounce);
    for (const watcher of this.watchers) watcher.close();
    this.watchers = [];
  }

  private soon(): void {
    if (this.closed) return;
    if (this.debounce) clearTimeout(this.debounce);
    this.debounce = setTimeout(() => void this.reload(), WATCH_DEBOUNCE_MS);
    this.debounce.unref();
  }

  private async rescan(): Promise<void> {
    const next = new Map<string, { tokenizer: TextTokenizer; stamp: string }>();
    const failures = new Map<string, string>();
    let failed = false;
    for (const source of this.findSources()) {
      if (next.has(source.name) || failures.has(source.name)) {
        if (!this.reportedModelErrors.has(`duplicate:${source.path}`)) {
          this.reportedModelErrors.add(`duplicate:${source.path}`);
          this.options.logger.warn(
            { tokenizer: source.name, path: source.path },
            'duplicate tokenizer name, keeping the first',
          );
        }
        continue;
      }
      const current = this.tokenizers.get(source.name);
      if (current && current.stamp === source.stamp) {
        next.set(source.name, current);
        continue;
      }
      if (this.failures.get(source.name) === source.stamp) {
        failures.set(source.name, source.stamp);
        failed = true;
        continue;
      }
      try {
        const tokenizer = await loadTokenizer(source);
        next.set(source.name, { tokenizer, stamp: source.stamp });
        this.options.logger.info(
          { tokenizer: source.name, kind: tokenizer.kind, vocabSize: tokenizer.vocabSize, path: source.path },
          current ? 'tokenizer reloaded' : 'tokenizer loaded',
        );
      } catch (error) {
        failed = true;
        failures.set(source.name, source.stamp);
        this.options.onLoadFailure?.(source.name);
        this.options.logger.error(
          { tokenizer: source.name, path: source.path, err: error },
          'tokenizer failed to load; it is not served',
        );
      }
    }
    for (const name of this.tokenizers.keys()) {
      if (!next.has(name)) this.options.logger.info({ tokenizer: name }, 'tokenizer removed');
    }
    if (this.closed) return;
    this.tokenizers = next;
    this.failures = failures;
    this.options.onReload?.(failed ? 'error' : 'ok', next.size);
  }

  private findSources(): TokenizerSource[] {
    const sources: TokenizerSource[] = [];
    const { logger, repository, extraDir } = this.options;
    const add = (source: Omit<TokenizerSource, 'stamp'>) => {
      try {
        sources.push({ ...source, stamp: fileStamp(source.path) });
      } catch (error) {
        const key = `missing:${source.path}`;
        if (!this.reportedModelErrors.has(key)) {
          this.reportedModelErrors.add(key);
          logger.error({ tokenizer: source.name, path: source.path, err: error }, 'tokenizer file missing');
        }
      }
    };
    if (existsSync(repository)) {
      for (const model of scanRepository(repository)) {
        const newest = model.versions[0];
        const tokenizer = model.config?.tokenizer;
        if (model.error && !this.reportedModelErrors.has(model.error)) {
          this.reportedModelErrors.add(model.error);
          logger.warn({ model: model.name, reason: model.error }, 'model skipped');
        }
        if (!tokenizer || !newest) continue;
        add({
          name: tokenizer.name ?? model.config?.name ?? model.name,
          path: join(newest.dir, tokenizer.file),
          kind: tokenizer.kind,
          modelMaxLength: tokenizer.maxLength,
        });
      }
    } else {
      logger.warn({ repository }, 'model repository not found');
    }
    if (extraDir && existsSync(extraDir)) {
      for (const entry of readdirSync(extraDir).sort()) {
        if (entry.startsWith('.')) continue;
        const full = join(extraDir, entry);
        if (entry.endsWith('.json'))
          add({ name: entry.slice(0, -'.json'.length), path: full, kind: 'huggingface' });
        else if (existsSync(join(full, 'tokenizer.json'))) {
          add({ name: entry, path: join(full, 'tokenizer.json'), kind: 'huggingface' });
        }
      }
    }
    return sources;
  }
}
