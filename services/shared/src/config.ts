import { z } from 'zod';

/** Raised when the environment does not describe a valid configuration. */
export class ConfigError extends Error {
  constructor(readonly issues: string[]) {
    super(`invalid configuration:\n  ${issues.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

/** An integer read from an environment variable, with bounds. */
export function envInt(defaultValue: number, min = 0, max = Number.MAX_SAFE_INTEGER) {
  return z.coerce.number().int().min(min).max(max).default(defaultValue);
}

/** A boolean environment variable: true/false/1/0/yes/no. */
export function envBool(defaultValue: boolean) {
  return z
    .enum(['true', 'false', '1', '0', 'yes', 'no', ''])
    .default(defaultValue ? 'true' : 'false')
    .transform((v) => v === 'true' || v === '1' || v === 'yes');
}

/** Settings every service shares: where it listens, how it logs and drains. */
export const baseConfigSchema = z.object({
  SERVICE_NAME: z.string().min(1).optional(),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  GRPC_HOST: z.string().min(1).default('127.0.0.1'),
  GRPC_PORT: envInt(0, 0, 65535),
  METRICS_HOST: z.string().min(1).default('127.0.0.1'),
  /** 0 picks a free port; -1 disables the metrics endpoint. */
  METRICS_PORT: envInt(0, -1, 65535),
  /** How long in-flight calls may run after SIGTERM before they are cut. */
  SHUTDOWN_DRAIN_MS: envInt(10_000, 0, 600_000),
  GRPC_MAX_RECEIVE_MESSAGE_BYTES: envInt(16 * 1024 * 1024, 1024, 1024 * 1024 * 1024),
  GRPC_MAX_SEND_MESSAGE_BYTES: envInt(16 * 1024 * 1024, 1024, 1024 * 1024 * 1024),
  /** Server pings idle connections this often so that load balancers keep long streams open. */
  GRPC_KEEPALIVE_TIME_MS: envInt(30_000, 1_000),
  GRPC_KEEPALIVE_TIMEOUT_MS: envInt(10_000, 1_000),
  /** Server reflection (grpcurl, Postman) of the services this server implements; false turns it off. */
  GRPC_REFLECTION: envBool(true),
});
export type BaseConfig = z.infer<typeof baseConfigSchema>;

/**
 * Parses the environment against a schema, failing with one message that
 * names every bad variable, so a misconfigured pod says why at start.
 */
export function loadConfig<S extends z.ZodType>(schema: S, env: NodeJS.ProcessEnv = process.env): z.infer<S> {
  const result = schema.safeParse(env);
  if (!result.success) {
    throw new ConfigError(
      result.error.issues.map((issue) => {
        const name = issue.path.join('.') || '(environment)';
        const value = typeof issue.path[0] === 'string' ? env[issue.path[0]] : undefined;
        return `${name}: ${issue.message}${value === undefined ? '' : ` (got ${JSON.stringify(value)})`}`;
      }),
    );
  }
  return result.data;
}
