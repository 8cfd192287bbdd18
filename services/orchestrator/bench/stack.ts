/**
 * What the orchestrator benchmarks share: the three services started from
 * `dist/` as their own processes (as they run in production), CPU and memory
 * of a process read from /proc, percentiles, and deterministic sentences.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { checkHealth } from '@maas/shared/testing';

/** utime + stime of a process in ms, from /proc (Linux). */
export function cpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}
export const CLOCK_TICKS = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

export const percentile = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;

export const WORDS = {
  en: 'the quick brown fox jumps over a lazy dog while people watch from the old bridge near town'.split(' '),
  fr: 'le petit chat dort sur la chaise pendant que les enfants jouent dans le jardin de la maison'.split(
    ' ',
  ),
  de: 'der kleine hund läuft schnell über die straße während die kinder im garten spielen und lachen'.split(
    ' ',
  ),
  es: 'el perro pequeño corre por la calle mientras los niños juegan en el parque con sus amigos'.split(' '),
};

/** Deterministic varied sentences of about `words` words. */
export function sentences(count: number, words: number): string[] {
  const langs = Object.values(WORDS);
  return Array.from({ length: count }, (_, i) => {
    const vocab = langs[i % langs.length]!;
    return Array.from({ length: words }, (_, j) => vocab[(i * 7 + j * 3) % vocab.length]).join(' ');
  });
}

export const keysFile = (root: string) => join(root, '..', `${root.split('/').pop()}-keys.yaml`);

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

export const children: ChildProcess[] = [];

export function startProcess(script: string, args: string[], env: Record<string, string>): ChildProcess {
  const child = spawn(process.execPath, [script, ...args], {
    stdio: ['ignore', 'ignore', 'inherit'],
    detached: true,
    env: { ...process.env, METRICS_PORT: '-1', LOG_LEVEL: 'warn', ...env },
  });
  children.push(child);
  return child;
}

export function stopAll(): void {
  for (const child of children.splice(0)) {
    if (child.exitCode === null) process.kill(-child.pid!, 'SIGKILL');
  }
}

export async function waitServing(port: number): Promise<void> {
  for (let i = 0; i < 1200; i++) {
    if ((await checkHealth(`127.0.0.1:${port}`).catch(() => 'DOWN')) === 'SERVING') return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`nothing SERVING on port ${port}`);
}

export const serviceMain = (name: string) =>
  join(__dirname, '..', '..', '..', name, 'dist', 'src', 'main.js');

export async function startStack(root: string, orchestratorEnv: Record<string, string> = {}) {
  const [tokenizerPort, runnerPort, orchestratorPort, httpPort] = [
    await freePort(),
    await freePort(),
    await freePort(),
    await freePort(),
  ];
  startProcess(serviceMain('tokenizer'), [], {
    GRPC_PORT: String(tokenizerPort),
    MODEL_REPOSITORY: root,
    TOKENIZER_RELOAD_INTERVAL_MS: '0',
  });
  startProcess(serviceMain('model-runner'), [], { GRPC_PORT: String(runnerPort), MODEL_REPOSITORY: root });
  startProcess(serviceMain('orchestrator'), [], {
    GRPC_PORT: String(orchestratorPort),
    HTTP_PORT: String(httpPort),
    MODEL_REPOSITORY: root,
    TOKENIZER_ADDRESS: `127.0.0.1:${tokenizerPort}`,
    RUNNER_ADDRESS: `127.0.0.1:${runnerPort}`,
    API_KEYS_FILE: keysFile(root),
    // The audit log is part of the real path: written (at info), to a sink nobody reads.
    LOG_LEVEL: 'info',
    ...orchestratorEnv,
  });
  await Promise.all([tokenizerPort, runnerPort, orchestratorPort].map(waitServing));
  const pids = children.slice(-3).map((c) => c.pid!);
  // [orchestrator, tokenizer, runner], the order the report prints them in.
  return {
    address: `127.0.0.1:${orchestratorPort}`,
    http: `http://127.0.0.1:${httpPort}`,
    direct: `127.0.0.1:${runnerPort}|127.0.0.1:${tokenizerPort}`,
    pids: [pids[2]!, pids[0]!, pids[1]!],
  };
}

/** Resident memory of a process in MB, from /proc (Linux). */
export function rssMb(pid: number): number {
  try {
    const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}
