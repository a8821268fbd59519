// A protected volume on local storage: a regular file or a block device, opened
// once; its fd is used by the native positional I/O calls.
import { closeSync, openSync } from "node:fs";
import * as native from "../native/mod.ts";

export class Volume {
  private constructor(
    readonly path: string,
    readonly fd: number,
    readonly size: number,
    readonly blockDevice: boolean,
  ) {}

  /** Opens an existing volume. Missing paths and unreadable devices are clear errors. */
  static open(path: string, opts: { readOnly?: boolean } = {}): Volume {
    let fd: number;
    try {
      fd = openSync(path, opts.readOnly ? "r" : "r+");
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === "ENOENT") throw new Error(`volume ${path} does not exist`);
      if (code === "EACCES" || code === "EPERM") throw new Error(`volume ${path}: permission denied`);
      throw new Error(`volume ${path}: ${(e as Error).message}`);
    }
    const blockDevice = native.isBlockDevice(fd);
    const size = native.fileSize(fd);
    return new Volume(path, fd, size, blockDevice);
  }

  /** Creates (or extends) a sparse regular file of `size` bytes and opens it. */
  static createSparse(path: string, size: number): Volume {
    // owner-only: a mirror or replica image is a full copy of the protected data, and
    // --mirror-dir / --replica-dir may lie outside the 0700 data directory (was 0644;
    // tests/security-files.test.ts checks it)
    const fd = openSync(path, "a+", 0o600);
    closeSync(fd);
    const file = Deno.openSync(path, { read: true, write: true });
    if (file.statSync().size < size) file.truncateSync(size);
    file.close();
    return Volume.open(path);
  }

  read(offset: number, into: Uint8Array): Promise<number> {
    return native.pread(this.fd, into, offset);
  }

  close(): void {
    try {
      closeSync(this.fd);
    } catch { /* closed already */ }
  }
}
