import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** A file inside an installed package, even one whose `exports` hide it (require.resolve would refuse). */
export function packageFile(pkg: string, file: string): string {
  for (const dir of require.resolve.paths(pkg) ?? []) {
    const candidate = join(dir, pkg, file);
    if (existsSync(candidate)) return candidate;
  }
  throw new Error(`${pkg}/${file} not found; is ${pkg} installed?`);
}

/** The installed version of a package: part of the cache key of files made from it. */
export function packageVersion(pkg: string): string {
  return (JSON.parse(readFileSync(packageFile(pkg, 'package.json'), 'utf8')) as { version: string }).version;
}

export function readPackageJson<T>(pkg: string, file: string): T {
  return JSON.parse(readFileSync(packageFile(pkg, file), 'utf8')) as T;
}
