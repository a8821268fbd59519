// `deno task demo:failover` (root): the service switch on this machine, in network
// namespaces (client, gateway, app server, remote site). A small web service answers
// with the text stored on the protected volume; a client polls it every 50 ms. The
// demo stops the app's service (the gateway fails it over to the remote site),
// writes at the remote, then fails back with the data, printing what the client saw.
// Endpoints are printed as key=value lines; --keep leaves everything running until Ctrl-C.
import { FailoverLab, Poller, writeServiceText } from "../tests/lib/failover-lab.ts";
import { waitFor } from "../tests/lib/cluster.ts";
import { ensureSetup } from "../tests/lib/setup.ts";

if (Deno.uid() !== 0) {
  console.error("demo:failover builds network namespaces and iptables rules: run it as root");
  Deno.exit(2);
}
await ensureSetup();

const say = (s: string) => console.log(`# ${s}`);
const lab = await new FailoverLab().start({ serviceOnUnfence: true });
const poller = new Poller(lab);
let seen = 0;
const show = () => {
  const a = poller.answers();
  const fresh = a.slice(seen);
  seen = a.length;
  const last = fresh[fresh.length - 1];
  if (last) {
    say(`client: ${fresh.length} answers, the latest: ${last.ok ? last.body : last.body || "no answer"}`);
  }
};
try {
  console.log(`service=http://10.77.1.1:80 (from the client namespace ${lab.ns.client})`);
  console.log(`gateway-api=http://10.77.9.1:7880`);
  console.log(`api-token-file=${lab.dir}/gateway/api-token`);
  console.log(`lsp-image=${lab.lsp}`);
  console.log(`rsp-image=${lab.rsp}`);
  console.log(`logs=${lab.dir}`);
  await writeServiceText(`${lab.dir}/agent/nbd.sock`, "hello from the protected volume");
  await waitFor(
    () => poller.answers().some((a) => a.ok && a.body.startsWith("local: hello")),
    30_000,
    "local",
  );
  show();
  say("stopping the app's service: the gateway's detector sees it fail and switches to dr1");
  await new Promise((r) => setTimeout(r, 2000));
  await lab.appService!.stop();
  await waitFor(() => poller.outage("local", "dr1"), 30_000, "the switch");
  say(`switched: the client saw an outage of ${poller.outage("local", "dr1")!.ms} ms`);
  show();
  say("the service writes at dr1 meanwhile");
  await writeServiceText(`${lab.dir}/standby/nbd.sock`, "hello again, written at dr1");
  await new Promise((r) => setTimeout(r, 1000));
  show();
  say("failback: the data comes home while dr1 serves, then a short switch window");
  const started = Date.now();
  const { status, body } = await lab.failback();
  if (status !== 200 || !body.report) throw new Error(`failback: ${JSON.stringify(body)}`);
  await waitFor(() => poller.outage("dr1", "local", started), 30_000, "the local service");
  say(
    `back home: ${(body.report!.onlineBytes / 1048576).toFixed(1)} MiB copied online, ${
      (body.report!.finalBytes / 1048576).toFixed(1)
    } MiB in the window; the client saw an outage of ${poller.outage("dr1", "local", started)!.ms} ms`,
  );
  show();
  if (Deno.args.includes("--keep")) {
    say("running; Ctrl-C stops and removes everything");
    await new Promise<void>((res) => Deno.addSignalListener("SIGINT", res));
  }
} finally {
  await poller.stop();
  await lab.stop();
}
