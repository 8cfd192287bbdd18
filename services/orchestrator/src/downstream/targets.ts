import { isIPv4, isIPv6 } from 'node:net';

/**
 * Turns an address setting into a grpc-js target. A name with a scheme
 * (`dns:///tokenizer-headless.ns.svc.cluster.local:50051`, `ipv4:…`, `unix:…`)
 * is used as given; `host:port` too. A comma-separated list of `ip:port`
 * becomes a static `ipv4:`/`ipv6:` target, which grpc-js resolves to every
 * entry so that round_robin spreads calls over them.
 */
export function toGrpcTarget(address: string): string {
  const value = address.trim();
  if (/^[a-z][a-z0-9+.-]*:(?!\d)/i.test(value) && !value.includes(',')) return value;
  if (!value.includes(',')) {
    parseHostPort(value);
    return value;
  }
  const entries = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map(parseHostPort);
  const families = new Set(entries.map((e) => e.family));
  if (families.size !== 1 || families.has('name')) {
    throw new Error(
      `a list of addresses must be all IPv4 or all IPv6 literals (got "${value}"); ` +
        'for names, use one dns:/// name that resolves to every replica',
    );
  }
  const family = entries[0]!.family;
  return `${family}:${entries.map((e) => (family === 'ipv6' ? `[${e.host}]:${e.port}` : `${e.host}:${e.port}`)).join(',')}`;
}

function parseHostPort(entry: string): { host: string; port: number; family: 'ipv4' | 'ipv6' | 'name' } {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(entry);
  const port = Number(match?.[3]);
  if (!match || !(port > 0 && port < 65536)) throw new Error(`"${entry}" is not host:port`);
  const host = match[1] ?? match[2]!;
  if (host === 'localhost') return { host: '127.0.0.1', port, family: 'ipv4' };
  return { host, port, family: isIPv4(host) ? 'ipv4' : isIPv6(host) ? 'ipv6' : 'name' };
}
