// Bundles a test page (React and the AI SDK from node_modules, the hook from
// streaming_app's static files) into one ES module:
//   node build.mjs <out file> [<entry point, default react-page.jsx>]
import { build } from "esbuild";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
await build({
  entryPoints: [resolve(here, process.argv[3] ?? "react-page.jsx")],
  bundle: true,
  format: "esm",
  jsx: "automatic",
  define: { "process.env.NODE_ENV": '"development"' },
  nodePaths: [join(here, "node_modules")],
  outfile: process.argv[2],
  logLevel: "warning",
});
