// Service switch benchmark: `deno task bench switch [RUNS]` (root: network
// namespaces). The failover test's lab, RUNS times (default 10): the app's service
// stops, the client (polling every 50 ms) measures the outage until the remote site
// answers; then the remote writes, failback brings the data home and the client
// measures the outage until the local service answers again.
import { machine, median, writeSection } from "./lib.ts";
import { FailoverLab, Poller, writeServiceText } from "../tests/lib/failover-lab.ts";
import { waitFor } from "../tests/lib/cluster.ts";

const RUNS = Number(Deno.args[0] ?? 10);

const failover: number[] = [], failback: number[] = [], windows: number[] = [];
for (let i = 0; i < RUNS; i++) {
  const lab = await new FailoverLab().start({ sizeMiB: 64, serviceOnUnfence: true });
  const poller = new Poller(lab);
  try {
    await writeServiceText(`${lab.dir}/agent/nbd.sock`, `run ${i}`);
    await waitFor(() => poller.answers().some((a) => a.ok && a.body === `local: run ${i}`), 30_000, "local");
    await new Promise((r) => setTimeout(r, 2000)); // the detector has a window of heartbeats
    await lab.appService!.stop();
    await waitFor(() => poller.outage("local", "dr1"), 30_000, "the remote to answer");
    const o = poller.outage("local", "dr1")!.ms;
    await writeServiceText(`${lab.dir}/standby/nbd.sock`, `run ${i} at dr1`);
    const started = Date.now();
    const { status, body } = await lab.failback();
    if (status !== 200 || !body.report) throw new Error(`failback: ${JSON.stringify(body)}`);
    await waitFor(() => poller.outage("dr1", "local", started), 30_000, "the local service to answer");
    const b = poller.outage("dr1", "local", started)!.ms;
    console.log(
      `run ${i + 1}: failover outage ${o} ms, failback outage ${b} ms (window ${body.report!.windowMs} ms)`,
    );
    failover.push(o);
    failback.push(b);
    windows.push(body.report!.windowMs);
  } finally {
    await poller.stop();
    await lab.stop();
  }
}

const row = (name: string, xs: number[]) =>
  `| ${name} | ${median(xs).toFixed(0)} | ${Math.min(...xs)} | ${Math.max(...xs)} |`;
const table = [
  "| outage seen by the client (ms) | median | min | max |",
  "| --- | --- | --- | --- |",
  row("failover: app service stopped → remote answers", failover),
  row("failback: remote frozen → local answers (client)", failback),
  row("failback: switch window measured by the gateway", windows),
].join("\n");
console.log(`\n${table}`);
await writeSection(
  "switch",
  `## Service switch (\`deno task bench switch\`)

${await machine()}. ${RUNS} runs of the failover test's lab (network namespaces; heartbeats every 100 ms,
α = 200 ms; a 64 MiB volume). The client polls the service address every 50 ms with a new TCP connection;
an outage is the time from its last good answer from one site to its first good answer from the other.
Failback includes the remote's demotion, the verified final recovery of the volume and the mirror, the local
service's start by the agent's \`--on-unfence\` hook and the DNAT rule's removal.

${table}

Targets: failover under 3 s (failover issue), failback switch-back under 5 s (recovery issue).`,
);
