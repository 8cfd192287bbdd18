/**
 * The tokenizers this process serves, found in the model repository (each
 * model's config names its tokenizer) and in an optional extra directory.
 * A rescan builds a complete new map and swaps it in one assignment, so calls
 * already holding a tokenizer finish with it and new calls see the new set.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { scanRepository } from '@maas/shared';
import type { Logger } from '@maas/shared';
import { FastTextTextTokenizer, HuggingFaceTokenizer, type TextTokenizer } from './text-tokenizer.js';

interface TokenizerSource {
  name: string;
  path: string;
  kind: 'huggingface' | 'fasttext';
  /** Changes when the file changes: reload only what changed. */
  stamp: string;
}

export interface RegistryEvents {
  onReload?(result: 'ok' | 'error', loaded: number): void;
}

export class TokenizerRegistry {
  private tokenizers = new Map<string, TextTokenizer>();
  private stamps = new Map<string, string>();
  private timer: NodeJS.Timeout | undefined;
  private reloading: Promise<void> | undefined;

  constructor(
    private readonly options: { repository: string; extraDir?: string; logger: Logger },
    private readonly events: RegistryEvents = {},
  ) {}

  get(name: string): TextTokenizer | undefined {
    return this.tokenizers.get(name);
  }

  list(): TextTokenizer[] {
    return [...this.tokenizers.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  /** Rescans and swaps in the new set; concurrent calls share one rescan. */
  reload(): Promise<void> {
    this.reloading ??= this.rescan().finally(() => (this.reloading = undefined));
    return this.reloading;
  }

  watch(intervalMs: number): void {
    if (intervalMs <= 0) return;
    this.timer = setInterval(() => void this.reload(), intervalMs);
    this.timer.unref();
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
  }

  private async rescan(): Promise<void> {
    const next = new Map<string, TextTokenizer>();
    const stamps = new Map<string, string>();
    let failed = false;
    for (const source of this.findSources()) {
      if (next.has(source.name)) {
        this.options.logger.warn(
          { tokenizer: source.name, path: source.path },
          'duplicate tokenizer name, keeping the first',
        );
        continue;
      }
      const current = this.tokenizers.get(source.name);
      if (current && this.stamps.get(source.name) === source.stamp) {
        next.set(source.name, current);
        stamps.set(source.name, source.stamp);
        continue;
      }
      try {
        const tokenizer =
          source.kind === 'fasttext'
            ? new FastTextTextTokenizer(source.name, source.path)
            : await HuggingFaceTokenizer.fromFile(source.name, source.path);
        next.set(source.name, tokenizer);
        stamps.set(source.name, source.stamp);
        this.options.logger.info(
          { tokenizer: source.name, kind: tokenizer.kind, path: source.path },
          'tokenizer loaded',
        );
      } catch (error) {
        failed = true;
        this.options.logger.error(
          { tokenizer: source.name, path: source.path, err: error },
          'tokenizer failed to load',
        );
      }
    }
    this.tokenizers = next;
    this.stamps = stamps;
    this.events.onReload?.(failed ? 'error' : 'ok', next.size);
  }

  private findSources(): TokenizerSource[] {
    const sources: TokenizerSource[] = [];
    const add = (name: string, path: string, kind: TokenizerSource['kind']) => {
      try {
        const stat = statSync(path);
        sources.push({ name, path, kind, stamp: `${path}:${stat.size}:${stat.mtimeMs}` });
      } catch (error) {
        this.options.logger.error({ tokenizer: name, path, err: error }, 'tokenizer file missing');
      }
    };
    if (existsSync(this.options.repository)) {
      for (const model of scanRepository(this.options.repository)) {
        const newest = model.versions[0];
        if (!model.config?.tokenizer || !newest) {
          if (model.error)
            this.options.logger.warn({ model: model.name, reason: model.error }, 'model skipped');
          continue;
        }
        const t = model.config.tokenizer;
        add(t.name ?? model.name, join(newest.dir, t.file), t.kind);
      }
    } else {
      this.options.logger.warn({ repository: this.options.repository }, 'model repository not found');
    }
    const dir = this.options.extraDir;
    if (dir && existsSync(dir)) {
      for (const entry of readdirSync(dir).sort()) {
        const full = join(dir, entry);
        if (entry.endsWith('.json')) add(entry.slice(0, -5), full, 'huggingface');
        else if (existsSync(join(full, 'tokenizer.json')))
          add(entry, join(full, 'tokenizer.json'), 'huggingface');
      }
    }
    return sources;
  }
}
