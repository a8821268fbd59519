// One name pattern (src/names.ts) at every gate where a name comes in: the API's schemas, the
// links' messages, the requests between sites, the flags. Files and directories are named after
// names (mirror images, retention logs), so "." and ".." are refused everywhere, and a name made
// of other dots is still a name.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { AGENT_NAME_RE, NAME_RE, VOLUME_KEY_RE } from "../src/names.ts";
import { heldPointSchema, nameSchema } from "../src/tasks/model.ts";
import { name128, name64 } from "../src/wire/control.ts";
import { parsePoint } from "../src/retention/site.ts";
import { parseSource } from "../src/recovery/service.ts";
import { parseAssignment } from "../src/capture/assignments.ts";
import { pairs } from "../src/cli/common.ts";

const t = suite("names");

const accepts = (name: string): Record<string, boolean> => {
  const ok = (f: () => unknown) => {
    try {
      f();
      return true;
    } catch {
      return false;
    }
  };
  return {
    NAME_RE: NAME_RE.test(name),
    AGENT_NAME_RE: AGENT_NAME_RE.test(name),
    "volume key's agent": VOLUME_KEY_RE.test(`${name}/vol0`),
    "volume key's name": VOLUME_KEY_RE.test(`app1/${name}`),
    nameSchema: nameSchema.safeParse(name).success,
    heldPointSchema: heldPointSchema.safeParse(name).success,
    name64: name64.safeParse(name).success,
    name128: name128.safeParse(name).success,
    parsePoint: ok(() => parsePoint(name)),
    parseSource: ok(() => parseSource(`rgp@${name}`)),
    parseAssignment: typeof parseAssignment({ name, path: "/dev/sdb", size: 4096 }) !== "string",
    "--flag NAME=VALUE": ok(() => pairs("service", [`${name}=x`])),
  };
};

t('".", ".." and "__proto__" are refused at every gate', () => {
  for (const name of [".", "..", "__proto__"]) {
    for (const [gate, ok] of Object.entries(accepts(name))) assert.not.ok(ok, `${gate} accepted "${name}"`);
  }
});

t("other names of letters, digits and . _ - are names at every gate", () => {
  for (const name of ["...", ".hidden", "a..b", "db-1.vol_0", "__proto", "proto__", "x".repeat(64)]) {
    for (const [gate, ok] of Object.entries(accepts(name))) assert.ok(ok, `${gate} refused "${name}"`);
  }
  assert.not.ok(NAME_RE.test("x".repeat(65)));
  assert.ok(AGENT_NAME_RE.test("x".repeat(128)));
  assert.not.ok(VOLUME_KEY_RE.test("a/b/c"));
  assert.equal(parseSource("rsp@dr-2"), { kind: "rsp", site: "dr-2" });
});

t.run();
