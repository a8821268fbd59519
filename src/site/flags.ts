// The remote gateway's command-line flags (`continuum --role remote-gateway --help`).
import { gatewayStateFlags } from "../cli/state-flags.ts";
import type { FlagSpec } from "../cli/flags.ts";

export const remoteGatewayFlags: FlagSpec[] = [
  { name: "id", type: "string", description: "name of this site", default: "dr" },
  {
    name: "data-dir",
    type: "string",
    description: "state directory (database, journal, replicas, keys, API token)",
    default: "/var/lib/continuum/remote",
    placeholder: "DIR",
  },
  {
    name: "listen",
    type: "string",
    description: "where local gateways connect (the sealed site link)",
    default: "127.0.0.1:7900",
    placeholder: "ADDR",
  },
  {
    name: "key-dir",
    type: "string",
    description: "this site's key pair (made by `continuum keygen`) [default: DATA-DIR/keys]",
    placeholder: "DIR",
  },
  {
    name: "trust",
    type: "string",
    multiple: true,
    description: "a local site allowed to stream here, pinned by its fingerprint",
    placeholder: "NAME=FINGERPRINT",
  },
  {
    name: "agent-listen",
    type: "string",
    multiple: true,
    description: "where this site's standby agents connect",
    default: ["127.0.0.1:7801"],
    placeholder: "ADDR",
  },
  {
    name: "agent-secret",
    type: "string",
    multiple: true,
    description: "a standby agent allowed to connect and the file holding its secret",
    placeholder: "NAME=FILE",
  },
  {
    name: "ack-after",
    type: "string",
    description: "acknowledge a record once applied to the replica (rgp) or also to the standby server (rsp)",
    choices: ["rgp", "rsp"],
    default: "rsp",
  },

  {
    name: "replica-dir",
    type: "string",
    description: "directory of the replica images [default: DATA-DIR/replicas]",
    placeholder: "DIR",
  },
  {
    name: "sync-chunk",
    type: "size",
    description: "chunk size when a standby copy is synchronised",
    default: "1M",
  },
  {
    name: "retention",
    type: "duration",
    description: "how long every point of each replica is kept (0: no retention; e.g. 24h)",
    default: "0",
  },
  {
    name: "retention-size",
    type: "size",
    description: "space bound of each volume's retention log (the oldest points expire beyond it)",
    default: "10G",
  },
  {
    name: "retention-dir",
    type: "string",
    description: "directory of the retention logs and base images [default: DATA-DIR/retention]",
    placeholder: "DIR",
  },
  {
    name: "http-listen",
    type: "string",
    description: "HTTP API address (HOST:PORT, port 0 picks one)",
    default: "127.0.0.1:7881",
    placeholder: "ADDR",
  },
  {
    name: "test-listen",
    type: "string",
    description:
      "where failover test copies are exported over NBD while a test runs (HOST:PORT, port 0 picks one, or unix:PATH)",
    default: "127.0.0.1:0",
    placeholder: "ADDR",
  },
  ...gatewayStateFlags,
];
