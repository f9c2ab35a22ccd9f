// Bundles src/app.ts into dist/app.js and copies the static files next to it.
// Deterministic: same sources and same locked packages, same bytes.
import { build } from "esbuild";
import { copyFile, mkdir } from "node:fs/promises";

await mkdir("dist", { recursive: true });
await build({
  entryPoints: ["src/app.ts"],
  outfile: "dist/app.js",
  bundle: true,
  format: "esm",
  target: ["es2022"],
  minify: true,
  legalComments: "none",
  logLevel: "warning",
});
await copyFile("src/index.html", "dist/index.html");
await copyFile("src/style.css", "dist/style.css");
await copyFile("src/favicon.svg", "dist/favicon.svg");
