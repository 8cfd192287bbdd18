// bench:vision's in-process baseline: @gutenye/ocr-node (the same PaddleOCR models, its own pre- and
// post-processing) reading one image for `ms` milliseconds with `concurrency` calls in flight, after
// a warm-up. Prints {"latencies": [ms, ...], "seconds": s}.
import Ocr from '@gutenye/ocr-node';

const [path, ms, concurrency] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const ocr = await Ocr.create();
for (let i = 0; i < 3; i++) await ocr.detect(path);
const latencies = [];
const started = performance.now();
await Promise.all(
  Array.from({ length: concurrency }, async () => {
    while (performance.now() - started < ms) {
      const t = performance.now();
      await ocr.detect(path);
      latencies.push(performance.now() - t);
    }
  }),
);
process.stdout.write(JSON.stringify({ latencies, seconds: (performance.now() - started) / 1000 }));
