// An agent announcing a volume on its link (an Open frame, src/link/gateway-listener.ts openSchema):
// a malformed announcement is refused by its id (when it has a usable one) with an error naming
// the field; the session stays up and a well-formed one after it opens.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { Gateway, tempDir, writeSecret } from "./lib/cluster.ts";
import { LinkClient } from "./lib/link-client.ts";
import { decodeJson, FRAME_HEADER, FrameType, jsonFrame } from "../src/wire/frames.ts";
import { openSchema } from "../src/link/gateway-listener.ts";
import { parseFrame } from "../src/wire/site-frames.ts";
import { readSecretFile } from "../src/wire/secret-file.ts";

const t = suite("gateway: an agent's Open frame");

t("the Open frames the agents send parse; malformed ones are FrameErrors naming the field", () => {
  const parse = (raw: unknown) => parseFrame(openSchema, "volume description", raw);
  // a captured volume (native/agent.c) and a standby's copy (src/capture/native-agent.ts)
  assert.equal(parse({ id: 0, name: "vol0", size: 4096 }), { id: 0, name: "vol0", size: 4096 });
  const standby = { id: 3, name: "vol0", size: 4096, standby: true, lastSeq: 7, state: "inconsistent" };
  assert.equal(parse(standby), standby);
  for (
    const [raw, field] of [
      [{ id: -1, name: "vol0", size: 4096 }, /^malformed volume description: id:/],
      [{ id: 2 ** 32, name: "vol0", size: 4096 }, /id:/],
      [{ id: 1, name: "../x", size: 4096 }, /name: must be 1 to 64/],
      [{ id: 1, name: "vol0", size: "4096" }, /size:/],
      [{ id: 1, name: "vol0", size: 0 }, /size:/],
      [{ id: 1, name: "vol0", size: 4096, standby: true, state: "fine" }, /state:/],
      [{ id: 1, name: "vol0", size: 4096, standby: true, lastSeq: -2 }, /lastSeq:/],
      [null, /\(message\)/],
    ] as [unknown, RegExp][]
  ) {
    assert.throws(() => parse(raw), (e: Error) => field.test(e.message), JSON.stringify(raw));
  }
});

t("a live gateway refuses a malformed Open by its id with the reason, and the session goes on", async () => {
  const dir = await tempDir("gateway-open");
  await writeSecret(`${dir}/a1.secret`);
  const secret = readSecretFile(`${dir}/a1.secret`);
  const gw = await new Gateway({ dir, agents: { a1: `${dir}/a1.secret` } }).start();
  let link: LinkClient | undefined;
  try {
    link = await LinkClient.connect(gw.socket, "a1", secret);
    const opened = async () => {
      for (;;) {
        const f = await link!.next();
        if (!f) throw new Error("the session ended");
        if (f.type === FrameType.Opened) return decodeJson<{ id: number | null; error?: string }>(f.body);
      }
    };
    await link.send(jsonFrame(FrameType.Open, { id: 1, name: "../x", size: 4096 }));
    const bad = await opened();
    assert.is(bad.id, 1, "answered by its id");
    assert.match(bad.error ?? "", /^malformed volume description: name: must be 1 to 64/);

    await link.send(jsonFrame(FrameType.Open, { id: "one", name: "vol0", size: 4096 }));
    const noId = await opened();
    assert.is(noId.id, null, "no id to answer by");
    assert.match(noId.error ?? "", /id:/);

    // not JSON at all
    const junk = new TextEncoder().encode("{not json");
    const frame = new Uint8Array(FRAME_HEADER + junk.length);
    new DataView(frame.buffer).setUint32(0, 1 + junk.length);
    frame[4] = FrameType.Open;
    frame.set(junk, FRAME_HEADER);
    await link.send(frame);
    assert.ok((await opened()).error, "refused");

    await link.send(jsonFrame(FrameType.Open, { id: 2, name: "vol0", size: 64 * 1024 }));
    const fine = await opened();
    assert.is(fine.error, undefined, "the session went on: a well-formed one opens");
  } finally {
    link?.close();
    await gw.proc.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

t.run();
