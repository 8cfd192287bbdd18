// Init container (modelRepository.source: url): downloads a .tar.gz of a model repository into
// MODELS_DIR. The archive is streamed to disk while its SHA-256 is computed, checked against
// MODELS_SHA256 when set, and only then extracted: a corrupt or tampered download never reaches the
// runner. Runs with the service image's own node and tar (no curl in the images).
'use strict';
const { createHash } = require('node:crypto');
const { createWriteStream, rmSync } = require('node:fs');
const { join } = require('node:path');
const { Readable, Transform } = require('node:stream');
const { pipeline } = require('node:stream/promises');
const { execFileSync } = require('node:child_process');

async function main() {
  const url = process.env.MODELS_URL;
  const expected = (process.env.MODELS_SHA256 || '').toLowerCase();
  const dir = process.env.MODELS_DIR;
  if (!url || !dir) throw new Error('MODELS_URL and MODELS_DIR are required');
  const archive = join(dir, '.download.tar.gz');
  const response = await fetch(url, { redirect: 'follow' });
  if (!response.ok || !response.body) throw new Error(`GET ${url}: HTTP ${response.status}`);
  const hash = createHash('sha256');
  let bytes = 0;
  const digest = new Transform({
    transform(chunk, _encoding, callback) {
      hash.update(chunk);
      bytes += chunk.length;
      callback(null, chunk);
    },
  });
  await pipeline(Readable.fromWeb(response.body), digest, createWriteStream(archive));
  const actual = hash.digest('hex');
  if (expected && actual !== expected) {
    rmSync(archive, { force: true });
    throw new Error(`${url}: SHA-256 is ${actual}, expected ${expected}`);
  }
  execFileSync('tar', ['-xzf', archive, '-C', dir, '--no-same-owner'], { stdio: 'inherit' });
  rmSync(archive, { force: true });
  console.log(`models: ${bytes} bytes from ${url} (sha256 ${actual}) extracted into ${dir}`);
}

main().catch((error) => {
  console.error(`fetch-models: ${error.message}`);
  process.exit(1);
});
