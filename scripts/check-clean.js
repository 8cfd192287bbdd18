#!/usr/bin/env node
// Fails when generated files differ from what is committed (stale or new), naming them.
const { execFileSync } = require('node:child_process');
const paths = process.argv.slice(2);
const out = execFileSync('git', ['status', '--porcelain', '--', ...paths], { encoding: 'utf8' });
if (out.trim()) {
  console.error(`generated files are not current; run the generator and commit:\n${out}`);
  process.exit(1);
}
console.log(`up to date: ${paths.join(', ')}`);
