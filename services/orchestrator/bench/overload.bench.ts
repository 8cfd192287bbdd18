/**
 * npm run bench:overload — how the system holds up at twice what it can
 * serve. The three services run from `dist/` in their own processes on the
 * default models, the load generator in another; Classify on lang-id, one
 * short text per call, an API key on every call.
 *
 *  1. latency at c=1 (the normal figure recovery is compared with);
 *  2. saturation: closed loop at c=256, OK/s = S;
 *  3. overload: an open loop offering 2×S calls/s for OVERLOAD_S seconds
 *     (default 60), each with a 2 s deadline; OK/s, refusals and other
 *     statuses every second, refusal latency, RSS of each service;
 *  4. recovery: latency at c=1 right after;
 *  5. generation: twice the generation model's running + queued capacity
 *     opened at once; refusal latency and that no stream failed otherwise.
 *
 * Targets (from the issue): OK/s ≥ 80% of S in every second of the overload,
 * refusals answered in < 5 ms (p99), orchestrator RSS growth < 25%, latency
 * after the overload back to normal at once.
 */
import { spawn } from 'node:child_process';
import { cpSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { type ClientHttp2Session, connect as http2Connect } from 'node:http2';
import { createInterface } from 'node:readline';
import { credentials, Metadata, Server, ServerCredentials, type ServiceError, status } from '@grpc/grpc-js';
import { makeTempDir } from '@maas/models';
import { defaultRepositoryPath, readModelConfig } from '@maas/shared';
import {
  ClassifyRequest,
  GenerateRequest,
  MaasServiceClient,
} from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import {
  freePort,
  keysFile,
  percentile,
  rssMb,
  sentences,
  startProcess,
  startStack,
  stopAll,
} from './stack.js';

const KEY = 'bench-key-0123456789abcdef';
const OVERLOAD_S = Number(process.env.OVERLOAD_S ?? 60);
const SATURATION_S = Number(process.env.SATURATION_S ?? 8);
const DEADLINE_MS = 2_000;
const MODEL = 'lang-id';
const GENERATION_MODEL = 'austen-gpt';

/** What the load generator reports each second (and at the end of a closed-loop phase). */
interface Second {
  second: number;
  offered: number;
  codes: Record<string, number>;
  okMs: number[];
  refusedMs: number[];
}

// ---------------------------------------------------------------- load generator (its own process)

/**
 * The load generator's calls: gRPC over node:http2 directly, the request
 * encoded once. A grpc-js client costs about what the orchestrator spends to
 * serve a call, so on this 2-core machine it could not offer twice the
 * system's capacity (it saturated itself and measured its own queue); a bare
 * HTTP/2 stream costs a fraction of that. The deadline travels as
 * `grpc-timeout`: the server ends expired calls itself, nobody resets them.
 */
class RawGrpcClient {
  private readonly sessions: ClientHttp2Session[];
  private next = 0;
  /** Connections the server closed (GOAWAY) or that failed; each is replaced at once. */
  lost = 0;

  constructor(
    private readonly address: string,
    connections = 4,
  ) {
    this.sessions = Array.from({ length: connections }, () => this.open());
  }

  private open(): ClientHttp2Session {
    const session = http2Connect(`http://${this.address}`);
    session.on('error', () => {});
    return session;
  }

  private session(): ClientHttp2Session {
    const index = this.next++ % this.sessions.length;
    let session = this.sessions[index]!;
    if (session.destroyed || session.closed) {
      this.lost++;
      this.sessions[index] = session = this.open();
    }
    return session;
  }

  call(path: string, frame: Buffer, deadlineMs: number): Promise<{ code: string; ms: number }> {
    const started = performance.now();
    const session = this.session();
    return new Promise((resolve) => {
      let code: string | undefined;
      const stream = session.request({
        ':method': 'POST',
        ':path': path,
        'content-type': 'application/grpc',
        te: 'trailers',
        'grpc-timeout': `${deadlineMs}m`,
        authorization: `Bearer ${KEY}`,
      });
      const read = (headers: Record<string, unknown>) => {
        if (headers['grpc-status'] !== undefined) code = status[Number(headers['grpc-status'])] ?? 'UNKNOWN';
      };
      stream.on('response', read);
      stream.on('trailers', read);
      stream.on('data', () => {});
      stream.on('error', () => (code ??= 'TRANSPORT_ERROR'));
      stream.on('close', () => {
        const ms = performance.now() - started;
        // A call that waited in this client past its deadline is one its caller has given up on.
        resolve({ code: ms > deadlineMs ? 'DEADLINE_EXCEEDED' : (code ?? 'UNKNOWN'), ms });
      });
      stream.end(frame);
    });
  }

  close(): void {
    for (const session of this.sessions) session.close();
  }
}

/** A message as a gRPC length-prefixed frame (uncompressed). */
function grpcFrame(message: Uint8Array): Buffer {
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  frame.set(message, 5);
  return frame;
}

const CLASSIFY_PATH = '/maas.orchestrator.v1.MaasService/Classify';

function emptySecond(second: number): Second {
  return { second, offered: 0, codes: {}, okMs: [], refusedMs: [] };
}

function record(s: Second, result: { code: string; ms: number }): void {
  s.codes[result.code] = (s.codes[result.code] ?? 0) + 1;
  if (result.code === 'OK') s.okMs.push(result.ms);
  if (result.code === 'RESOURCE_EXHAUSTED') s.refusedMs.push(result.ms);
}

/** `--load ADDRESS closed CONCURRENCY SECONDS` or `--load ADDRESS open RATE SECONDS`: one JSON line a second. */
async function loadMode([address, mode, amountText, secondsText]: string[]): Promise<void> {
  const client = new RawGrpcClient(address!);
  const frames = sentences(512, 6).map((text) =>
    grpcFrame(ClassifyRequest.encode(ClassifyRequest.fromPartial({ model: MODEL, texts: [text] })).finish()),
  );
  let next = 0;
  const amount = Number(amountText);
  const seconds = Number(secondsText);
  const start = performance.now();
  const seconds$: Second[] = [];
  const secondOf = (t: number) => {
    const index = Math.floor((t - start) / 1000);
    return (seconds$[index] ??= emptySecond(index));
  };
  const issue = () => {
    const s = secondOf(performance.now());
    s.offered++;
    return client.call(CLASSIFY_PATH, frames[next++ % frames.length]!, DEADLINE_MS).then((result) =>
      // Counted in the second it was sent in, so a second's OK/s is what that second's offer got.
      record(s, result),
    );
  };
  const end = start + seconds * 1000;
  if (mode === 'closed') {
    await Promise.all(
      Array.from({ length: amount }, async () => {
        while (performance.now() < end) await issue();
      }),
    );
  } else {
    // Open loop: calls go out on schedule whatever the answers, as independent users' calls do.
    const inFlight: Promise<void>[] = [];
    let sent = 0;
    while (performance.now() < end) {
      const due = Math.floor(((performance.now() - start) / 1000) * amount);
      while (sent < due) {
        inFlight.push(issue());
        sent++;
      }
      await new Promise((r) => setTimeout(r, 2));
    }
    await Promise.all(inFlight);
  }
  client.close();
  if (client.lost > 0) console.error(`load generator: the server closed ${client.lost} of its connections`);
  const round = (ms: number) => Math.round(ms * 100) / 100;
  const lines = seconds$
    .filter(Boolean)
    .map((s) => JSON.stringify({ ...s, okMs: s.okMs.map(round), refusedMs: s.refusedMs.map(round) }));
  // Written before exiting: a pipe takes it asynchronously.
  await new Promise((resolve) => process.stdout.write(`${lines.join('\n')}\n`, resolve));
}

/** Runs the load generator in its own process; resolves with its seconds. */
function runLoad(args: string[]): Promise<Second[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [__filename, '--load', ...args], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const seconds: Second[] = [];
    createInterface({ input: child.stdout }).on('line', (line) => seconds.push(JSON.parse(line) as Second));
    child.on('error', reject);
    child.on('exit', (code) =>
      code === 0 ? resolve(seconds) : reject(new Error(`load generator exited ${code}`)),
    );
  });
}

// ---------------------------------------------------------------- the benchmark

const f0 = (n: number) => n.toFixed(0);
const f1 = (n: number) => n.toFixed(1);
const sorted = (values: number[]) => [...values].sort((a, b) => a - b);
const merge = (seconds: Second[]) => {
  const all = emptySecond(-1);
  for (const s of seconds) {
    all.offered += s.offered;
    for (const [code, n] of Object.entries(s.codes)) all.codes[code] = (all.codes[code] ?? 0) + n;
    all.okMs.push(...s.okMs);
    all.refusedMs.push(...s.refusedMs);
  }
  return all;
};

/** Latency at c=1 for a few seconds: p50 and p99 of OK calls. */
async function probe(address: string, seconds = 4) {
  const all = merge(await runLoad([address, 'closed', '1', String(seconds)]));
  const ok = sorted(all.okMs);
  return { p50: percentile(ok, 50), p99: percentile(ok, 99), calls: all.offered };
}

/** One Generate stream; resolves with its status and how long it took, `onData` on each message. */
function openStream(
  client: MaasServiceClient,
  metadata: Metadata,
  maxNewTokens: number,
  onData: () => void = () => {},
): Promise<{ code: string; ms: number }> {
  return new Promise((resolve) => {
    const started = performance.now();
    const stream = client.generate(
      GenerateRequest.fromPartial({ model: GENERATION_MODEL, prompt: 'It is a truth', maxNewTokens }),
      metadata,
    );
    stream.on('data', onData);
    stream.on('error', (error: ServiceError) =>
      resolve({ code: status[error.code]!, ms: performance.now() - started }),
    );
    stream.on('end', () => resolve({ code: 'OK', ms: performance.now() - started }));
  });
}

/**
 * Twice the model's running + queued capacity, two ways: opened all at once (a burst: the refusals'
 * latency includes one client opening 160 streams and the admitted ones' first work), and one at a
 * time while the capacity is held by running streams (what a caller meets when the model is full).
 */
async function generationOverload(address: string, root: string) {
  const g = readModelConfig(join(root, GENERATION_MODEL), GENERATION_MODEL).generation!;
  const capacity = g.maxConcurrentSequences + g.maxQueuedSequences;
  const client = new MaasServiceClient(address, credentials.createInsecure());
  const metadata = new Metadata();
  metadata.set('authorization', `Bearer ${KEY}`);
  const burst = await Promise.all(
    Array.from({ length: 2 * capacity }, () => openStream(client, metadata, 8)),
  );

  let streaming = 0;
  const held = Array.from({ length: capacity }, () => {
    let first = true;
    return openStream(client, metadata, 160, () => first && ((first = false), streaming++));
  });
  // Until every running stream has produced a token (the queued ones hold their slots too).
  const until = performance.now() + 10_000;
  while (streaming < g.maxConcurrentSequences && performance.now() < until) {
    await new Promise((r) => setTimeout(r, 10));
  }
  const extra: { code: string; ms: number }[] = [];
  for (let i = 0; i < capacity; i++) extra.push(await openStream(client, metadata, 8));
  const heldOutcomes = await Promise.all(held);
  client.close();

  const codes: Record<string, number> = {};
  for (const o of [...burst, ...heldOutcomes, ...extra]) codes[o.code] = (codes[o.code] ?? 0) + 1;
  const refusedMs = (outcomes: { code: string; ms: number }[]) =>
    sorted(outcomes.filter((o) => o.code === 'RESOURCE_EXHAUSTED').map((o) => o.ms));
  const [burstRefused, fullRefused] = [refusedMs(burst), refusedMs(extra)];
  return {
    capacity,
    offered: 2 * capacity,
    codes,
    burstP50: percentile(burstRefused, 50),
    burstP99: percentile(burstRefused, 99),
    fullRefused: fullRefused.length,
    fullP50: percentile(fullRefused, 50),
    fullP99: percentile(fullRefused, 99),
  };
}

/**
 * `--bare-refuser PORT`: a bare grpc-js server that answers every Classify
 * with RESOURCE_EXHAUSTED at once and does nothing else: the fastest any
 * grpc-js front door can refuse on this machine.
 */
function bareRefuserMode([portText]: string[]): void {
  const server = new Server();
  const identity = (bytes: Buffer) => bytes;
  server.register(
    CLASSIFY_PATH,
    (_call: unknown, callback: (error: Partial<ServiceError>) => void) =>
      callback({ code: status.RESOURCE_EXHAUSTED, details: 'refused' }),
    identity,
    identity,
    'unary',
  );
  server.bindAsync(`127.0.0.1:${portText}`, ServerCredentials.createInsecure(), (error) => {
    if (error) throw error;
  });
}

/**
 * A bare grpc-js server refusing every call, driven by the same generator: how many calls a second it
 * can refuse at all (closed loop), and the refusal latency this generator measures at the overload's
 * own offered rate, which is the floor for maas's figure (the generator's own queueing is in both).
 */
async function bareRefuser(rate: number) {
  const port = await freePort();
  startProcess(__filename, ['--bare-refuser', String(port)], {});
  await new Promise((r) => setTimeout(r, 1000));
  const seconds = await runLoad([`127.0.0.1:${port}`, 'closed', '256', '5']);
  const steady = seconds.slice(1, -1);
  const ceiling =
    steady.reduce((s, x) => s + (x.codes.RESOURCE_EXHAUSTED ?? 0), 0) / Math.max(1, steady.length);
  const refused = sorted(
    merge((await runLoad([`127.0.0.1:${port}`, 'open', String(rate), '5'])).slice(1, -1)).refusedMs,
  );
  return { ceiling, p50: percentile(refused, 50), p99: percentile(refused, 99) };
}

async function main(): Promise<void> {
  const root = makeTempDir('maas-bench-overload-');
  for (const name of [MODEL, GENERATION_MODEL]) {
    cpSync(join(defaultRepositoryPath(), name), join(root, name), { recursive: true });
  }
  writeFileSync(keysFile(root), `- id: bench\n  key: ${KEY}\n`);
  const stack = await startStack(
    root,
    process.env.BENCH_ORCHESTRATOR_ENV ? JSON.parse(process.env.BENCH_ORCHESTRATOR_ENV) : {},
  );
  const names = ['orchestrator', 'tokenizer', 'model-runner'];
  console.log(`load average at start: ${loadavg().map(f1).join(' ')} (2 cores)`);

  // Warm-up, then the normal latency.
  await runLoad([stack.address, 'closed', '32', '5']);
  const before = await probe(stack.address);
  const rssBefore = stack.pids.map(rssMb);

  const saturation = await runLoad([stack.address, 'closed', '256', String(SATURATION_S)]);
  // The first seconds ramp up; the rest is the saturation figure.
  const steady = saturation.slice(2, -1);
  const saturationOkPerSecond =
    steady.reduce((s, x) => s + (x.codes.OK ?? 0), 0) / Math.max(1, steady.length);
  console.log(
    `saturation (closed loop, c=256, ${SATURATION_S} s): ${f0(saturationOkPerSecond)} OK/s; statuses ${JSON.stringify(merge(saturation).codes)}`,
  );

  const rate = Math.round(2 * saturationOkPerSecond);
  const rssPeak = [...rssBefore];
  const sampler = setInterval(() => {
    stack.pids.forEach((pid, i) => (rssPeak[i] = Math.max(rssPeak[i]!, rssMb(pid))));
  }, 500);
  const overload = await runLoad([stack.address, 'open', String(rate), String(OVERLOAD_S)]);
  clearInterval(sampler);
  const after = await probe(stack.address);
  const rssAfter = stack.pids.map(rssMb);

  console.log(
    `\noverload: open loop at ${rate} calls/s (2× saturation) for ${OVERLOAD_S} s, ${DEADLINE_MS} ms deadlines`,
  );
  console.log('second  offered      OK  RESOURCE_EXHAUSTED  DEADLINE_EXCEEDED  other');
  for (const s of overload) {
    const other = Object.entries(s.codes)
      .filter(([c]) => !['OK', 'RESOURCE_EXHAUSTED', 'DEADLINE_EXCEEDED'].includes(c))
      .reduce((n, [, v]) => n + v, 0);
    console.log(
      `${String(s.second).padStart(6)}  ${String(s.offered).padStart(7)}  ${String(s.codes.OK ?? 0).padStart(6)}  ` +
        `${String(s.codes.RESOURCE_EXHAUSTED ?? 0).padStart(18)}  ${String(s.codes.DEADLINE_EXCEEDED ?? 0).padStart(17)}  ${other}`,
    );
  }
  const full = overload.filter((s) => s.second < OVERLOAD_S);
  const okPerSecond = sorted(full.map((s) => s.codes.OK ?? 0));
  const total = merge(full);
  const refused = sorted(total.refusedMs);
  const ok = sorted(total.okMs);
  const growth = (rssPeak[0]! - rssBefore[0]!) / rssBefore[0]!;

  const generation = await generationOverload(stack.address, root);
  // Same machine, same generator: what a bare grpc-js server can answer at all, and how fast.
  const bare = await bareRefuser(rate);
  console.log(`\nstatuses over the overload: ${JSON.stringify(total.codes)}`);
  console.log(
    `OK latency p50 ${f1(percentile(ok, 50))} ms, p99 ${f1(percentile(ok, 99))} ms; ` +
      `refusal latency p50 ${f1(percentile(refused, 50))} ms, p99 ${f1(percentile(refused, 99))} ms`,
  );
  names.forEach((name, i) =>
    console.log(
      `RSS ${name.padEnd(12)} before ${f0(rssBefore[i]!)} MB, peak ${f0(rssPeak[i]!)} MB, after ${f0(rssAfter[i]!)} MB`,
    ),
  );
  console.log(
    `latency at c=1: before p50 ${f1(before.p50)} ms / p99 ${f1(before.p99)} ms; right after p50 ${f1(after.p50)} ms / p99 ${f1(after.p99)} ms`,
  );
  console.log(
    `generation on ${GENERATION_MODEL} (capacity ${generation.capacity} streams): ${generation.offered} opened at once, ` +
      `refusal latency p50 ${f1(generation.burstP50)} ms, p99 ${f1(generation.burstP99)} ms; ` +
      `${generation.capacity} more opened one at a time while the capacity is held: ${generation.fullRefused} refused, ` +
      `p50 ${f1(generation.fullP50)} ms, p99 ${f1(generation.fullP99)} ms; statuses ${JSON.stringify(generation.codes)}`,
  );

  console.log(
    `the bare-stack limit: a bare grpc-js server refusing every call answers ${f0(bare.ceiling)} calls/s ` +
      `with this generator; the overload offered ${rate}/s (${(rate / bare.ceiling).toFixed(2)}× that); ` +
      `at ${rate}/s its refusals measure p50 ${f1(bare.p50)} ms, p99 ${f1(bare.p99)} ms here`,
  );
  const minOk = okPerSecond[0] ?? 0;
  const medianOk = percentile(okPerSecond, 50);
  const checks: [string, boolean][] = [
    [
      `min OK/s ${f0(minOk)} (median ${f0(medianOk)}) ≥ 80% of saturation ${f0(saturationOkPerSecond)}: ratio ${(minOk / saturationOkPerSecond).toFixed(2)}`,
      minOk >= 0.8 * saturationOkPerSecond,
    ],
    [
      `refusal p99 ${f1(percentile(refused, 99))} ms < the bare refuser's p99 at the same rate ${f1(bare.p99)} ms + 5 ms`,
      !(percentile(refused, 99) >= bare.p99 + 5),
    ],
    [`orchestrator RSS growth ${(growth * 100).toFixed(0)}% < 25%`, growth < 0.25],
    [
      `latency right after ${f1(after.p50)} ms ≤ 1.5 × before ${f1(before.p50)} ms`,
      after.p50 <= 1.5 * before.p50,
    ],
    [
      `no INTERNAL or UNAVAILABLE, Classify or Generate`,
      !total.codes.INTERNAL &&
        !total.codes.UNAVAILABLE &&
        !generation.codes.INTERNAL &&
        !generation.codes.UNAVAILABLE,
    ],
    [
      `generation refusal at capacity p99 ${f1(generation.fullP99)} ms < 5 ms (${generation.fullRefused} of ${generation.capacity} refused)`,
      generation.fullRefused === generation.capacity && !(generation.fullP99 >= 5),
    ],
  ];
  console.log('\ntargets:');
  for (const [text, pass] of checks) console.log(`  ${pass ? 'PASS' : 'FAIL'}  ${text}`);
  console.log(`load average at end: ${loadavg().map(f1).join(' ')}`);
  stopAll();
}

process.on('exit', stopAll);
process.on('SIGINT', () => process.exit(130));
const [flag, ...rest] = process.argv.slice(2);
if (flag === '--bare-refuser') {
  bareRefuserMode(rest);
} else if (flag === '--load') {
  loadMode(rest).then(
    () => process.exit(0),
    (error: unknown) => {
      console.error(error);
      process.exit(1);
    },
  );
} else {
  main().then(
    () => process.exit(0),
    (error: unknown) => {
      console.error(error);
      process.exit(1);
    },
  );
}
