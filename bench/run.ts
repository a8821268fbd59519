// `deno task bench [NAME…]`: runs the named benchmarks (all by default) one after
// the other; each prints its table and rewrites its section of docs/benchmarks.md.
import { ensureSetup } from "../tests/lib/setup.ts";

const all = ["capture", "replication", "recovery", "switch", "detector-qos", "points"];
// run only when named (no section of their own): the full-recovery rounds alone with CPU per
// thread; a lone write's time to a site's acknowledgement; what one and two parallel syncs cost on
// this disk; the CPU per write of each process at a fixed rate; where the two-site lag builds up
const extra = ["recovery-full", "lone-record", "sync-pair", "site-cost", "lag-trace"];
const names = Deno.args.length > 0 ? Deno.args : all;
await ensureSetup();
for (const n of names) {
  if (!all.includes(n) && !extra.includes(n)) {
    console.error(`unknown benchmark "${n}" (one of ${[...all, ...extra].join(", ")})`);
    Deno.exit(2);
  }
  console.log(`\n=== bench ${n}`);
  const st = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(`./${n}.ts`, import.meta.url).pathname],
    stdout: "inherit",
    stderr: "inherit",
  }).spawn().status;
  if (!st.success) Deno.exit(1);
}
