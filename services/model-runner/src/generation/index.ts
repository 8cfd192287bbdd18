export * from './engine.js';
export * from './metrics.js';
export { SequenceRandom, TokenSampler, argmax, isGreedy } from './sampling.js';
