// Bundle NiiVue (from the locked npm packages) into one ES module served by the annotation server:
// src/sarcomakit/server/static/niivue.js. Nothing is loaded from a CDN at run time.
// Run with `make web` (npm ci && npm run build); the built file is committed so users need no Node.js.
import { build } from "esbuild";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
await build({
  entryPoints: [path.join(here, "niivue-entry.js")],
  bundle: true,
  format: "esm",
  minify: true,
  target: "es2020",
  legalComments: "eof",
  outfile: path.join(here, "..", "src", "sarcomakit", "server", "static", "niivue.js"),
  logLevel: "info",
});
