// Addresses given on the command line: "unix:/path", "/path", or "host:port".
export type Address = { transport: "unix"; path: string } | {
  transport: "tcp";
  hostname: string;
  port: number;
};

export function parseAddress(text: string, defaultHost = "127.0.0.1"): Address {
  if (text.startsWith("unix:")) return { transport: "unix", path: text.slice(5) };
  if (text.startsWith("/")) return { transport: "unix", path: text };
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text);
  if (!m || Number(m[3]) > 65535) throw new Error(`not an address: "${text}" (use HOST:PORT or unix:/path)`);
  return { transport: "tcp", hostname: m[1] ?? (m[2] || defaultHost), port: Number(m[3]) };
}

export function formatAddress(a: Address): string {
  return a.transport === "unix"
    ? `unix:${a.path}`
    : `${a.hostname.includes(":") ? `[${a.hostname}]` : a.hostname}:${a.port}`;
}

export async function connectTo(a: Address): Promise<Deno.Conn> {
  if (a.transport === "unix") return await Deno.connect({ transport: "unix", path: a.path });
  const c = await Deno.connect({ hostname: a.hostname, port: a.port });
  c.setNoDelay(true);
  return c;
}

/**
 * Listens on a Unix socket, replacing a stale socket file left by a killed
 * process but refusing one that another process still serves.
 */
export async function listenUnix(path: string): Promise<Deno.Listener> {
  try {
    const c = await Deno.connect({ transport: "unix", path });
    c.close();
    throw new Deno.errors.AddrInUse(`${path} is in use by another process`);
  } catch (e) {
    if (e instanceof Deno.errors.AddrInUse) throw e;
  }
  try {
    Deno.removeSync(path);
  } catch { /* none */ }
  return Deno.listen({ transport: "unix", path });
}

export async function listenOn(a: Address): Promise<Deno.Listener> {
  try {
    if (a.transport === "unix") return await listenUnix(a.path);
    return Deno.listen({ hostname: a.hostname, port: a.port });
  } catch (e) {
    if (e instanceof Deno.errors.AddrInUse) {
      throw new Error(`cannot listen on ${formatAddress(a)}: address in use (another Continuum running?)`);
    }
    throw new Error(`cannot listen on ${formatAddress(a)}: ${(e as Error).message}`);
  }
}
