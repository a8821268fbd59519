// The peers the write benchmarks run Continuum against: qemu-storage-daemon with an active
// mirror to nbdkit (what a user would pick instead), started on fresh sparse files.

const GiB = 1024 ** 3;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A running peer: its NBD URI, its processes, and how to stop it. */
export interface Peer {
  uri: string;
  pids: number[];
  stop(): Promise<void>;
}

/** A fresh sparse file of 1 GiB. */
export async function sparse(path: string): Promise<string> {
  const f = await Deno.open(path, { create: true, write: true, truncate: true });
  await f.truncate(GiB);
  f.close();
  return path;
}

/** A peer's server process, stopped with SIGTERM. */
export function daemon(cmd: string, args: string[]): { pid: number; stop(): Promise<void> } {
  const p = new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).spawn();
  return {
    pid: p.pid,
    async stop() {
      try {
        p.kill("SIGTERM");
      } catch { /* exited */ }
      await p.status;
    },
  };
}

export async function waitSocket(path: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    try {
      (await Deno.connect({ transport: "unix", path })).close();
      return;
    } catch {
      await sleep(50);
    }
  }
  throw new Error(`${path} never came up`);
}

/** A minimal QMP client: one command at a time, events skipped. */
class Qmp {
  private buf = "";
  private constructor(private readonly conn: Deno.Conn) {}

  static async connect(path: string): Promise<Qmp> {
    const q = new Qmp(await Deno.connect({ transport: "unix", path }));
    await q.line(); // the greeting
    await q.run("qmp_capabilities");
    return q;
  }

  private async line(): Promise<Record<string, unknown>> {
    const dec = new TextDecoder();
    while (true) {
      const nl = this.buf.indexOf("\n");
      if (nl >= 0) {
        const l = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        if (l.trim()) return JSON.parse(l);
        continue;
      }
      const b = new Uint8Array(65536);
      const n = await this.conn.read(b);
      if (n === null) throw new Error("QMP closed");
      this.buf += dec.decode(b.subarray(0, n));
    }
  }

  async run(execute: string, args?: unknown): Promise<unknown> {
    await this.conn.write(new TextEncoder().encode(JSON.stringify({ execute, arguments: args }) + "\n"));
    while (true) {
      const r = await this.line();
      if ("event" in r) continue;
      if ("error" in r) throw new Error(`QMP ${execute}: ${JSON.stringify(r.error)}`);
      return r.return;
    }
  }

  close(): void {
    this.conn.close();
  }
}

/**
 * qemu-storage-daemon exporting `src` over NBD with an active mirror to an nbdkit file target;
 * targetFlushes: the flushes the target received, once stopped.
 */
export async function qemuActiveMirror(dir: string): Promise<Peer & { targetFlushes(): Promise<number> }> {
  const src = await sparse(`${dir}/qsd-src.img`);
  const tgt = await sparse(`${dir}/qsd-tgt.img`);
  const tsock = `${dir}/qsd-tgt.sock`, qsock = `${dir}/qsd.sock`, qmp = `${dir}/qsd-qmp.sock`;
  const stats = `${dir}/qsd-tgt.stats`;
  for (const s of [tsock, qsock, qmp, stats]) await Deno.remove(s).catch(() => {});
  // the stats filter counts the flushes that reach the mirror's target (written when nbdkit exits)
  const target = daemon("nbdkit", ["-f", "-U", tsock, "--filter=stats", "file", tgt, `statsfile=${stats}`]);
  await waitSocket(tsock);
  const qsd = daemon("qemu-storage-daemon", [
    "--blockdev",
    `driver=file,node-name=srcf,filename=${src}`,
    "--blockdev",
    "driver=raw,node-name=src,file=srcf",
    "--blockdev",
    `driver=nbd,node-name=tgt,server.type=unix,server.path=${tsock}`,
    "--nbd-server",
    `addr.type=unix,addr.path=${qsock}`,
    "--export",
    "type=nbd,id=e0,node-name=src,name=vol0,writable=on",
    "--chardev",
    `socket,id=qmp,path=${qmp},server=on,wait=off`,
    "--monitor",
    "chardev=qmp",
  ]);
  const stop = async () => {
    await qsd.stop();
    await target.stop();
  };
  try {
    await waitSocket(qmp);
    const q = await Qmp.connect(qmp);
    try {
      await q.run("blockdev-mirror", {
        "job-id": "m0",
        device: "src",
        target: "tgt",
        sync: "full",
        "copy-mode": "write-blocking",
      });
      const until = Date.now() + 60_000;
      while (true) {
        const jobs = await q.run("query-block-jobs") as { device: string; ready: boolean }[];
        if (jobs.find((j) => j.device === "m0")?.ready) break;
        if (Date.now() > until) throw new Error("the qemu mirror never became ready");
        await sleep(100);
      }
    } finally {
      q.close();
    }
    await waitSocket(qsock);
  } catch (e) {
    await stop();
    throw e;
  }
  const targetFlushes = async () =>
    Number(/^flush: (\d+) ops/m.exec(await Deno.readTextFile(stats))?.[1] ?? 0);
  return { uri: `nbd+unix:///vol0?socket=${qsock}`, pids: [qsd.pid, target.pid], targetFlushes, stop };
}
