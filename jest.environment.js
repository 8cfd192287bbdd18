// Native addons (onnxruntime-node) create typed arrays in Node's own realm, while jest runs tests in a
// separate vm realm whose Float32Array is a different constructor, so `instanceof` checks inside
// onnxruntime fail. Tests get the outer realm's typed arrays, as a real process has.
const { TestEnvironment } = require('jest-environment-node');

class SharedTypedArraysEnvironment extends TestEnvironment {
  constructor(config, context) {
    super(config, context);
    for (const name of [
      'ArrayBuffer',
      'SharedArrayBuffer',
      'Float32Array',
      'Float64Array',
      'Int8Array',
      'Int16Array',
      'Int32Array',
      'Uint8Array',
      'Uint8ClampedArray',
      'Uint16Array',
      'Uint32Array',
      'BigInt64Array',
      'BigUint64Array',
      'DataView',
    ]) {
      this.global[name] = globalThis[name];
    }
  }
}

module.exports = SharedTypedArraysEnvironment;
