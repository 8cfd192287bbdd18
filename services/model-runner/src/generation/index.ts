export * from './engine.js';
export * from './metrics.js';
export * from './sampling.js';
