// A tiny application for failover tests and the failover demo: an HTTP service
// whose answer is the text stored at the start of a protected volume, read
// through NBD. It answers "SITE: TEXT", so a client can tell which site served it.
// Usage: deno run -A volume-service.ts HOST PORT NBD_SOCKET EXPORT SITE
import { NbdClient } from "./nbd-client.ts";

const [host, port, socket, exportName, site] = Deno.args;
let client: NbdClient | undefined;

async function firstBlock(): Promise<string> {
  if (!client || client.closedError) {
    client = await NbdClient.connect(socket);
    await client.go(exportName);
  }
  const b = await client.read(0, 4096);
  const end = b.indexOf(0);
  return new TextDecoder().decode(b.subarray(0, end < 0 ? b.length : end));
}

Deno.serve({ hostname: host, port: Number(port), onListen: () => console.log("ready") }, async () => {
  try {
    const text = `${site}: ${await firstBlock()}`;
    console.log(`answered ${JSON.stringify(text)}`); // a drill's service is gone before anyone else can ask
    return new Response(text);
  } catch (e) {
    client = undefined;
    return new Response(`${site}: volume unreadable: ${(e as Error).message}`, { status: 503 });
  }
});
