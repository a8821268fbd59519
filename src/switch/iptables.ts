// Applies service switch rules with the iptables tools: one `iptables-restore --noflush`
// transaction per change, then `iptables-save` to verify. Optionally inside a network
// namespace (`ip netns exec NAME`), which is how the tests and the demo run a gateway.
// Values go to the tools as argv elements or on stdin, never through a shell.
//
// Locally generated traffic is DNATed in OUTPUT to a non-local address: the kernel
// routes the packet again after DNAT and it leaves like any other outgoing packet, so
// net.ipv4.conf.all.route_localnet (only needed for 127.0.0.0/8 targets, which
// validation refuses) stays off.
import {
  clearScript,
  conntrackDeleteArgs,
  diffRules,
  isClean,
  type NatState,
  parseNatSave,
  restoreScript,
  type Switch,
  validateSwitches,
} from "./rules.ts";

/** nf_tables (the `iptables` of current distributions) or the older x_tables "legacy" backend. */
export type Variant = "nft" | "legacy";

export interface SwitchOptions {
  /** Network namespace to work in; the default is the caller's own. */
  netns?: string;
  /** Backend to use; by default the one the `iptables` command is (`iptables -V`). */
  variant?: Variant;
}

export class IptablesError extends Error {
  override name = "IptablesError";
}

const NETNS = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/;

function onPath(cmd: string): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    try {
      if (Deno.statSync(`${dir}/${cmd}`).isFile) return true;
    } catch { /* not here */ }
  }
  return false;
}

/** Runs a tool (in the namespace, if any) and returns its stdout; failures carry the tool's stderr. */
async function run(opts: SwitchOptions, cmd: string, args: string[], stdin?: string): Promise<string> {
  if (opts.netns !== undefined && !NETNS.test(opts.netns)) {
    throw new IptablesError(`network namespace name ${JSON.stringify(opts.netns)} is not a safe name`);
  }
  const argv = opts.netns === undefined ? [cmd, ...args] : ["ip", "netns", "exec", opts.netns, cmd, ...args];
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      stdin: stdin === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
      env: { LC_ALL: "C" },
    }).spawn();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new IptablesError(`${argv[0]} not found (install iptables)`);
    throw e;
  }
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    try {
      await w.write(new TextEncoder().encode(stdin));
      await w.close();
    } catch { /* the tool exited early; its exit code and stderr below say why */ }
  }
  const out = await child.output();
  const dec = new TextDecoder();
  if (!out.success) {
    const err = dec.decode(out.stderr).trim();
    const hint = /permission denied|not permitted/i.test(err) ? " (needs root or CAP_NET_ADMIN)" : "";
    const where = opts.netns === undefined ? "" : ` in network namespace ${opts.netns}`;
    throw new IptablesError(
      `${cmd}${where} failed with exit code ${out.code}: ${err || "no message"}${hint}`,
    );
  }
  return dec.decode(out.stdout);
}

let detected: Promise<Variant> | undefined;

/** Which backend `iptables` is: 1.8+ prints "(nf_tables)" or "(legacy)"; older versions are legacy. */
export function detectVariant(): Promise<Variant> {
  detected ??= run({}, "iptables", ["-V"]).then(
    (v) => (v.includes("nf_tables") ? "nft" : "legacy"),
    (e) => {
      detected = undefined; // retry next time (the tool may get installed)
      throw e;
    },
  );
  return detected;
}

/** The save/restore pair for a backend; `iptables-save`/`-restore` when a distribution lacks the suffixed names. */
async function tools(opts: SwitchOptions): Promise<{ save: string; restore: string }> {
  const v = opts.variant ?? await detectVariant();
  const pick = (name: string) =>
    onPath(`iptables-${v}-${name}`) ? `iptables-${v}-${name}` : `iptables-${name}`;
  return { save: pick("save"), restore: pick("restore") };
}

async function restore(opts: SwitchOptions, script: string): Promise<void> {
  // -w waits for the x_tables lock (legacy); nft accepts and ignores it.
  await run(opts, (await tools(opts)).restore, ["-w", "--noflush"], script);
}

/** What Continuum's chains and jumps in the nat table hold now. */
export async function readSwitches(opts: SwitchOptions = {}): Promise<NatState> {
  return parseNatSave(await run(opts, (await tools(opts)).save, ["-t", "nat"]));
}

// One change at a time within this process: a change reads the state, then restores.
let tail: Promise<unknown> = Promise.resolve();
function serialized<T>(fn: () => Promise<T>): Promise<T> {
  const next = tail.then(fn, fn);
  tail = next.catch(() => {}); // its failure is its caller's (next); the chain goes on
  return next;
}

/** Turns on IPv4 forwarding (never off: the host may forward for other reasons too). */
export async function enableForwarding(opts: SwitchOptions = {}): Promise<void> {
  // Inside a namespace /proc/sys/net is the namespace's own, so this runs there too.
  await run(opts, "sysctl", ["-q", "-w", "net.ipv4.ip_forward=1"]);
}

/**
 * Makes Continuum's chains hold exactly `desired` (an empty list leaves them empty but
 * hooked), each jump present once, in one restore transaction; then reads the table
 * back and fails unless it matches. Returns the verified state.
 */
export async function applySwitches(desired: Switch[], opts: SwitchOptions = {}): Promise<NatState> {
  const wanted = validateSwitches(desired);
  return await serialized(async () => {
    // Forwarding first, so the first switched packet is not dropped.
    if (wanted.length > 0) await enableForwarding(opts);
    await restore(opts, restoreScript(wanted, await readSwitches(opts)));
    const after = await readSwitches(opts);
    const d = diffRules(wanted, after);
    if (!isClean(d)) {
      throw new IptablesError(
        `nat table does not match the applied switches: missing ${JSON.stringify(d.added)}, ` +
          `unexpected ${JSON.stringify(d.removed)}`,
      );
    }
    return after;
  });
}

/** Removes everything Continuum added to the nat table: jumps, rules and chains. */
export function clearSwitches(opts: SwitchOptions = {}): Promise<void> {
  return serialized(async () => {
    const script = clearScript(await readSwitches(opts));
    if (script !== "") await restore(opts, script);
    const left = await readSwitches(opts);
    if (left.chains.length > 0 || left.strays.length > 0) {
      throw new IptablesError(
        `Continuum's nat chains are still there after clearing: ${left.chains.join(", ")}`,
      );
    }
  });
}

/**
 * Drops the tracked flows of each switched service so they reconnect through the
 * current rules (see conntrackDeleteArgs). Returns false when the `conntrack` tool is
 * not installed; nothing else needs it.
 */
export async function dropServiceFlows(switches: Switch[], opts: SwitchOptions = {}): Promise<boolean> {
  if (!onPath("conntrack")) return false;
  for (const s of validateSwitches(switches)) {
    try {
      await run(opts, "conntrack", conntrackDeleteArgs(s));
    } catch (e) {
      // conntrack exits 1 when no flow matched, which is not a failure here.
      if (!(e instanceof IptablesError && /0 flow entries/.test(e.message))) throw e;
    }
  }
  return true;
}
