// Run with --v8-flags=--expose-gc by tests/nbd-heap.test.ts: an in-process NBD server
// with an in-memory export and a client on the same connection; prints the JS heap
// after a full GC, after a warm-up and after N more requests, as JSON.
import { NbdServer } from "../../src/nbd/server.ts";
import { NbdClient } from "./nbd-client.ts";

const n = Number(Deno.args[0] ?? 40_000);
const gc = (globalThis as unknown as { gc: () => void }).gc;
const dir = await Deno.makeTempDir({ prefix: "nbd-heap-" });
const image = new Uint8Array(1 << 20);
const server = await NbdServer.listen({
  unixPath: `${dir}/nbd.sock`,
  exports: () => [{
    name: "mem",
    size: image.length,
    readOnly: false,
    read: (off, into) => Promise.resolve(into.set(image.subarray(off, off + into.length))),
    write: (off, data) => Promise.resolve(image.set(data, off)),
    trim: () => Promise.resolve(),
    writeZeroes: (off, len) => Promise.resolve(void image.fill(0, off, off + len)),
    flush: () => Promise.resolve(),
  }],
});
const client = await NbdClient.connect(`${dir}/nbd.sock`);
await client.go("mem");
const block = new Uint8Array(4096).fill(7);
/** `count` writes, 16 in flight. */
async function load(count: number): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (next < count) {
      const i = next++;
      await client.write((i % 256) * 4096, block);
    }
  }));
}
const heap = () => {
  gc();
  gc();
  return Deno.memoryUsage().heapUsed;
};
await load(5000);
const before = heap();
await load(n);
const after = heap();
console.log(JSON.stringify({ requests: n, before, after, perRequest: (after - before) / n }));
await client.disconnect();
await server.close();
await Deno.remove(dir, { recursive: true });
