// The service switch on a real (namespaced) gateway: client ─ gw ─ remote. A request to
// the service address on gw answers "local" until a switch DNATs it to the remote
// site, and again after failback; applying is idempotent and reconciliation repairs a
// crashed or hand-edited nat table.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need, which } from "./lib/env.ts";
import { httpGet, NetLab } from "./lib/netns.ts";
import { setLogSink } from "../src/log.ts";
import {
  applySwitches,
  clearSwitches,
  dropServiceFlows,
  readSwitches,
  type SwitchOptions,
} from "../src/switch/iptables.ts";
import { reconcile } from "../src/switch/reconcile.ts";
import { type Switch, switchRules } from "../src/switch/rules.ts";

const t = suite("switch: DNAT to a remote site in network namespaces");
const lab = new NetLab();
const client = lab.name("client");
const gw = lab.name("gw");
const remote = lab.name("remote");
const opts: SwitchOptions = { netns: gw };
const SERVICE = "http://10.99.1.1:8080/";

const sw: Switch = {
  id: "web",
  protocol: "tcp",
  service: { address: "10.99.1.1", port: 8080 },
  target: { address: "10.99.2.2", port: 8080 },
};

const logs: string[] = [];

/** The nat table as iptables-save prints it, without the timestamped comment lines. */
async function natTable(variant = "nft"): Promise<string> {
  const text = await lab.run(gw, [`iptables-${variant}-save`, "-t", "nat"]);
  return text.split("\n").filter((l) => !l.startsWith("#")).join("\n");
}

const iptables = (...args: string[]) => lab.run(gw, ["iptables", "-t", "nat", ...args]);

async function expectAnswers(text: string, why: string): Promise<void> {
  assert.is(await httpGet(client, SERVICE), text, `from the client: ${why}`);
  assert.is(await httpGet(gw, SERVICE), text, `from the gateway itself: ${why}`);
}

function defineTests(): void {
  t.before(async () => {
    setLogSink((line) => logs.push(line));
    try {
      for (const tag of ["client", "gw", "remote"]) await lab.addNs(tag);
      await lab.link({ ns: client, ifname: "c0", cidr: "10.99.1.2/24" }, {
        ns: gw,
        ifname: "g0",
        cidr: "10.99.1.1/24",
      });
      await lab.link({ ns: gw, ifname: "g1", cidr: "10.99.2.1/24" }, {
        ns: remote,
        ifname: "r0",
        cidr: "10.99.2.2/24",
      });
      // No route back from remote to the client's subnet: replies only find the way
      // because the gateway masquerades the switched flows.
      await lab.responder(gw, "10.99.1.1", 8080, "local");
      await lab.responder(remote, "10.99.2.2", 8080, "remote");
    } catch (e) {
      await lab.destroy();
      throw e;
    }
  });

  t.after(async () => {
    await lab.destroy();
  });

  t(
    "before any switch the service answers locally; the remote is not reachable from the client",
    async () => {
      await expectAnswers("local", "no switch");
      assert.match(await httpGet(client, "http://10.99.2.2:8080/", 1000), /^error/);
    },
  );

  t(
    "switch: client and gateway traffic reach the remote site; forwarding on in the namespace only",
    async () => {
      const hostForward = await Deno.readTextFile("/proc/sys/net/ipv4/ip_forward");
      const state = await applySwitches([sw], opts);
      assert.equal(state.rules.sort(), switchRules(sw).sort());
      assert.equal(state.jumps, { PREROUTING: 1, OUTPUT: 1, POSTROUTING: 1 });
      await expectAnswers("remote", "switched");
      assert.is((await lab.run(gw, ["cat", "/proc/sys/net/ipv4/ip_forward"])).trim(), "1");
      assert.is(await Deno.readTextFile("/proc/sys/net/ipv4/ip_forward"), hostForward, "host untouched");
    },
  );

  t("applying the same set again changes nothing", async () => {
    const before = await natTable();
    await applySwitches([sw], opts);
    await applySwitches([sw], opts);
    assert.is(await natTable(), before);
    assert.equal((await readSwitches(opts)).rules.sort(), switchRules(sw).sort());
  });

  t("conntrack flows of the service can be dropped when the tool exists", async () => {
    assert.is(await dropServiceFlows([sw], opts), which("conntrack"));
  });

  t("failback: applying [] answers locally again and leaves the chains empty but hooked", async () => {
    const state = await applySwitches([], opts);
    assert.equal(state.rules, []);
    assert.equal(state.jumps, { PREROUTING: 1, OUTPUT: 1, POSTROUTING: 1 });
    await expectAnswers("local", "after failback");
    const before = await natTable();
    await applySwitches([], opts);
    assert.is(await natTable(), before, "idempotent when empty too");
  });

  t("after a crash: stale rules and duplicate jumps are removed by reconcile([])", async () => {
    await applySwitches([sw], opts);
    await iptables(
      "-A",
      "CONTINUUM-PRE",
      ..."-d 10.99.1.1/32 -p tcp -m tcp --dport 9090 -m comment --comment continuum:ghost".split(" "),
      ..."-j DNAT --to-destination 10.99.2.2:9090".split(" "),
    );
    await iptables("-A", "PREROUTING", "-j", "CONTINUUM-PRE");
    await iptables("-I", "OUTPUT", "1", "-o", "g1", "-j", "CONTINUUM-PRE");
    logs.length = 0;
    const summary = await reconcile([], opts);
    assert.is(summary.added.length, 0);
    assert.is(summary.removed.length, 5, JSON.stringify(summary.removed));
    assert.ok(summary.removed.some((l) => l.includes("continuum:ghost")));
    const state = await readSwitches(opts);
    assert.equal(state.rules, []);
    assert.equal(state.strays, []);
    assert.equal(state.jumps, { PREROUTING: 1, OUTPUT: 1, POSTROUTING: 1 });
    assert.is(logs.filter((l) => l.includes("stale switch rule")).length, 5);
    assert.ok(logs.some((l) => l.includes('"task":"ghost"')), "the log names the task");
    await expectAnswers("local", "after reconciling to no switch");
  });

  t("a rule deleted by hand is put back by reconcile(recorded)", async () => {
    await applySwitches([sw], opts);
    await iptables("-D", "CONTINUUM-PRE", "1");
    await expectAnswers("local", "rule deleted by hand");
    const summary = await reconcile([sw], opts);
    assert.equal(summary.added, [switchRules(sw)[0]]);
    assert.equal(summary.removed, []);
    assert.is(summary.unchanged.length, 4);
    await expectAnswers("remote", "after reconciling");
  });

  t("clearSwitches removes chains and jumps; other rules stay", async () => {
    await iptables("-A", "POSTROUTING", "-s", "10.99.9.0/24", "-j", "MASQUERADE");
    await clearSwitches(opts);
    const table = await natTable();
    assert.not.match(table, /CONTINUUM/);
    assert.match(table, /-A POSTROUTING -s 10\.99\.9\.0\/24 -j MASQUERADE/);
    await expectAnswers("local", "after clearing");
    await clearSwitches(opts); // nothing left to clear: no error
  });

  t("the legacy backend works the same (when installed)", async () => {
    if (!which("iptables-legacy-restore")) return;
    try {
      await natTable("legacy");
    } catch (e) {
      console.log(`\nSKIP legacy backend: ${(e as Error).message}`); // kernel without x_tables
      return;
    }
    const legacy: SwitchOptions = { ...opts, variant: "legacy" };
    await applySwitches([sw], legacy);
    assert.equal((await readSwitches(opts)).chains, [], "nothing went to nf_tables");
    await expectAnswers("remote", "switched with legacy");
    const before = await natTable("legacy");
    await applySwitches([sw], legacy);
    assert.is(await natTable("legacy"), before);
    await clearSwitches(legacy);
    assert.not.match(await natTable("legacy"), /CONTINUUM/);
    await expectAnswers("local", "cleared with legacy");
  });
}

if (need("switch in network namespaces", { root: true, tools: ["ip", "iptables", "sysctl"] })) defineTests();
else t("skipped: prerequisites missing", () => {});

t.run();
