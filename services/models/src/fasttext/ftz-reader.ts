/**
 * Reader for fastText's binary model format (.bin/.ftz), enough to convert a
 * supervised model: arguments, dictionary with prune index, the input matrix
 * (dense or product-quantised, de-quantised here) and the output matrix.
 * Follows fastText's FastText::loadModel, Dictionary::load, QuantMatrix::load
 * and ProductQuantizer::addcode (v0.9.2), field for field.
 */
import { readFileSync } from 'node:fs';

export const FASTTEXT_MAGIC = 793712314;

export interface FastTextArgs {
  dim: number;
  ws: number;
  epoch: number;
  minCount: number;
  neg: number;
  wordNgrams: number;
  loss: number; // 1 = hierarchical softmax, 2 = negative sampling, 3 = softmax, 4 = one-vs-all
  model: number;
  bucket: number;
  minn: number;
  maxn: number;
  lrUpdateRate: number;
  t: number;
}

export interface FastTextEntry {
  word: string;
  count: number;
  type: 0 | 1; // 0 word, 1 label
}

export interface FastTextModelFile {
  /** 11 or 12 (fastText's FASTTEXT_VERSION). */
  version: number;
  args: FastTextArgs;
  entries: FastTextEntry[];
  nwords: number;
  nlabels: number;
  /**
   * Hashed n-gram bucket → row offset after the words. Only meaningful when
   * `pruned`: fastText stores pruneidx_size −1 for "not pruned" (every bucket
   * is a row), and 0 for "pruned to nothing" (no n-gram survives).
   */
  pruneIndex: Map<number, number>;
  pruned: boolean;
  quantisedInput: boolean;
  quantisedOutput: boolean;
  /** Row-major [rows, dim]. */
  input: { rows: number; cols: number; data: Float32Array };
  output: { rows: number; cols: number; data: Float32Array };
}

class BinaryReader {
  offset = 0;
  private readonly view: DataView;
  constructor(private readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  int32() {
    const v = this.view.getInt32(this.offset, true);
    this.offset += 4;
    return v;
  }
  int64() {
    const v = Number(this.view.getBigInt64(this.offset, true));
    this.offset += 8;
    return v;
  }
  uint8() {
    return this.view.getUint8(this.offset++);
  }
  int8() {
    return this.view.getInt8(this.offset++);
  }
  float64() {
    const v = this.view.getFloat64(this.offset, true);
    this.offset += 8;
    return v;
  }
  float32Array(count: number): Float32Array {
    const out = new Float32Array(count);
    for (let i = 0; i < count; i++) out[i] = this.view.getFloat32(this.offset + i * 4, true);
    this.offset += count * 4;
    return out;
  }
  bytesOf(count: number): Uint8Array {
    const out = this.bytes.subarray(this.offset, this.offset + count);
    this.offset += count;
    return out;
  }
  cstring(): string {
    const end = this.bytes.indexOf(0, this.offset);
    const s = new TextDecoder().decode(this.bytes.subarray(this.offset, end));
    this.offset = end + 1;
    return s;
  }
}

interface ProductQuantizer {
  dim: number;
  nsubq: number;
  dsub: number;
  lastdsub: number;
  centroids: Float32Array;
}

const KSUB = 256;

function readQuantizer(r: BinaryReader): ProductQuantizer {
  const dim = r.int32();
  const nsubq = r.int32();
  const dsub = r.int32();
  const lastdsub = r.int32();
  return { dim, nsubq, dsub, lastdsub, centroids: r.float32Array(dim * KSUB) };
}

/** fastText's ProductQuantizer::get_centroids: the last sub-quantiser has its own stride. */
function centroidOffset(pq: ProductQuantizer, m: number, code: number): number {
  return m === pq.nsubq - 1 ? m * KSUB * pq.dsub + code * pq.lastdsub : (m * KSUB + code) * pq.dsub;
}

function readMatrix(r: BinaryReader, quantised: boolean): FastTextModelFile['input'] {
  if (!quantised) {
    const rows = r.int64();
    const cols = r.int64();
    return { rows, cols, data: r.float32Array(rows * cols) };
  }
  const qnorm = r.uint8() !== 0;
  const rows = r.int64();
  const cols = r.int64();
  const codesize = r.int32();
  const codes = r.bytesOf(codesize);
  const pq = readQuantizer(r);
  let normCodes: Uint8Array | undefined;
  let npq: ProductQuantizer | undefined;
  if (qnorm) {
    normCodes = r.bytesOf(rows);
    npq = readQuantizer(r);
  }
  const data = new Float32Array(rows * cols);
  for (let row = 0; row < rows; row++) {
    const norm = normCodes && npq ? npq.centroids[centroidOffset(npq, 0, normCodes[row]!)]! : 1;
    for (let m = 0; m < pq.nsubq; m++) {
      const c = centroidOffset(pq, m, codes[row * pq.nsubq + m]!);
      const d = m === pq.nsubq - 1 ? pq.lastdsub : pq.dsub;
      for (let n = 0; n < d; n++) data[row * cols + m * pq.dsub + n] = norm * pq.centroids[c + n]!;
    }
  }
  return { rows, cols, data };
}

/** Reads a `.bin` or `.ftz` file (or its bytes). */
export function readFastTextModel(source: string | Uint8Array): FastTextModelFile {
  const name = typeof source === 'string' ? source : 'fastText model';
  const r = new BinaryReader(typeof source === 'string' ? readFileSync(source) : source);
  if (r.int32() !== FASTTEXT_MAGIC) throw new Error(`${name}: not a fastText model (bad magic)`);
  const version = r.int32();
  if (version !== 11 && version !== 12) throw new Error(`${name}: unsupported fastText version ${version}`);
  const args: FastTextArgs = {
    dim: r.int32(),
    ws: r.int32(),
    epoch: r.int32(),
    minCount: r.int32(),
    neg: r.int32(),
    wordNgrams: r.int32(),
    loss: r.int32(),
    model: r.int32(),
    bucket: r.int32(),
    minn: r.int32(),
    maxn: r.int32(),
    lrUpdateRate: r.int32(),
    t: r.float64(),
  };
  // fastText: version 11 supervised models were trained without subwords.
  if (version === 11 && args.model === 3) args.maxn = 0;
  const size = r.int32();
  const nwords = r.int32();
  const nlabels = r.int32();
  r.int64(); // ntokens
  const pruneidxSize = r.int64();
  const entries: FastTextEntry[] = [];
  for (let i = 0; i < size; i++) {
    const word = r.cstring();
    const count = r.int64();
    const type = r.int8() as 0 | 1;
    entries.push({ word, count, type });
  }
  const pruneIndex = new Map<number, number>();
  for (let i = 0; i < pruneidxSize; i++) {
    const bucket = r.int32();
    pruneIndex.set(bucket, r.int32());
  }
  const quantInput = r.uint8() !== 0;
  const input = readMatrix(r, quantInput);
  const quantOutput = r.uint8() !== 0;
  // fastText reads the output as quantised only when the input is quantised too.
  const output = readMatrix(r, quantInput && quantOutput);
  if (output.rows !== (args.model === 3 ? nlabels : nwords)) {
    throw new Error(
      `${name}: output matrix has ${output.rows} rows, expected one per label (supervised) or word`,
    );
  }
  return {
    version,
    args,
    entries,
    nwords,
    nlabels,
    pruneIndex,
    pruned: pruneidxSize >= 0,
    quantisedInput: quantInput,
    quantisedOutput: quantInput && quantOutput,
    input,
    output,
  };
}
