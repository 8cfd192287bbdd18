/**
 * The init container of `modelRepository.source: url` (charts/maas/files/fetch-models.js), run as the
 * pod runs it, against a real HTTP server on 127.0.0.1 serving a repository archive.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CHART } from './helpers';

const SCRIPT = join(CHART, 'files', 'fetch-models.js');
let server: Server;
let base: string;
let archive: Buffer;
let digest: string;

beforeAll(async () => {
  const source = mkdtempSync(join(tmpdir(), 'maas-fetch-src-'));
  mkdirSync(join(source, 'lang-id', '1'), { recursive: true });
  writeFileSync(join(source, 'lang-id', 'config.json'), '{"task": "classification"}');
  writeFileSync(join(source, 'lang-id', '1', 'model.onnx'), Buffer.alloc(64 * 1024, 7));
  archive = execFileSync('tar', ['-czf', '-', '-C', source, '.']);
  digest = createHash('sha256').update(archive).digest('hex');
  server = createServer((req, res) => {
    if (req.url === '/repository.tar.gz') res.writeHead(200).end(archive);
    else res.writeHead(404).end('not found');
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

async function fetchModels(env: Record<string, string>) {
  const dir = mkdtempSync(join(tmpdir(), 'maas-fetch-dst-'));
  const child = spawn(process.execPath, [SCRIPT], {
    env: { PATH: process.env.PATH, MODELS_DIR: dir, ...env },
  });
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  const [code] = (await once(child, 'exit')) as [number];
  return { code, output, dir };
}

test('downloads, checks the SHA-256, extracts, and leaves no archive behind', async () => {
  const { code, output, dir } = await fetchModels({
    MODELS_URL: `${base}/repository.tar.gz`,
    MODELS_SHA256: digest,
  });
  expect(output).toContain(`sha256 ${digest}`);
  expect(code).toBe(0);
  expect(readFileSync(join(dir, 'lang-id', 'config.json'), 'utf8')).toBe('{"task": "classification"}');
  expect(readFileSync(join(dir, 'lang-id', '1', 'model.onnx')).length).toBe(64 * 1024);
  expect(readdirSync(dir)).toEqual(['lang-id']);
});

test('a digest mismatch extracts nothing', async () => {
  const wrong = 'f'.repeat(64);
  const { code, output, dir } = await fetchModels({
    MODELS_URL: `${base}/repository.tar.gz`,
    MODELS_SHA256: wrong,
  });
  expect(code).toBe(1);
  expect(output).toContain(`SHA-256 is ${digest}, expected ${wrong}`);
  expect(readdirSync(dir)).toEqual([]);
});

test('an HTTP error fails the init container, naming the URL', async () => {
  const { code, output, dir } = await fetchModels({ MODELS_URL: `${base}/missing.tar.gz` });
  expect(code).toBe(1);
  expect(output).toContain(`GET ${base}/missing.tar.gz: HTTP 404`);
  expect(existsSync(join(dir, 'lang-id'))).toBe(false);
});
