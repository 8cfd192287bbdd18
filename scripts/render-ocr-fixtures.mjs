// Renders the OCR test images (services/orchestrator/test/fixtures/ocr) with sharp's SVG text, and
// their ground truth. Needs the DejaVu and WenQuanYi Micro Hei fonts (Debian: fonts-dejavu-core,
// fonts-wqy-microhei); the images are committed, so tests and benches do not.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';

const out = join(import.meta.dirname, '..', 'services', 'orchestrator', 'test', 'fixtures', 'ocr');
const esc = (t) => t.replace(/&/g, '&amp;').replace(/</g, '&lt;');
const svg = (w, h, body) =>
  `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}"><rect width="100%" height="100%" fill="white"/>${body}</svg>`;
const text = (x, y, size, family, t, extra = '') =>
  `<text x="${x}" y="${y}" font-family="${family}" font-size="${size}" ${extra}>${esc(t)}</text>`;

const fixtures = {
  line: {
    w: 520,
    h: 72,
    lines: [[16, 48, 34, 'DejaVu Sans', 'Hello World 2024']],
  },
  receipt: {
    w: 560,
    h: 420,
    lines: [
      [150, 50, 30, 'DejaVu Sans', 'CORNER CAFE'],
      [40, 110, 22, 'DejaVu Sans Mono', 'Espresso        2.50'],
      [40, 150, 22, 'DejaVu Sans Mono', 'Croissant       3.20'],
      [40, 190, 22, 'DejaVu Sans Mono', 'Orange juice    4.10'],
      [40, 250, 24, 'DejaVu Serif', 'Total: 9.80 EUR'],
      [40, 320, 18, 'DejaVu Sans', 'Thank you for your visit'],
      [40, 370, 16, 'DejaVu Serif', 'Invoice 2024-117 / table 4'],
    ],
  },
  cjk: {
    w: 520,
    h: 200,
    lines: [
      [24, 70, 36, 'WenQuanYi Micro Hei', '欢迎使用文字识别'],
      [24, 150, 30, 'WenQuanYi Micro Hei', '今天天气很好'],
    ],
  },
  rotated: {
    w: 600,
    h: 260,
    lines: [[60, 150, 34, 'DejaVu Sans', 'Rotated line of text', 'transform="rotate(-12 60 150)"']],
  },
  upside_down: {
    w: 520,
    h: 90,
    lines: [[24, 58, 34, 'DejaVu Sans', 'Upside down text', 'transform="rotate(180 260 45)"']],
  },
};

const truth = {};
for (const [name, f] of Object.entries(fixtures)) {
  const body = f.lines.map(([x, y, size, family, t, extra]) => text(x, y, size, family, t, extra)).join('');
  await sharp(Buffer.from(svg(f.w, f.h, body)))
    .flatten({ background: '#ffffff' })
    .png()
    .toFile(join(out, `${name}.png`));
  truth[name] = f.lines.map((l) => l[4]);
}
writeFileSync(join(out, 'ground-truth.json'), JSON.stringify(truth, null, 2) + '\n');
console.log(`wrote ${Object.keys(fixtures).length} images to ${out}`);
