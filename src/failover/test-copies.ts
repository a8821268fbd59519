// Failover tests, the remote site's half: a discardable copy of a replica, taken at a
// consistent applied sequence, exported writable over NBD on a listener of its own, so that an
// operator can start the service on it and see that it would run here. The copy is another
// file: writes to it never reach the replica, which keeps following the stream.
//
// A test is a lease the local site renews (TEST_LEASE_MS). It is discarded when the local site
// ends it, when its duration is over, when the lease lapses (the local gateway or the link is
// gone), when the volume's standby is promoted (a real failover), and at start: a restarted
// gateway exports no copy, so whatever a previous run left in the directory goes.
import { NAME_RE, VOLUME_KEY_RE } from "../names.ts";
import { logger } from "../log.ts";
import type { Address } from "../link/address.ts";
import { NbdServer } from "../nbd/server.ts";
import { Volume } from "../volume/volume.ts";
import { parsePoint } from "../retention/site.ts";

const log = logger("failover-test");

/** How long a test lives without a renewal from the local site. */
export const TEST_LEASE_MS = 15_000;

export interface TestCopiesOptions {
  dir: string;
  /** Where the copies are exported (TCP or a Unix socket); listened on while a test runs. */
  listen: Address;
  /**
   * Copies the replica of `volume` (AGENT/NAME) to the file `into` while nothing is applied to
   * it; resolves with the sequence the copy holds and the capture time of its newest write (0:
   * unknown). Throws (with a message for the operator) when the replica is not a consistent copy.
   * With a point (a sequence number or a checkpoint name), the copy is the volume at that point,
   * rebuilt from the site's retention.
   */
  snapshot: (
    volume: string,
    into: string,
    point?: number | string,
  ) => Promise<{ seq: number; size: number; time?: number }>;
  leaseMs?: number;
}

/** What the local site is told about a test. */
export interface TestCopy {
  id: string;
  /** The local site that asked for it. */
  site: string;
  task: string;
  volume: string;
  /** The replica's sequence the copy was taken at. */
  seq: number;
  /** Capture time (agent's wall clock) of the newest write the copy holds; 0 when unknown. */
  time: number;
  size: number;
  /** The NBD URI of the writable copy. */
  export: string;
  started: number;
  expires: number;
}

interface Running {
  copy: TestCopy;
  exportName: string;
  path: string;
  image: Volume;
  /** performance.now() of the last renewal and of the end of the test's duration. */
  renewed: number;
  ends: number;
}

export class TestCopies {
  private tests = new Map<string, Running>();
  /** Volumes whose copy is being taken (a second request for one is refused meanwhile). */
  private starting = new Set<string>();
  private server: Promise<NbdServer> | undefined;
  private readonly timer: ReturnType<typeof setInterval>;
  private readonly leaseMs: number;

  private constructor(private readonly o: TestCopiesOptions) {
    this.leaseMs = o.leaseMs ?? TEST_LEASE_MS;
    this.timer = setInterval(() => this.expire(), 1000);
    Deno.unrefTimer(this.timer);
  }

  /** Removes what a previous run left in `dir` and starts following leases. */
  static async open(o: TestCopiesOptions): Promise<TestCopies> {
    let left = 0;
    try {
      for await (const e of Deno.readDir(o.dir)) if (e.isFile) left++;
      await Deno.remove(o.dir, { recursive: true });
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    if (left) log.warn("discarded the failover test copies a previous run left", { count: left });
    await Deno.mkdir(o.dir, { recursive: true, mode: 0o700 });
    return new TestCopies(o);
  }

  /** Takes a copy of a volume's replica and exports it; refuses a second test of one volume. */
  async start(site: string, req: Record<string, unknown>): Promise<TestCopy> {
    const { task, volume, durationSeconds } = req;
    const point = req.point === undefined ? undefined : parsePoint(req.point);
    if (typeof task !== "string" || !NAME_RE.test(task)) throw new Error("task: not a task name");
    if (typeof volume !== "string" || !VOLUME_KEY_RE.test(volume)) throw new Error("volume: not AGENT/NAME");
    if (!Number.isInteger(durationSeconds) || (durationSeconds as number) < 1) {
      throw new Error("durationSeconds: not a whole number of seconds");
    }
    const running = [...this.tests.values()].find((t) => t.copy.volume === volume);
    if (running || this.starting.has(volume)) {
      throw new Error(
        `a failover test of ${volume} is already running here${
          running ? ` (task ${running.copy.task})` : ""
        }`,
      );
    }
    this.starting.add(volume);
    const id = crypto.randomUUID().slice(0, 8);
    const path = `${this.o.dir}/${id}.img`;
    try {
      const { seq, size, time } = await this.o.snapshot(volume, path, point);
      const image = Volume.open(path);
      // AGENT-NAME reads well; two volumes that would share it (a-b/c, a/b-c) get the id too
      const base = `test-${volume.replace("/", "-")}`;
      const exportName = [...this.tests.values()].some((t) => t.exportName === base) ? `${base}-${id}` : base;
      const server = await this.listening().catch((e) => {
        image.close();
        throw e;
      });
      server.exportFile(
        exportName,
        image.fd,
        image.size,
        false,
        `Continuum failover test copy of ${volume} at seq ${seq}`,
      );
      const now = Date.now();
      const copy: TestCopy = {
        id,
        site,
        task,
        volume,
        seq,
        time: time ?? 0,
        size,
        export: this.uri(server, exportName),
        started: now,
        expires: now + (durationSeconds as number) * 1000,
      };
      // leases and the duration run on the monotonic clock: a clock step must not end a test early
      const mono = performance.now();
      this.tests.set(id, {
        copy,
        exportName,
        path,
        image,
        renewed: mono,
        ends: mono + (durationSeconds as number) * 1000,
      });
      log.warn("failover test copy exported", { ...copy });
      return copy;
    } catch (e) {
      // cleanup of the failed export (its image may not exist): the error thrown says what failed
      await Deno.remove(path).catch(() => {});
      if (this.tests.size === 0) await this.closeServer();
      throw e;
    } finally {
      this.starting.delete(volume);
    }
  }

  /** The local site still runs the test: its lease starts again. Undefined: no such test here. */
  renew(site: string, id: string): TestCopy | undefined {
    const t = this.tests.get(id);
    if (!t || t.copy.site !== site) return undefined;
    t.renewed = performance.now();
    return t.copy;
  }

  /** Ends the site's test with this id, or its test for `task`; false when there was none. */
  async stop(site: string, which: { id?: string; task?: string }, why: string): Promise<boolean> {
    const ends = [...this.tests.values()].filter((t) =>
      t.copy.site === site && (t.copy.id === which.id || t.copy.task === which.task)
    );
    for (const t of ends) await this.discard(t, why);
    return ends.length > 0;
  }

  /** Ends every test of an agent's volumes (its standby is promoted: the service moves here for real). */
  async stopAgent(agent: string, why: string): Promise<void> {
    for (const t of [...this.tests.values()]) {
      if (t.copy.volume.startsWith(`${agent}/`)) await this.discard(t, why);
    }
  }

  list(): TestCopy[] {
    return [...this.tests.values()].map((t) => t.copy);
  }

  /** The test with this id, if it is the given site's. */
  find(site: string, id: string): TestCopy | undefined {
    const t = this.tests.get(id);
    return t && t.copy.site === site ? t.copy : undefined;
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    for (const t of [...this.tests.values()]) await this.discard(t, "the gateway stops");
    await this.closeServer();
  }

  private expire(): void {
    const now = performance.now();
    for (const t of this.tests.values()) {
      const why = now >= t.ends
        ? "its duration is over"
        : now - t.renewed > this.leaseMs
        ? `site ${t.copy.site} did not renew it for ${Math.round(this.leaseMs / 1000)} s`
        : undefined;
      if (why) {
        this.discard(t, why).catch((e) =>
          log.error("cannot discard a test copy", { id: t.copy.id, error: e })
        );
      }
    }
  }

  private async discard(t: Running, why: string): Promise<void> {
    if (this.tests.get(t.copy.id) !== t) return;
    this.tests.delete(t.copy.id);
    // its clients get their requests in flight answered, then ESHUTDOWN
    // a server that failed to start was reported to the export that started it: nothing to withdraw
    const server = await this.server?.catch(() => undefined);
    await server?.withdraw(t.exportName);
    t.image.close();
    await Deno.remove(t.path).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
    log.warn("failover test copy discarded", { id: t.copy.id, volume: t.copy.volume, why });
    if (this.tests.size === 0 && this.starting.size === 0) await this.closeServer();
  }

  private listening(): Promise<NbdServer> {
    this.server ??= NbdServer.listen({
      ...(this.o.listen.transport === "unix"
        ? { unixPath: this.o.listen.path }
        : { tcp: { hostname: this.o.listen.hostname, port: this.o.listen.port } }),
    }).catch((e) => {
      this.server = undefined;
      throw new Error(`cannot export the test copy: ${(e as Error).message}`);
    });
    return this.server;
  }

  private async closeServer(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    // as in discard: a server that never started has nothing to close
    await (await s?.catch(() => undefined))?.close();
  }

  private uri(server: NbdServer, name: string): string {
    const l = this.o.listen;
    if (l.transport === "unix") return `nbd+unix:///${name}?socket=${l.path}`;
    const host = l.hostname.includes(":") ? `[${l.hostname}]` : l.hostname;
    return `nbd://${host}:${server.tcpPort}/${name}`;
  }
}
