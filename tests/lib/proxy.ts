// A TCP proxy for tests: forwards a port to another; `cut()` stops forwarding
// in both directions (the peers see silence, as with a firewall DROP) and
// `heal()` resumes; `corrupt` flips a bit in forwarded data; `rateBps` limits it.
export class Proxy {
  private listener: Deno.Listener;
  private conns = new Set<Deno.Conn>();
  private paused = false;
  private resume: (() => void)[] = [];
  /**
   * Flip one bit in the payload of the next record frame (Continuum framing: u32
   * length, u8 type 7, 72-byte record header, payload) going client → server.
   */
  corrupted = 0;
  /**
   * Flip one bit in each of the next N chunks going client → server, wherever the bytes are
   * (for a sealed stream, whose framing the proxy cannot see).
   */
  flipChunks = 0;
  /** Delay added to every forwarded chunk (ms), plus a uniform random jitter; order is kept (TCP). */
  delayMs = 0;
  jitterMs = 0;
  /** A link of this many bytes per second in each direction (0: unlimited). */
  rateBps = 0;
  readonly port: number;

  constructor(
    private readonly target: { hostname: string; port: number } | { path: string },
    listen?: { path: string },
  ) {
    this.listener = listen
      ? Deno.listen({ transport: "unix", path: listen.path })
      : Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = listen ? 0 : (this.listener.addr as Deno.NetAddr).port;
    this.accept();
  }

  private async accept(): Promise<void> {
    for await (const c of this.listener) {
      this.conns.add(c);
      (async () => {
        let up: Deno.Conn;
        try {
          up = "path" in this.target
            ? await Deno.connect({ transport: "unix", path: this.target.path })
            : await Deno.connect(this.target);
        } catch {
          c.close();
          return;
        }
        this.conns.add(up);
        await Promise.allSettled([this.pump(c, up, true), this.pump(up, c, false)]);
        for (const x of [c, up]) {
          this.conns.delete(x);
          try {
            x.close();
          } catch { /* closed */ }
        }
      })();
    }
  }

  private async pump(from: Deno.Conn, to: Deno.Conn, forward: boolean): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    let delayed: Promise<void> = Promise.resolve();
    let due = 0;
    let backlog = 0;
    let paced = 0; // when the bytes forwarded so far may have left at rateBps
    try {
      while (true) {
        while (this.paused) await new Promise<void>((r) => this.resume.push(r));
        const n = await from.read(buf);
        if (n === null) break;
        while (this.paused) await new Promise<void>((r) => this.resume.push(r));
        if (this.rateBps > 0) {
          paced = Math.max(paced, performance.now()) + n / this.rateBps * 1000;
          const wait = paced - performance.now();
          if (wait > 1) await new Promise((r) => setTimeout(r, wait));
        }
        const chunk = buf.slice(0, n);
        if (forward && this.flipChunks > 0 && n >= 64) {
          this.flipChunks--;
          chunk[Math.floor(Math.random() * n)] ^= 1 << Math.floor(Math.random() * 8);
          this.corrupted++;
        }
        if (this.delayMs > 0 || this.jitterMs > 0 || backlog > 0) {
          // later chunks never overtake earlier ones: each is due no earlier than the one before
          due = Math.max(due, performance.now() + this.delayMs + Math.random() * this.jitterMs);
          const at = due;
          delayed = delayed.then(async () => {
            const wait = at - performance.now();
            if (wait > 0) await new Promise((r) => setTimeout(r, wait));
            let w = 0;
            while (w < chunk.length) w += await to.write(chunk.subarray(w));
          });
          backlog++;
          delayed.then(() => backlog--, () => backlog--);
          // bounded: a slow link is slow, it does not buffer without limit
          while (backlog > 64) await delayed;
          continue;
        }
        let at = 0;
        while (at < n) at += await to.write(chunk.subarray(at));
      }
      await delayed;
    } catch { /* either side closed */ }
    try {
      to.close();
    } catch { /* closed */ }
  }

  cut(): void {
    this.paused = true;
  }

  heal(): void {
    this.paused = false;
    for (const r of this.resume.splice(0)) r();
  }

  close(): void {
    this.heal();
    try {
      this.listener.close();
    } catch { /* closed */ }
    for (const c of this.conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
  }
}
