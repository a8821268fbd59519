// Service switch rules for the nat table, as pure functions: input validation, the
// `iptables-restore --noflush` script, parsing of `iptables-save -t nat`, and the
// desired/actual diff. Running the tools is src/switch/iptables.ts's job.
//
// Every value written into a script passes the validation below first (values may
// come from an API), so nothing but digits, dots and [A-Za-z0-9_.-] reaches it.

/** DNAT chain, jumped to from PREROUTING (other hosts) and OUTPUT (this host). */
export const PRE_CHAIN = "CONTINUUM-PRE";
/** Return-path chain (MASQUERADE / SNAT of switched flows), jumped to from POSTROUTING. */
export const POST_CHAIN = "CONTINUUM-POST";
export const OWN_CHAINS = [PRE_CHAIN, POST_CHAIN] as const;
export const COMMENT_PREFIX = "continuum:";

export type Hook = "PREROUTING" | "OUTPUT" | "POSTROUTING";
/** Each built-in chain and the Continuum chain it must jump to exactly once. */
export const HOOKS: readonly { from: Hook; to: string }[] = [
  { from: "PREROUTING", to: PRE_CHAIN },
  { from: "OUTPUT", to: PRE_CHAIN },
  { from: "POSTROUTING", to: POST_CHAIN },
];

export type Protocol = "tcp" | "udp";

export interface Endpoint {
  address: string;
  port: number;
}

/**
 * How replies find their way back through the gateway: MASQUERADE (source becomes the
 * gateway's address on the outgoing interface) or SNAT to a fixed gateway address.
 */
export type ReturnPath = { mode: "masquerade" } | { mode: "snat"; address: string };

/** One active switch: traffic for `service` goes to `target` instead. */
export interface Switch {
  /** Task id; it ends up in each rule's comment as `continuum:<id>`. */
  id: string;
  protocol: Protocol;
  service: Endpoint;
  target: Endpoint;
  /** Defaults to MASQUERADE. */
  returnPath?: ReturnPath;
}

export class SwitchRuleError extends Error {
  override name = "SwitchRuleError";
}

const ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const IPV4 = /^(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})$/;

/** A value for an error message: quoted, escaped (newlines stay visible) and short. */
function show(v: unknown): string {
  const s = typeof v === "string" ? JSON.stringify(v) : String(v);
  return s.length > 70 ? `${s.slice(0, 67)}...` : s;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function onlyKeys(where: string, v: Record<string, unknown>, allowed: string[]): void {
  for (const k of Object.keys(v)) {
    if (!allowed.includes(k)) throw new SwitchRuleError(`${where}: unknown field ${show(k)}`);
  }
}

/** A unicast IPv4 address a rule may name; loopback would need route_localnet, so it is refused. */
export function validateAddress(where: string, v: unknown): string {
  const m = typeof v === "string" ? IPV4.exec(v) : null;
  if (!m) throw new SwitchRuleError(`${where}: ${show(v)} is not a dotted IPv4 address`);
  const octets = m.slice(1).map(Number);
  if (octets.some((o) => o > 255)) throw new SwitchRuleError(`${where}: ${show(v)} has an octet above 255`);
  if (octets[0] === 0 || octets[0] === 127 || octets[0] >= 224) {
    throw new SwitchRuleError(`${where}: ${show(v)} is not a unicast host address`);
  }
  return v as string;
}

export function validatePort(where: string, v: unknown): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > 65535) {
    throw new SwitchRuleError(`${where}: ${show(v)} is not a port (an integer 1..65535)`);
  }
  return v;
}

function validateEndpoint(where: string, v: unknown): Endpoint {
  if (!isRecord(v)) throw new SwitchRuleError(`${where}: expected {address, port}`);
  onlyKeys(where, v, ["address", "port"]);
  return {
    address: validateAddress(`${where} address`, v.address),
    port: validatePort(`${where} port`, v.port),
  };
}

function validateReturnPath(where: string, v: unknown): ReturnPath {
  if (v === undefined) return { mode: "masquerade" };
  if (isRecord(v) && v.mode === "masquerade") {
    onlyKeys(where, v, ["mode"]);
    return { mode: "masquerade" };
  }
  if (isRecord(v) && v.mode === "snat") {
    onlyKeys(where, v, ["mode", "address"]);
    return { mode: "snat", address: validateAddress(`${where} SNAT address`, v.address) };
  }
  throw new SwitchRuleError(`${where}: expected {mode: "masquerade"} or {mode: "snat", address}`);
}

/** Checks one switch strictly and returns a normalized copy (return path filled in). */
export function validateSwitch(v: unknown): Required<Switch> {
  if (!isRecord(v)) throw new SwitchRuleError("switch: expected an object");
  if (typeof v.id !== "string" || !ID.test(v.id)) {
    throw new SwitchRuleError(`switch id ${show(v.id)}: use 1-64 characters of [A-Za-z0-9_.-]`);
  }
  const where = `switch ${v.id}`;
  onlyKeys(where, v, ["id", "protocol", "service", "target", "returnPath"]);
  if (v.protocol !== "tcp" && v.protocol !== "udp") {
    throw new SwitchRuleError(`${where}: protocol ${show(v.protocol)} is neither "tcp" nor "udp"`);
  }
  const s: Required<Switch> = {
    id: v.id,
    protocol: v.protocol,
    service: validateEndpoint(`${where} service`, v.service),
    target: validateEndpoint(`${where} target`, v.target),
    returnPath: validateReturnPath(`${where} return path`, v.returnPath),
  };
  if (s.service.address === s.target.address && s.service.port === s.target.port) {
    throw new SwitchRuleError(`${where}: target equals the service address`);
  }
  return s;
}

const serviceKey = (s: Switch) => `${s.protocol} ${s.service.address}:${s.service.port}`;

/**
 * Validates a whole desired set and puts it in a canonical order, so the same set
 * always gives the same script. Two switches for one service would shadow each other:
 * refused.
 */
export function validateSwitches(v: unknown): Required<Switch>[] {
  if (!Array.isArray(v)) throw new SwitchRuleError("switches: expected an array");
  const list = v.map(validateSwitch);
  const seen = new Map<string, string>();
  for (const s of list) {
    const other = seen.get(serviceKey(s));
    if (other !== undefined) {
      throw new SwitchRuleError(`switches ${other} and ${s.id} both switch ${serviceKey(s)}`);
    }
    seen.set(serviceKey(s), s.id);
  }
  const key = (s: Switch) => `${s.id} ${serviceKey(s)}`;
  return list.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
}

/**
 * The two rules of a switch, spelled exactly as iptables-save prints them (nft and
 * legacy alike), so desired and actual rules compare as text.
 *
 * The POST rule matches only connections this switch DNATed (conntrack original
 * destination = the service), so other traffic to the backup server is not rewritten.
 */
export function switchRules(v: Switch): string[] {
  const s = validateSwitch(v);
  const p = s.protocol;
  const comment = `-m comment --comment "${COMMENT_PREFIX}${s.id}"`;
  const back = s.returnPath.mode === "snat" ? `-j SNAT --to-source ${s.returnPath.address}` : "-j MASQUERADE";
  return [
    `-A ${PRE_CHAIN} -d ${s.service.address}/32 -p ${p} -m ${p} --dport ${s.service.port} ${comment}` +
    ` -j DNAT --to-destination ${s.target.address}:${s.target.port}`,
    `-A ${POST_CHAIN} -d ${s.target.address}/32 -p ${p} -m ${p} --dport ${s.target.port}` +
    ` -m conntrack --ctstate DNAT --ctorigdst ${s.service.address} --ctorigdstport ${s.service.port}` +
    ` ${comment} ${back}`,
  ];
}

export const jumpRule = (from: Hook, to: string) => `-A ${from} -j ${to}`;

/** What the nat table should hold of Continuum's: one jump per hook, then the switch rules. */
export function desiredLines(desired: Switch[]): string[] {
  const rules = validateSwitches(desired).map(switchRules);
  return [
    ...HOOKS.map((h) => jumpRule(h.from, h.to)),
    ...rules.map((r) => r[0]),
    ...rules.map((r) => r[1]),
  ];
}

/** What the nat table holds of Continuum's, from `iptables-save -t nat`. */
export interface NatState {
  /** Which of Continuum's chains exist. */
  chains: string[];
  /** How often each exact jump rule (`-A PREROUTING -j CONTINUUM-PRE` ...) occurs. */
  jumps: Record<Hook, number>;
  /** Any other rule that jumps to a Continuum chain (a manual edit, a wrong hook). */
  strays: string[];
  /** The rules inside Continuum's chains, in table order. */
  rules: string[];
}

/** Splits a save line into words, honouring the double quotes iptables-save puts around strings. */
function words(line: string): { text: string; quoted: boolean }[] {
  const out: { text: string; quoted: boolean }[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g;
  for (let m = re.exec(line); m; m = re.exec(line)) {
    if (m[1] !== undefined) out.push({ text: m[1].replace(/\\(.)/g, "$1"), quoted: true });
    else out.push({ text: m[2], quoted: false });
  }
  return out;
}

/** The rule's jump or goto target; iptables-save prints it last, after the matches. */
function target(line: string): string | undefined {
  const w = words(line);
  for (let i = w.length - 2; i >= 0; i--) {
    if (!w[i].quoted && ["-j", "--jump", "-g", "--goto"].includes(w[i].text)) return w[i + 1].text;
  }
  return undefined;
}

/** Parses `iptables-save` output; only the nat table is read, everything not Continuum's is ignored. */
export function parseNatSave(text: string): NatState {
  const state: NatState = {
    chains: [],
    jumps: { PREROUTING: 0, OUTPUT: 0, POSTROUTING: 0 },
    strays: [],
    rules: [],
  };
  const own: readonly string[] = OWN_CHAINS;
  let inNat = false;
  for (const raw of text.split("\n")) {
    const line = raw.trim().replace(/^\[\d+:\d+\]\s+/, ""); // `-c` counters, if present
    if (line.startsWith("*")) inNat = line === "*nat";
    else if (!inNat || line === "" || line.startsWith("#")) continue;
    else if (line === "COMMIT") inNat = false;
    else if (line.startsWith(":")) {
      const name = line.slice(1).split(/\s/)[0];
      if (own.includes(name) && !state.chains.includes(name)) state.chains.push(name);
    } else if (line.startsWith("-A ")) {
      const chain = line.split(/\s+/)[1];
      if (own.includes(chain)) state.rules.push(line);
      else if (own.includes(target(line) ?? "")) {
        const hook = HOOKS.find((h) => line === jumpRule(h.from, h.to));
        if (hook) state.jumps[hook.from]++;
        else state.strays.push(line);
      }
    }
  }
  return state;
}

/** Continuum's lines as found, duplicates repeated (the multiset the diff works on). */
export function actualLines(state: NatState): string[] {
  const jumps = HOOKS.flatMap((h) => Array(state.jumps[h.from]).fill(jumpRule(h.from, h.to)) as string[]);
  return [...jumps, ...state.strays, ...state.rules];
}

export interface RuleDiff {
  /** Found but not desired: stale rules, duplicate or stray jumps. */
  removed: string[];
  /** Desired but missing. */
  added: string[];
  unchanged: string[];
}

/** Desired vs actual, as multisets of rule lines (a duplicate jump counts as one to remove). */
export function diffRules(desired: Switch[], actual: NatState): RuleDiff {
  const left = actualLines(actual);
  const added: string[] = [];
  const unchanged: string[] = [];
  for (const line of desiredLines(desired)) {
    const i = left.indexOf(line);
    if (i < 0) added.push(line);
    else {
      unchanged.push(line);
      left.splice(i, 1);
    }
  }
  return { removed: left, added, unchanged };
}

export const isClean = (d: RuleDiff) => d.added.length === 0 && d.removed.length === 0;

/** The task id in a rule's comment, for logs. */
export function ruleTask(line: string): string | undefined {
  const w = words(line);
  const i = w.findIndex((x) => x.text === "--comment");
  const c = i >= 0 ? w[i + 1]?.text : undefined;
  return c?.startsWith(COMMENT_PREFIX) ? c.slice(COMMENT_PREFIX.length) : undefined;
}

const deleteOf = (line: string) => `-D ${line.slice(3)}`;

/** Deletes duplicate and stray jumps; adds (inserted first, ahead of others' NAT rules) missing ones. */
function jumpFixes(actual: NatState): string[] {
  const out = actual.strays.map(deleteOf);
  for (const h of HOOKS) {
    const n = actual.jumps[h.from];
    if (n === 0) out.push(`-I ${h.from} 1 -j ${h.to}`);
    for (let i = 1; i < n; i++) out.push(deleteOf(jumpRule(h.from, h.to)));
  }
  return out;
}

/**
 * The `iptables-restore --noflush` input that leaves exactly `desired` in Continuum's
 * chains and each jump exactly once. One transaction: the chains are flushed and
 * refilled atomically, so packets never see a half-applied set. `actual` is the state
 * just read; it only decides which jump rules to add or delete.
 */
export function restoreScript(desired: Switch[], actual: NatState): string {
  const rules = validateSwitches(desired).map(switchRules);
  return [
    "*nat",
    ...OWN_CHAINS.map((c) => `:${c} - [0:0]`),
    ...OWN_CHAINS.map((c) => `-F ${c}`),
    ...jumpFixes(actual),
    ...rules.map((r) => r[0]),
    ...rules.map((r) => r[1]),
    "COMMIT",
    "",
  ].join("\n");
}

/** The restore input removing everything of Continuum's, or "" when nothing is there. */
export function clearScript(actual: NatState): string {
  const jumps = actualLines({ ...actual, rules: [] });
  if (jumps.length === 0 && actual.chains.length === 0) return "";
  return [
    "*nat",
    ...jumps.map(deleteOf),
    ...actual.chains.map((c) => `-F ${c}`),
    ...actual.chains.map((c) => `-X ${c}`),
    "COMMIT",
    "",
  ].join("\n");
}

/**
 * `conntrack` arguments dropping every tracked flow of the switch's service. NAT is
 * decided on a connection's first packet only: after a switch, established flows keep
 * going to the old destination (and UDP "flows" live on while packets keep coming)
 * until they are dropped here or expire; the same holds after failback.
 */
export function conntrackDeleteArgs(v: Switch): string[] {
  const s = validateSwitch(v);
  return ["-D", "-p", s.protocol, "--orig-dst", s.service.address, "--orig-port-dst", String(s.service.port)];
}
