export * from './onnx-builder.js';
export * from './fasttext/ftz-reader.js';
export * from './fasttext/tokenizer.js';
export * from './fasttext/convert-lid.js';
export * from './tokenizer-files/index.js';
export * from './glove/convert-glove.js';
export * from './fixtures/index.js';
