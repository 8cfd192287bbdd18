#!/usr/bin/env node
// A checked-in launcher so that `npx maas` is linked by `npm ci` before the TypeScript is built.
require('../dist/src/cli/main.js')
  .main(process.argv.slice(2))
  .then((code) => process.exit(code));
