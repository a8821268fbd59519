// A read-only NBD export of a local volume (a standby copy): reads are served,
// anything that would change the volume is refused with EPERM.
import { EPERM } from "./protocol.ts";
import { NbdError, type NbdExport } from "./server.ts";
import type { Volume } from "../volume/volume.ts";

export function readOnlyExport(name: string, volume: Volume, why: string): NbdExport {
  const refuse = () => Promise.reject(new NbdError(EPERM, `volume ${name} is read-only: ${why}`));
  return {
    name,
    size: volume.size,
    readOnly: true,
    description: `Continuum ${why} copy of ${name}`,
    async read(offset, into) {
      const n = await volume.read(offset, into);
      if (n < into.length) into.fill(0, n);
    },
    write: refuse,
    trim: refuse,
    writeZeroes: refuse,
    // nothing is written through this export, so nothing needs flushing
    flush: () => Promise.resolve(),
  };
}
