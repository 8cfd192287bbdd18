/** One jest run over every package; TypeScript is compiled by swc (type checking is `tsc -b`). */
/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: '<rootDir>/jest.environment.js',
  roots: ['<rootDir>/services', '<rootDir>/charts'],
  testMatch: ['**/test/**/*.test.ts'],
  testPathIgnorePatterns: ['/node_modules/', '/dist/'],
  transform: { '^.+\\.ts$': ['@swc/jest', { jsc: { target: 'es2022' } }] },
  moduleNameMapper: {
    '^@maas/([a-z-]+)$': '<rootDir>/services/$1/src/index.ts',
    '^@maas/([a-z-]+)/(.*)$': '<rootDir>/services/$1/src/$2',
    '^(\\.{1,2}/.*)\\.js$': '$1',
  },
  testTimeout: 60_000,
  maxWorkers: 2,
};
