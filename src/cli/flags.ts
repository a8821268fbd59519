// Declarative flags: each role lists its flags once; parsing, the JSON config file
// (`--config FILE`, command-line flags win), defaults and `--help` all come from it.
import { parseArgs } from "node:util";

export type FlagType = "string" | "boolean" | "number" | "size" | "duration";
type Value = string | number | boolean;

export interface FlagSpec {
  name: string;
  type: FlagType;
  description: string;
  default?: Value | string[];
  multiple?: boolean;
  choices?: readonly string[];
  placeholder?: string;
}

/** A mistake in how the program was invoked: printed without a stack, exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

const sizeUnits: Record<string, number> = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** "64M", "1G", "4096", "1.5g" → bytes. */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$/i.exec(text.trim());
  if (!m) throw new UsageError(`not a size: "${text}" (examples: 4096, 64M, 1G)`);
  return Math.round(Number(m[1]) * sizeUnits[m[2].toLowerCase()]);
}

const durationUnits: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** "100ms", "5s", "2m", "1h", "30d", "250" (ms) → milliseconds. */
export function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$/.exec(text.trim());
  if (!m) throw new UsageError(`not a duration: "${text}" (examples: 100ms, 5s, 2m)`);
  return Number(m[1]) * durationUnits[m[2] ?? "ms"];
}

function convert(spec: FlagSpec, raw: unknown, origin: string): Value {
  const where = `${origin} --${spec.name}`;
  if (spec.type === "boolean") {
    if (typeof raw === "boolean") return raw;
    throw new UsageError(`${where} must be true or false`);
  }
  if (typeof raw !== "string" && typeof raw !== "number") {
    throw new UsageError(`${where} must be a ${spec.type}`);
  }
  const text = String(raw);
  let value: Value;
  switch (spec.type) {
    case "number":
      value = Number(text);
      if (text.trim() === "" || !Number.isFinite(value)) {
        throw new UsageError(`${where}: not a number: "${text}"`);
      }
      break;
    case "size":
      value = typeof raw === "number" ? raw : parseSize(text);
      if (!Number.isSafeInteger(value) || value < 0) {
        throw new UsageError(`${where}: not a size in bytes: ${text}`);
      }
      break;
    case "duration":
      value = typeof raw === "number" ? raw : parseDuration(text);
      if (!Number.isFinite(value) || value < 0) throw new UsageError(`${where}: not a duration: ${text}`);
      break;
    default:
      value = text;
  }
  if (spec.choices && !spec.choices.includes(String(value))) {
    throw new UsageError(`${where} must be one of ${spec.choices.join(", ")} (got "${text}")`);
  }
  return value;
}

export type Parsed = Record<string, Value | Value[] | undefined>;

/**
 * Parses args against specs. Config-file values are read first and overridden by
 * command-line values; a multiple flag given on the command line replaces the
 * file's list. Unknown flags, in either place, are usage errors.
 */
export function parseFlags(
  specs: readonly FlagSpec[],
  args: string[],
  config: Record<string, unknown> = {},
): Parsed {
  const options: Record<string, { type: "string" | "boolean"; multiple?: boolean }> = {};
  for (const s of specs) {
    options[s.name] = s.multiple
      ? { type: "string", multiple: true }
      : { type: s.type === "boolean" ? "boolean" : "string" };
  }
  let values: Record<string, unknown>;
  try {
    ({ values } = parseArgs({ args, options, strict: true, allowPositionals: false }));
  } catch (e) {
    throw new UsageError((e as Error).message.replace(/\. To specify a positional argument.*$/s, ""));
  }
  const byName = new Map(specs.map((s) => [s.name, s]));
  for (const key of Object.keys(config)) {
    if (!byName.has(key)) throw new UsageError(`config file: unknown key "${key}"`);
  }
  const out: Parsed = {};
  for (const s of specs) {
    const origin = values[s.name] !== undefined ? "flag" : "config file";
    const raw = values[s.name] ?? config[s.name];
    if (raw === undefined) {
      if (s.multiple) {
        out[s.name] = ((s.default as string[] | undefined) ?? []).map((v) => convert(s, v, "default"));
      } else out[s.name] = s.default === undefined ? undefined : convert(s, s.default, "default");
      continue;
    }
    if (s.multiple) {
      const list = Array.isArray(raw) ? raw : [raw];
      out[s.name] = list.map((v) => convert(s, v, origin));
    } else {
      if (Array.isArray(raw)) throw new UsageError(`${origin} --${s.name} takes one value`);
      out[s.name] = convert(s, raw, origin);
    }
  }
  return out;
}

/** Reads a JSON config file: an object whose keys are flag names. */
export function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    throw new UsageError(`cannot read config file ${path}: ${(e as Error).message}`);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`config file ${path} is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    throw new UsageError(`config file ${path} must hold a JSON object of flag names to values`);
  }
  return data as Record<string, unknown>;
}

/** The `--help` text: every flag with its default. */
export function helpText(title: string, usage: string, specs: readonly FlagSpec[]): string {
  const rows = specs.map((s) => {
    const arg = s.type === "boolean" ? "" : ` ${s.placeholder ?? s.type.toUpperCase()}`;
    const left = `  --${s.name}${arg}`;
    let right = s.description;
    if (s.choices) right += ` (${s.choices.join(" | ")})`;
    if (s.multiple) right += " [repeatable]";
    const d = s.default;
    if (d !== undefined && !(Array.isArray(d) && d.length === 0)) {
      right += ` [default: ${Array.isArray(d) ? d.join(", ") : d}]`;
    } else if (s.type !== "boolean" && !s.description.includes("[default:")) right += " [default: none]";
    return { left, right };
  });
  const width = Math.max(...rows.map((r) => r.left.length)) + 2;
  return `${title}\n\nUsage: ${usage}\n\nFlags:\n` +
    rows.map((r) => r.left.padEnd(width) + r.right).join("\n") + "\n";
}
