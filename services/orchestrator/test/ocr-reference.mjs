// The reference OCR (@gutenye/ocr-node, an ES module) on the images named in argv; prints
// {"<path>": [{text, mean, box}], ...} as JSON. Run in a child process by the vision test and bench.
import Ocr from '@gutenye/ocr-node';

const ocr = await Ocr.create();
const results = {};
for (const path of process.argv.slice(2)) results[path] = await ocr.detect(path);
process.stdout.write(JSON.stringify(results));
