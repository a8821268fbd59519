// The volumes the gateway assigned to this agent (the control plane), remembered in the data
// directory so a restart without the gateway still serves them. Flags (--volume) are not kept
// here: they are given again at every start and win over an assignment of the same name.
import { assignmentSchema, fieldErrors } from "../wire/control.ts";
import { logger } from "../log.ts";

const log = logger("assignments");

/** One assigned volume: its export name, the device or file, and the size the task expects. */
export interface Assignment {
  name: string;
  path: string;
  size: number;
}

/** Checks one remembered assignment (by the `assign` message's schema); returns it, or what is wrong. */
export function parseAssignment(raw: unknown): Assignment | string {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) {
    return "an assignment must be an object {name, path, size}";
  }
  const r = assignmentSchema.safeParse(raw);
  if (r.success) return r.data;
  return `assignment ${JSON.stringify((raw as { name?: unknown }).name)}: ${fieldErrors(r.error)}`;
}

export class AssignmentFile {
  private constructor(private readonly file: string, private readonly list: Map<string, Assignment>) {}

  static async load(dataDir: string): Promise<AssignmentFile> {
    const file = `${dataDir}/assignments.json`;
    const list = new Map<string, Assignment>();
    try {
      const saved = JSON.parse(await Deno.readTextFile(file)) as { volumes?: unknown[] };
      for (const raw of saved.volumes ?? []) {
        const a = parseAssignment(raw);
        if (typeof a === "string") log.warn("ignoring a remembered assignment", { reason: a });
        else list.set(a.name, a);
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        throw new Error(`cannot read ${file}: ${(e as Error).message}`);
      }
    }
    return new AssignmentFile(file, list);
  }

  all(): Assignment[] {
    return [...this.list.values()];
  }

  async set(a: Assignment): Promise<void> {
    this.list.set(a.name, a);
    await this.save();
  }

  async delete(name: string): Promise<void> {
    if (this.list.delete(name)) await this.save();
  }

  /** Written to a temporary file and renamed: a crash leaves the old list or the new one. */
  private async save(): Promise<void> {
    const tmp = `${this.file}.tmp`;
    await Deno.writeTextFile(tmp, JSON.stringify({ volumes: this.all() }, null, 2), { mode: 0o600 });
    const f = await Deno.open(tmp, { read: true });
    try {
      await f.sync();
    } finally {
      f.close();
    }
    await Deno.rename(tmp, this.file);
  }
}
