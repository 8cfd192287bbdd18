/** Every route of the orchestrator's HTTP API, and its errors in OpenAI's shape. */
import type { FormattedError, HttpRoute } from '@maas/shared';
import type { MaasCore } from '../core/maas-core.js';
import { httpErrorOf } from './errors.js';
import { openAiRoutes } from './openai.js';
import openApiDocument from './openapi.json';
import { protoJsonRoutes } from './proto-json.js';

/** Every route, described (OpenAPI 3.1, linted by `npm run lint:openapi`): served at /openapi.json. */
const OPENAPI_BODY = JSON.stringify(openApiDocument);

/** `isReady`: what gRPC health says (SERVING). */
export function httpRoutes(core: MaasCore, isReady: () => boolean): HttpRoute[] {
  return [
    ...openAiRoutes(core),
    ...protoJsonRoutes(core),
    {
      method: 'GET',
      path: '/healthz',
      handle: async (exchange) => exchange.json(200, { status: 'ok' }),
    },
    {
      method: 'GET',
      path: '/readyz',
      handle: async (exchange) => {
        const ready = isReady() && !exchange.draining;
        exchange.json(ready ? 200 : 503, { status: ready ? 'ok' : 'not ready' });
      },
    },
    {
      method: 'GET',
      path: '/openapi.json',
      handle: async (exchange) => exchange.send(200, 'application/json', OPENAPI_BODY),
    },
  ];
}

export const formatHttpError = (error: unknown, route: HttpRoute | undefined): FormattedError =>
  httpErrorOf(error, route?.rename);
