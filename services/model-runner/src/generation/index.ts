export * from './engine.js';
export * from './metrics.js';
export { SequenceRandom, TokenSampler, argmax, isGreedy } from './sampling.js';
export { openDecoderSession } from './new-kv-outputs.js';
