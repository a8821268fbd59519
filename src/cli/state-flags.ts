// The flags of a gateway's durable state, the same for the local and the remote gateway: its
// database and its journal buffer.
import { str } from "./common.ts";
import type { FlagSpec, Parsed } from "./flags.ts";

export const gatewayStateFlags: FlagSpec[] = [
  {
    name: "database",
    type: "string",
    description: "libsql database URL (file:PATH or libsql://…) [default: file:DATA-DIR/gateway.db]",
    placeholder: "URL",
  },
  {
    name: "database-token",
    type: "string",
    description: "auth token for a libsql server URL",
    placeholder: "TOKEN",
  },
  {
    name: "buffer",
    type: "string",
    description: "journal buffer file or device [default: DATA-DIR/journal.ring]",
    placeholder: "PATH",
  },
  {
    name: "buffer-size",
    type: "size",
    description: "journal buffer size when it is a file created here",
    default: "1G",
  },
  {
    name: "buffer-init",
    type: "string",
    choices: ["zeroes", "reserve"],
    // a reserved (fallocated) block is an unwritten extent until its first write: that write's
    // sync also commits the filesystem's journal, which slowed flushes until the ring's first lap
    description: "how a journal buffer file created here is made: written through once with zeroes " +
      "(syncs need no allocation from the start) or only reserved (quick to create)",
    default: "zeroes",
  },
  {
    name: "commit-delay",
    type: "duration",
    description: "longest wait before an unforced group commit",
    default: "100ms",
  },
  {
    name: "commit-idle",
    type: "duration",
    // the sites receive only committed records: a lone write would otherwise wait --commit-delay here
    // and again at the site before its replication is acknowledged
    description: "commit at once when the incoming writes pause this long",
    default: "2ms",
  },
];

/** Whether a journal buffer file created here is written through once (`--buffer-init zeroes`). */
export function writesRingThrough(p: Parsed): boolean {
  return str(p, "buffer-init") === "zeroes";
}
