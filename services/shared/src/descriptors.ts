import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { packageRoot } from './paths.js';

/**
 * Every service's descriptors, compiled by `npm run gen` into one
 * FileDescriptorSet, so reflection works without .proto files at run time.
 */
export function loadApiDescriptors(): protoLoader.PackageDefinition {
  const descriptorSet = readApiDescriptorSet();
  const api = protoLoader.loadFileDescriptorSetFromBuffer(descriptorSet, {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
  });
  const health = protoLoader.loadSync(healthProtoPath, { keepCase: true });
  return { ...api, ...health };
}

/** The encoded FileDescriptorSet of every maas API (and KServe v2), as `npm run gen` wrote it. */
export function readApiDescriptorSet(): Buffer {
  return readFileSync(join(packageRoot(__dirname), 'src', 'gen', 'descriptors.binpb'));
}
