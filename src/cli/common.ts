// Flags every role shares, and helpers to read role-specific flag values.
import { NAME_HINT, NAME_RE } from "../names.ts";
import type { FlagSpec, Parsed } from "./flags.ts";
import { UsageError } from "./flags.ts";
import { levels } from "../log.ts";

export const commonFlags: FlagSpec[] = [
  {
    name: "role",
    type: "string",
    description: "which role this process plays",
    choices: ["agent", "local-gateway", "remote-gateway"],
  },
  {
    name: "config",
    type: "string",
    description: "JSON file of flag values (flags given here win)",
    placeholder: "FILE",
  },
  {
    name: "log-level",
    type: "string",
    description: "least severe log level written",
    choices: levels,
    default: "info",
  },
  { name: "help", type: "boolean", description: "show this help", default: false },
];

/** "NAME=VALUE" pairs of a repeatable flag, names unique. */
export function pairs(flag: string, values: unknown): Map<string, string> {
  const out = new Map<string, string>();
  for (const v of (values as string[] | undefined) ?? []) {
    const i = v.indexOf("=");
    if (i <= 0 || i === v.length - 1) throw new UsageError(`--${flag} expects NAME=VALUE (got "${v}")`);
    const name = v.slice(0, i);
    if (!NAME_RE.test(name)) {
      throw new UsageError(`--${flag}: name "${name}" ${NAME_HINT}`);
    }
    if (out.has(name)) throw new UsageError(`--${flag}: "${name}" given twice`);
    out.set(name, v.slice(i + 1));
  }
  return out;
}

export function str(p: Parsed, name: string): string {
  const v = p[name];
  if (typeof v !== "string" || v === "") throw new UsageError(`--${name} is required`);
  return v;
}

export function optStr(p: Parsed, name: string): string | undefined {
  const v = p[name];
  return typeof v === "string" && v !== "" ? v : undefined;
}

export function num(p: Parsed, name: string): number {
  return p[name] as number;
}

export function list(p: Parsed, name: string): string[] {
  return (p[name] as string[] | undefined) ?? [];
}

/** Creates a private directory (0700) if it does not exist. */
export function ensurePrivateDir(path: string): void {
  try {
    Deno.mkdirSync(path, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new Error(`cannot create data directory ${path}: ${(e as Error).message}`);
  }
}

/** What a running role gives back to main: a way to stop it cleanly. */
export interface RoleHandle {
  stop(): Promise<void>;
  /** Rejects when the role cannot go on (e.g. its gateway refused a volume); main then stops it and exits 1. */
  fatal?: Promise<never>;
}
