// A remote gateway's site listener on 127.0.0.1 with stand-ins behind it, and the key pairs of
// the two sites in dir: the local site "prod" is trusted by the remote site "dr".
import { keygen } from "./cluster.ts";
import { type Identity, loadIdentity } from "../../src/transport/identity.ts";
import { SiteServer, type SiteServerOptions } from "../../src/replication/site-link.ts";

export async function startSiteServer(
  dir: string,
  o: Pick<SiteServerOptions, "newReceiver" | "requests">,
): Promise<{ server: SiteServer; local: Identity; remoteFp: string }> {
  const localFp = await keygen(`${dir}/local`, "prod");
  const remoteFp = await keygen(`${dir}/remote`, "dr");
  const server = new SiteServer({
    hostname: "127.0.0.1",
    port: 0,
    identity: await loadIdentity(`${dir}/remote`),
    trusted: new Map([[localFp, "prod"]]),
    site: "dr",
    hashes: () => Promise.reject(new Error("no hashes here")),
    ...o,
  });
  await server.start();
  return { server, local: await loadIdentity(`${dir}/local`), remoteFp };
}
