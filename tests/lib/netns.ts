// Network namespace helpers for root tests: a NetLab creates namespaces (named uniquely
// per test process), veth links, addresses and routes, runs commands inside them and
// starts tiny HTTP responders; destroy() stops the responders and deletes every
// namespace it created. Commands are argv arrays, never shell strings.

export interface Output {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command (optionally with stdin) and collects its output. */
export async function exec(cmd: string[], stdin?: string): Promise<Output> {
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Like exec, but a non-zero exit throws with the command and its stderr. */
export async function mustExec(cmd: string[], stdin?: string): Promise<string> {
  const out = await exec(cmd, stdin);
  if (out.code !== 0) throw new Error(`${cmd.join(" ")}: exit ${out.code}: ${out.stderr.trim()}`);
  return out.stdout;
}

/** The argv running `cmd` inside namespace `ns`. */
export const inNs = (ns: string, cmd: string[]): string[] => ["ip", "netns", "exec", ns, ...cmd];

export interface LinkEnd {
  ns: string;
  ifname: string;
  /** Address with prefix length, e.g. "10.99.1.1/24". */
  cidr: string;
}

// An HTTP server answering every request with a fixed text. Parameters come from the
// environment, so the code is constant. It prints "ready" once listening and exits when
// its stdin closes, so it does not outlive a test process that was killed.
const responderCode = `
const server = Deno.serve({
  hostname: Deno.env.get("RESPONDER_HOST"),
  port: Number(Deno.env.get("RESPONDER_PORT")),
  onListen: () => console.log("ready"),
}, () => new Response(Deno.env.get("RESPONDER_TEXT")));
for await (const _ of Deno.stdin.readable) { /* wait for EOF */ }
await server.shutdown();
`;

export class Responder {
  private constructor(private readonly child: Deno.ChildProcess) {}

  /** Starts a responder on host:port in namespace `ns` and waits until it listens. */
  static async start(ns: string, host: string, port: number, text: string): Promise<Responder> {
    const child = new Deno.Command("ip", {
      args: ["netns", "exec", ns, Deno.execPath(), "eval", "--no-config", responderCode],
      env: { RESPONDER_HOST: host, RESPONDER_PORT: String(port), RESPONDER_TEXT: text, NO_COLOR: "1" },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const r = new Responder(child);
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let seen = "";
    while (!seen.includes("ready")) {
      const { value, done } = await reader.read();
      if (done) {
        const err = await new Response(child.stderr).text();
        await child.status;
        throw new Error(`responder ${ns} ${host}:${port} did not start: ${err.trim()}`);
      }
      seen += value;
    }
    await reader.cancel();
    await child.stderr.cancel();
    return r;
  }

  async stop(): Promise<void> {
    try {
      await this.child.stdin.close();
    } catch { /* already closed */ }
    const timer = setTimeout(() => {
      try {
        this.child.kill("SIGKILL");
      } catch { /* gone */ }
    }, 3000);
    await this.child.status;
    clearTimeout(timer);
  }
}

/**
 * GET `url` from inside namespace `ns` in a fresh process (so a fresh connection, which
 * NAT decides anew). Returns the body, or "error: ..." when the request failed.
 */
export async function httpGet(ns: string, url: string, timeoutMs = 3000): Promise<string> {
  const code = `
try {
  const r = await fetch(Deno.env.get("GET_URL"), { signal: AbortSignal.timeout(${timeoutMs}) });
  console.log(await r.text());
} catch (e) {
  console.log("error: " + e.message);
}`;
  const out = await new Deno.Command("ip", {
    args: ["netns", "exec", ns, Deno.execPath(), "eval", "--no-config", code],
    env: { GET_URL: url, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return new TextDecoder().decode(out.stdout).trim();
}

/** A set of namespaces owned by one test; every name gets a per-process prefix. */
export class NetLab {
  private readonly namespaces: string[] = [];
  private readonly responders: Responder[] = [];

  constructor(readonly prefix = `ct${Deno.pid}`) {}

  /** The full namespace name for a short tag. */
  name(tag: string): string {
    return `${this.prefix}-${tag}`;
  }

  /** Creates namespace `tag` with its loopback up; returns the full name. */
  async addNs(tag: string): Promise<string> {
    const ns = this.name(tag);
    await mustExec(["ip", "netns", "add", ns]);
    this.namespaces.push(ns);
    await mustExec(inNs(ns, ["ip", "link", "set", "lo", "up"]));
    return ns;
  }

  /** A veth pair between two namespaces, each end addressed and up. */
  async link(a: LinkEnd, b: LinkEnd): Promise<void> {
    // Both ends are born inside their namespaces, so names never clash with the host's.
    await mustExec([
      "ip",
      "link",
      "add",
      a.ifname,
      "netns",
      a.ns,
      "type",
      "veth",
      "peer",
      "name",
      b.ifname,
      "netns",
      b.ns,
    ]);
    for (const end of [a, b]) {
      await mustExec(inNs(end.ns, ["ip", "addr", "add", end.cidr, "dev", end.ifname]));
      await mustExec(inNs(end.ns, ["ip", "link", "set", end.ifname, "up"]));
    }
  }

  async route(ns: string, dest: string, via: string): Promise<void> {
    await mustExec(inNs(ns, ["ip", "route", "add", dest, "via", via]));
  }

  /** Runs a command in a namespace; throws on a non-zero exit. */
  run(ns: string, cmd: string[], stdin?: string): Promise<string> {
    return mustExec(inNs(ns, cmd), stdin);
  }

  async responder(ns: string, host: string, port: number, text: string): Promise<Responder> {
    const r = await Responder.start(ns, host, port, text);
    this.responders.push(r);
    return r;
  }

  /** Stops the responders and deletes the namespaces (with their veths); never throws. */
  async destroy(): Promise<void> {
    await Promise.all(this.responders.splice(0).map((r) => r.stop().catch(() => {})));
    for (const ns of this.namespaces.splice(0).reverse()) {
      await exec(["ip", "netns", "del", ns]).catch(() => {});
    }
  }
}
