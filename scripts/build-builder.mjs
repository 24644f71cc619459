#!/usr/bin/env node
// `npm run build:builder`: the builder as one JavaScript file, build/builder-service.mjs, which deploy/builder-service
// runs in production. esbuild bundles builder-service/main.ts and common/ into it; the npm packages it uses
// (aws4fetch, fast-xml-parser, tar-stream, valibot) stay imports from node_modules. The file sits one folder below
// the project's root, as builder-service/*.ts do, so that it finds nix/ the same way.
import { build } from "esbuild";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../", import.meta.url));

await build({
  entryPoints: [`${root}builder-service/main.ts`],
  outfile: `${root}build/builder-service.mjs`,
  bundle: true,
  platform: "node",
  format: "esm",
  // Node 20 still runs it (with a warning from the installer); 22 and 24 are the supported lines.
  target: "node20",
  packages: "external",
  sourcemap: "linked",
  logLevel: "warning",
  banner: {
    js: "// Built by scripts/build-builder.mjs from builder-service/ and common/: edit those, then npm run build:builder.",
  },
});
