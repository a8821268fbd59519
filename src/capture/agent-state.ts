// An agent's lasting state beyond its volumes: whether it is fenced (its service
// was moved to another site: writes are refused until recovery) and whether a
// standby agent was promoted (it serves the volumes read-write now). Kept in
// small files so a restart, even without the gateway, does not forget either.
import { logger } from "../log.ts";

const log = logger("agent-state");

interface Saved {
  fenced?: { reason: string; since: number };
  promoted?: { since: number };
}

export class AgentState {
  private constructor(private readonly file: string, private s: Saved) {}

  static async load(dataDir: string): Promise<AgentState> {
    const file = `${dataDir}/agent-state.json`;
    let s: Saved = {};
    try {
      s = JSON.parse(await Deno.readTextFile(file));
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        log.warn("agent state unreadable: starting unfenced", { file, error: e });
      }
    }
    return new AgentState(file, s);
  }

  get fenced(): string | undefined {
    return this.s.fenced?.reason;
  }

  get promoted(): boolean {
    return this.s.promoted !== undefined;
  }

  /** When this standby was promoted (wall ms), if it serves now. */
  get promotedSince(): number | undefined {
    return this.s.promoted?.since;
  }

  private async save(): Promise<void> {
    const tmp = `${this.file}.tmp`;
    await Deno.writeTextFile(tmp, JSON.stringify(this.s), { mode: 0o600 });
    const f = await Deno.open(tmp, { write: true });
    await f.syncData();
    f.close();
    await Deno.rename(tmp, this.file);
  }

  async fence(reason: string): Promise<void> {
    if (this.s.fenced?.reason === reason) return;
    this.s.fenced = { reason, since: Date.now() };
    await this.save();
    log.warn("fenced: volumes are read-only", { reason });
  }

  async unfence(): Promise<void> {
    if (!this.s.fenced) return;
    delete this.s.fenced;
    await this.save();
    log.info("fence lifted: volumes are writable");
  }

  async promote(): Promise<void> {
    this.s.promoted = { since: Date.now() };
    await this.save();
  }

  /** Back to standby: the service returned to the primary site. */
  async demote(): Promise<void> {
    delete this.s.promoted;
    await this.save();
  }
}
