// The volumes a primary agent serves because its gateway assigns them (the control plane's
// assign / unassign orders on the agent link, src/wire/control.ts).
import { logger } from "../log.ts";
import { Volume } from "../volume/volume.ts";
import type { NativeAgent, ProtectedVolume } from "../capture/native-agent.ts";
import type { NbdServer } from "../nbd/server.ts";
import type { Assignment, AssignmentFile } from "../capture/assignments.ts";
import { outsidePrefixes } from "../capture/devices.ts";
import type { AgentReport, AssignOrder, UnassignOrder } from "../wire/control.ts";
import { type AgentContext, capture, exportCaptured } from "./context.ts";

const log = logger("agent");

/** A volume served because the gateway assigned it. */
interface Served {
  a: Assignment;
  volume: Volume;
  pv: ProtectedVolume;
}

/**
 * The volumes the gateway assigns over the link (the control plane): `assign` opens and
 * exports them, `unassign` stops exporting and closes them, data left in place. Orders run
 * one at a time and each is answered (`assigned` / `unassigned`, with the error if it
 * failed); a bad assignment is refused, never fatal. The list is remembered in the data
 * directory, so a restart without the gateway serves the same volumes.
 */
export class AssignedVolumes {
  private served = new Map<string, Served>();
  private queue: Promise<void> = Promise.resolve();
  /** Set once the NBD server runs: assigned volumes are exported through it. */
  private server: NbdServer | undefined;

  constructor(
    private readonly c: AgentContext,
    private readonly agent: NativeAgent,
    private readonly file: AssignmentFile,
    private nextLinkId: number,
    private readonly onFatal: (e: Error) => void,
  ) {}

  names(): string[] {
    return [...this.served.keys()];
  }

  /** The NBD server is up: what is served is exported, and what is assigned from now on. */
  exportThrough(server: NbdServer): void {
    this.server = server;
    for (const s of this.served.values()) exportCaptured(server, this.agent, s.pv);
  }

  /** Tells the gateway what is remembered, so it can withdraw what it no longer assigns. */
  report(): void {
    this.agent.sendControl(
      { type: "assignments", names: this.file.all().map((a) => a.name) } satisfies AgentReport,
    );
  }

  /** Serves the remembered assignments at start (a --volume of the same name wins). */
  async restore(): Promise<void> {
    const opened: Promise<void>[] = [];
    for (const a of this.file.all()) {
      if (this.c.flagNames.has(a.name)) {
        log.warn("--volume overrides the gateway's assignment of the same name", { volume: a.name });
        continue;
      }
      try {
        const s = await this.open(a, false);
        opened.push(s.pv.opened.catch((e) => {
          log.error("the gateway refused a remembered volume; not serving it", { volume: a.name, error: e });
          return this.close(a.name, 0);
        }));
      } catch (e) {
        log.error("cannot serve a remembered assignment", { volume: a.name, path: a.path, error: e });
      }
    }
    // bounded like the --volume ones: an absent gateway does not hold the start
    await Promise.race([Promise.all(opened), new Promise((r) => setTimeout(r, 5000))]);
  }

  /** The gateway's order to serve these volumes: queued behind the orders before it, then answered. */
  assign(m: AssignOrder): void {
    this.serial(async () => {
      const results: { name: string; ok: boolean; error?: string }[] = [];
      for (const a of m.volumes) {
        try {
          await this.assignOne(a);
          results.push({ name: a.name, ok: true });
        } catch (e) {
          log.error("assignment failed", { volume: a.name, path: a.path, error: e });
          results.push({ name: a.name, ok: false, error: (e as Error).message });
        }
      }
      this.agent.sendControl({ type: "assigned", id: m.id, results } satisfies AgentReport);
    });
  }

  /** The gateway's order to stop serving a volume (its data left in place), answered like assign. */
  unassign(m: UnassignOrder): void {
    this.serial(async () => {
      const name = m.name;
      const answer = (ok: boolean, error?: string) =>
        this.agent.sendControl(
          { type: "unassigned", id: m.id, name, ok, ...(error ? { error } : {}) } satisfies AgentReport,
        );
      if (this.c.flagNames.has(name)) {
        return void answer(false, `volume ${name} is given by --volume on this agent, which wins`);
      }
      await this.close(name);
      await this.file.delete(name);
      log.info("volume unassigned: no longer exported, its data left in place", { volume: name });
      answer(true);
    });
  }

  private serial(fn: () => Promise<void>): void {
    this.queue = this.queue.then(fn).catch((e) => log.error("control order failed", { error: e }));
  }

  private async assignOne(a: Assignment): Promise<void> {
    if (this.c.flagNames.has(a.name)) {
      const v = this.c.volumes.get(a.name)!;
      if (v.path === a.path && v.size === a.size) return;
      throw new Error(`volume ${a.name} is given by --volume on this agent (${v.path}), which wins`);
    }
    const outside = outsidePrefixes(a.path, this.c.devicePrefixes);
    if (outside) throw new Error(outside);
    const cur = this.served.get(a.name);
    if (cur && cur.a.path === a.path && cur.a.size === a.size) return;
    if (cur) await this.close(a.name);
    const s = await this.open(a, cur !== undefined);
    const timeout = new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error(`the gateway did not accept volume ${a.name} within 10 s`)), 10_000)
    );
    try {
      await Promise.race([s.pv.opened, timeout]);
    } catch (e) {
      await this.close(a.name, 0);
      throw e;
    }
    await this.file.set(a);
    log.info("volume assigned: exporting it", { volume: a.name, path: a.path, size: a.size });
  }

  /** Opens the device, checks its size and starts capturing it. `changed`: it replaces another device. */
  private async open(a: Assignment, changed: boolean): Promise<Served> {
    const volume = Volume.open(a.path);
    let pv: ProtectedVolume;
    try {
      if (volume.size !== a.size) {
        throw new Error(`${a.path} is ${volume.size} bytes, the assignment of ${a.name} says ${a.size}`);
      }
      // another device under the same name: nothing is known of what the gateway holds of it
      pv = await capture(
        this.c,
        this.agent,
        a.name,
        volume,
        this.nextLinkId++,
        changed ? "unknown" : "keep",
        this.onFatal,
      );
    } catch (e) {
      volume.close();
      throw e;
    }
    const s = { a, volume, pv };
    this.served.set(a.name, s);
    this.c.volumes.set(a.name, volume);
    if (this.server) exportCaptured(this.server, this.agent, pv);
    return s;
  }

  /**
   * Stops serving a volume: its export is withdrawn (its clients' requests in flight
   * answered), the gateway confirms its pending records (bounded by `waitMs`), and the
   * device is closed as it is.
   */
  async close(name: string, waitMs = 10_000): Promise<void> {
    const s = this.served.get(name);
    if (!s) return;
    this.served.delete(name);
    await this.server?.withdraw(name);
    await s.pv.close(waitMs);
    s.volume.close();
    if (this.c.volumes.get(name) === s.volume) this.c.volumes.delete(name);
  }

  /** The captured volume served under `name`, if any. */
  captured(name: string): ProtectedVolume | undefined {
    return this.served.get(name)?.pv;
  }

  async closeAll(): Promise<void> {
    await this.queue;
    for (const name of [...this.served.keys()]) await this.close(name);
  }
}
