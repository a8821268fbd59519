// The NBD server (native/nbd.c): fixed newstyle negotiation and the transmission phase run on
// native threads, many requests in flight per connection, replies matched by handle. An
// export is a plain file (a standby's copy read-only, a failover test's copy writable) or a
// captured volume of an agent, whose every write becomes a record.
import { check, cstr, fromCstr, native } from "../native/ffi.ts";
import { Plane } from "../native/plane.ts";
import type { NativeAgent } from "../capture/native-agent.ts";

export interface NbdListen {
  unixPath?: string;
  tcp?: { hostname: string; port: number };
}

export class NbdServer {
  private closed = false;

  private constructor(
    private readonly ptr: Deno.PointerValue,
    private readonly plane: Plane,
    readonly tcpPort: number | undefined,
  ) {}

  static async listen(opts: NbdListen): Promise<NbdServer> {
    if (!opts.unixPath && !opts.tcp) throw new Error("NBD server needs a Unix socket path or a TCP address");
    const plane = new Plane();
    const port = new Int32Array(1);
    const err = new Uint8Array(512);
    const tcp = opts.tcp
      ? `${opts.tcp.hostname.includes(":") ? `[${opts.tcp.hostname}]` : opts.tcp.hostname}:${opts.tcp.port}`
      : "";
    const ptr = await native().cn_nbd_new(
      plane.ptr,
      cstr(opts.unixPath ?? ""),
      cstr(tcp),
      new Uint8Array(port.buffer),
      err,
      BigInt(err.length),
    );
    if (!ptr) {
      await plane.close();
      throw new Error(fromCstr(err));
    }
    return new NbdServer(ptr, plane, opts.tcp ? port[0] : undefined);
  }

  /** Exports a file or device (its fd stays the caller's until the export is withdrawn). */
  exportFile(name: string, fd: number, size: number, readOnly: boolean, description = ""): void {
    if (this.closed) throw new Error("the NBD server is stopping");
    check(
      `export ${name}`,
      native().cn_nbd_export_file(
        this.ptr,
        cstr(name),
        fd,
        BigInt(size),
        readOnly ? 1 : 0,
        cstr(description),
      ),
    );
  }

  /** Exports a captured volume: every write through it is intercepted. */
  exportVolume(name: string, agent: NativeAgent, linkId: number, description = ""): void {
    if (this.closed) throw new Error("the NBD server is stopping");
    check(
      `export ${name}`,
      native().cn_nbd_export_volume(this.ptr, cstr(name), agent.ptr, linkId, cstr(description)),
    );
  }

  /**
   * Withdraws an export: requests in flight are answered, later ones get ESHUTDOWN (the spec's
   * "server shutting down", so a client disconnects cleanly), and each connection closes once
   * its client leaves or after a short grace. Resolves once they are closed.
   */
  async withdraw(name: string): Promise<void> {
    if (this.closed) return;
    await native().cn_nbd_withdraw(this.ptr, cstr(name));
  }

  /** Stops accepting, answers requests already in flight, then closes connections. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await native().cn_nbd_close(this.ptr);
    await this.plane.close();
  }
}
