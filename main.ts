// Continuum: one executable, three roles. See README.md.
import { main } from "./src/cli/main.ts";

Deno.exit(await main(Deno.args));
