/**
 * The service images, built and run for real: scripts/k8s/image-test.sh builds the three CPU images
 * with podman from a locally made Debian base (no registry is reachable), runs each with runc on the
 * host network as a pod runs it (uid 10001, read-only root, /tmp a tmpfs, no capabilities), waits for
 * SERVING from its gRPC health service on 127.0.0.1, scrapes its metrics, and stops it with SIGTERM
 * expecting a clean exit through tini.
 *
 * Minutes on a fresh machine (apt-get, debootstrap, npm ci in the build); the base image and podman's
 * layer cache make later runs faster. MAAS_SKIP_IMAGE_TEST=1 skips it, saying so.
 */
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { SCRIPTS } from './helpers';

const SERVICES = ['tokenizer', 'model-runner', 'orchestrator'];
const canInstall = process.getuid?.() === 0;
const hasPodman = spawnSync('sh', ['-c', 'command -v podman']).status === 0;
const skipReason =
  process.env.MAAS_SKIP_IMAGE_TEST === '1'
    ? 'MAAS_SKIP_IMAGE_TEST=1'
    : !canInstall && !hasPodman
      ? 'podman is missing and installing it needs root'
      : undefined;
if (skipReason) console.warn(`SKIPPED: the image build test (${skipReason})`);
const testImages = skipReason ? test.skip : test;

testImages(
  'CPU images build, run as non-root with a read-only root, serve health on 127.0.0.1, stop on SIGTERM',
  async () => {
    const started = Date.now();
    const child = spawn('bash', [join(SCRIPTS, 'image-test.sh'), ...SERVICES], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    const [code] = (await once(child, 'exit')) as [number | null];
    const log = output
      .split('\n')
      .filter((l) => l.startsWith('[image-test'))
      .join('\n');
    // The timings, for whoever reads CI logs.
    console.log(`${log}\nimage test: ${Math.round((Date.now() - started) / 1000)} s`);
    if (code !== 0) throw new Error(`image-test.sh exited ${code}:\n${output.slice(-6000)}`);
    for (const service of SERVICES) {
      expect(log).toMatch(new RegExp(`built localhost/maas-${service}:test in \\d+ s`));
      expect(log).toMatch(new RegExp(`${service} SERVING after \\d+ s`));
      expect(log).toContain(`${service} stopped cleanly on SIGTERM`);
    }
  },
  20 * 60_000,
);
