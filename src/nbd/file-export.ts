// A writable NBD export of a plain image file (a failover test's discardable copy): every
// request goes straight to the file, nothing is captured or replicated.
import * as native from "../native/mod.ts";
import type { NbdExport } from "./server.ts";
import type { Volume } from "../volume/volume.ts";

export function fileExport(name: string, volume: Volume, description: string): NbdExport {
  const fd = volume.fd;
  const durable = (fua: boolean) => fua ? native.fdatasync(fd) : Promise.resolve();
  return {
    name,
    size: volume.size,
    readOnly: false,
    description,
    async read(offset, into) {
      const n = await volume.read(offset, into);
      if (n < into.length) into.fill(0, n);
    },
    async write(offset, data, fua) {
      await native.pwrite(fd, data, offset);
      await durable(fua);
    },
    async trim(offset, length, fua) {
      await native.punchHole(fd, offset, length);
      await durable(fua);
    },
    async writeZeroes(offset, length, fua, mayTrim) {
      // fallocate refuses a zero length, which NBD allows
      if (length > 0) await native.writeZeroes(fd, offset, length, mayTrim);
      await durable(fua);
    },
    flush: () => native.fdatasync(fd),
  };
}
