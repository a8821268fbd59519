// The web UI's files: index.html (written here: it only loads the bundle) and the bundle
// dist/ui/app.js (from the checkout, or embedded in the executable). They are served without
// login — the page shows nothing but the login form until /api/session says who is logged in.
// Without a bundle, every page is a short notice saying how to build it.
import { uiDir } from "../assets/assets.ts";

export const INDEX_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>Continuum</title>
<link rel="icon" href="data:,">
<script type="module" src="/app.js"></script>
</head>
<body>
<div id="app"><noscript>Continuum's web UI needs JavaScript.</noscript></div>
</body>
</html>
`;

export const NOT_BUILT_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Continuum — web UI not built</title>
</head>
<body>
<main>
<h1>The web UI is not built</h1>
<p>This gateway runs from a checkout without the UI bundle (dist/ui/app.js). Build it with</p>
<pre>npx deno run -A src/web/ui-bundle.ts</pre>
<p>(or <code>npx deno task compile</code>, which embeds it in the executable) and reload this page.
The API under /api works without it.</p>
</main>
</body>
</html>
`;

/** The bundle's bytes, or undefined when there is none. Read per request (it is small; a rebuild shows at once). */
export async function readBundle(): Promise<Uint8Array | undefined> {
  const dir = uiDir();
  if (!dir) return undefined;
  try {
    return await Deno.readFile(`${dir}/app.js`);
  } catch {
    return undefined;
  }
}
