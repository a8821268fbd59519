// The drill orders at the remote site and at its standby agent, with fakes: the standby runs its
// promotion hook with the test copy's export in the environment, waits for its service check and
// answers; it refuses orders it cannot carry out (no export, promoted, no service check, a drill
// already running) with the reason; the site relays an order only for a test of the asking site.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { StandbyDrills } from "../src/drills/standby.ts";
import { siteDrill } from "../src/drills/site.ts";
import type { TestCopy } from "../src/failover/test-copies.ts";

const t = suite("drill orders");

function standby(o: { promoted?: boolean; check?: boolean; hookFails?: boolean } = {}) {
  const hooks: { flag: string; env: Record<string, string> }[] = [];
  const sent: Record<string, unknown>[] = [];
  const d = new StandbyDrills({
    hook: (flag, env) => {
      hooks.push({ flag, env });
      return o.hookFails ? Promise.reject(new Error(`--${flag} exited with code 1`)) : Promise.resolve();
    },
    waitHealthy: o.check === false ? undefined : () => Promise.resolve(),
    promoted: () => o.promoted === true,
    send: (m) => sent.push(m),
  });
  const answer = async (n: number) => {
    while (sent.length < n) await new Promise((r) => setTimeout(r, 5));
    return sent[n - 1];
  };
  return { d, hooks, sent, answer };
}

const up = {
  type: "drill-up",
  id: 7,
  export: "nbd://127.0.0.1:4000/test-a1-vol0",
  volume: "vol0",
  timeoutMs: 5000,
};

t(
  "drill-up runs --on-promote with the copy's export and answers once the check passes; drill-down stops it",
  async () => {
    const s = standby();
    assert.ok(s.d.order(up));
    assert.equal(await s.answer(1), {
      type: "drill-ready",
      id: 7,
      ok: true,
      checkMs: (s.sent[0] as { checkMs: number }).checkMs,
    });
    assert.equal(s.hooks, [{
      flag: "on-promote",
      env: { CONTINUUM_DRILL: "1", CONTINUUM_EXPORT: up.export, CONTINUUM_VOLUME: "vol0" },
    }]);
    assert.ok(s.d.order({ ...up, type: "drill-down", id: 8 }));
    assert.equal(await s.answer(2), { type: "drill-stopped", id: 8, ok: true });
    assert.equal(s.hooks.map((h) => h.flag), ["on-promote", "on-demote"]);
    assert.not.ok(s.d.order({ type: "promote" }), "other orders are not drills");
  },
);

t("orders it cannot carry out are refused with the reason", async () => {
  const bad = standby();
  bad.d.order({ ...up, export: "http://x" });
  assert.equal(await bad.answer(1), {
    type: "drill-ready",
    id: 7,
    ok: false,
    error: "the drill order has no NBD export",
  });
  bad.d.order({ ...up, volume: "../etc" });
  assert.match(String((await bad.answer(2) as { error: string }).error), /no volume name/);
  assert.equal(bad.hooks, [], "nothing ran");

  const promoted = standby({ promoted: true });
  promoted.d.order(up);
  assert.match(String((await promoted.answer(1) as { error: string }).error), /this standby is promoted/);

  const blind = standby({ check: false });
  blind.d.order(up);
  assert.match(String((await blind.answer(1) as { error: string }).error), /no --service-check/);

  const failing = standby({ hookFails: true });
  failing.d.order(up);
  assert.equal(await failing.answer(1), {
    type: "drill-ready",
    id: 7,
    ok: false,
    error: "--on-promote exited with code 1",
  });
  failing.d.order({ ...up, id: 9 });
  assert.match(
    String((await failing.answer(2) as { error: string }).error),
    /a drill already runs on this standby/,
  );
  failing.d.order({ ...up, type: "drill-down", id: 10 });
  await failing.answer(3);
  assert.equal(
    failing.hooks.map((h) => h.flag),
    ["on-promote", "on-demote"],
    "what the failed hook started is stopped",
  );
});

t("the site relays an order for its own running test only", async () => {
  const copy: TestCopy = {
    id: "t1",
    site: "prod",
    task: "db",
    volume: "a1/vol0",
    seq: 3,
    time: 0,
    size: 512,
    export: "nbd+unix:///test-a1-vol0?socket=/run/t.sock",
    started: 0,
    expires: 0,
  };
  const asked: unknown[] = [];
  const deps = {
    find: (site: string, id: string) => site === "prod" && id === "t1" ? copy : undefined,
    connected: (agent: string) => agent === "a1",
    ask: (agent: string, order: Record<string, unknown>, timeoutMs: number) => {
      asked.push({ agent, order, timeoutMs });
      return Promise.resolve({ ok: true, checkMs: 12 });
    },
  };
  assert.equal(await siteDrill(deps, "prod", { type: "drill-up", test: "t1", timeoutMs: 3000 }), {
    ok: true,
    checkMs: 12,
  });
  assert.equal(asked, [{
    agent: "a1",
    order: { type: "drill-up", export: copy.export, volume: "vol0", timeoutMs: 3000 },
    timeoutMs: 13_000,
  }]);
  assert.equal(await siteDrill(deps, "other", { type: "drill-up", test: "t1" }), {
    ok: false,
    error: "no failover test t1 of site other here",
  });
  assert.equal(
    await siteDrill({ ...deps, connected: () => false }, "prod", { type: "drill-down", test: "t1" }),
    {
      ok: false,
      error: "the standby agent a1 is not connected",
    },
  );
});

t.run();
