import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';

/**
 * Every service's descriptors, compiled by `npm run gen` into one
 * FileDescriptorSet, so reflection works without .proto files at run time.
 */
export function loadApiDescriptors(): protoLoader.PackageDefinition {
  const descriptorSet = readFileSync(descriptorSetPath());
  const api = protoLoader.loadFileDescriptorSetFromBuffer(descriptorSet, {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
  });
  const health = protoLoader.loadSync(healthProtoPath, { keepCase: true });
  return { ...api, ...health };
}

/** The descriptor set lives in src/gen; this module runs from src (tests) or dist/src. */
function descriptorSetPath(): string {
  for (let dir = __dirname; dir !== dirname(dir); dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return join(dir, 'src', 'gen', 'descriptors.binpb');
  }
  throw new Error(`package root of ${__dirname} not found`);
}
