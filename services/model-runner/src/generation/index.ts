export * from './engine.js';
export * from './metrics.js';
export { SequenceRandom, TokenSampler, argmax, isGreedy } from './sampling.js';
export { openDecoderSession } from './new-kv-outputs.js';
export * from './batch-decoder.js';
export { WorkerDecoder } from './worker-decoder.js';
