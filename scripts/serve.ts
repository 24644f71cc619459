// Runs the registry in the foreground with the embedded defaults: local R2 (and the build coordinators) under
// .wrangler/state, the builder writing into it (spool and job journal under .data/builder). Prints how to pull, logs
// builds, stops on Ctrl-C.
import { join } from "node:path";
import { builderStatus } from "./builder-calls.ts";
import { PROJECT_ROOT, startStack } from "./local-stack.ts";

const port = Number(process.env.PORT ?? 8787);
const builderPort = Number(process.env.BUILDER_PORT ?? 8788);
const pkgsPath = process.env.NIXERY_PKGS_PATH;
// TLS=1: https from workerd itself with Miniflare's self-signed certificate, as the edge serves it.
const tls = /^(1|true|yes)$/i.test(process.env.TLS ?? "");
// Pull authentication, to try it locally: PULL_CREDENTIALS='alice:<16 characters or more>' npm start.
const pullAuthVars = Object.fromEntries(
  (["PULL_AUTH", "PULL_CREDENTIALS"] as const).flatMap((name) => {
    const value = process.env[name];
    return value === undefined ? [] : [[name, value]];
  }),
);

const stack = await startStack({
  pkgsPath,
  port,
  builderPort,
  builderDataDir: process.env.BUILDER_DATA_DIR ?? join(PROJECT_ROOT, ".data/builder"),
  workerStateDir: join(PROJECT_ROOT, ".wrangler/state"),
  secret: process.env.BUILDER_SECRET,
  workerVars: pullAuthVars,
  onBuilderLog: (line) => console.log(`[builder] ${line}`),
  tls,
}).catch((error: unknown) => {
  // Startup problems (a taken port, a missing package set, Nix not working) are the user's to fix: the message says
  // how, and a stack trace would only bury it.
  console.error(`Could not start the registry: ${(error as Error).message ?? error}`);
  process.exit(1);
});

// The builder checks at startup that its Nix can evaluate the package set `latest` serves (nixpkgs needs a recent
// Nix): if it can't, every pull would fail, so say so now, with what to install. The signed /status says what is
// wrong; the open /ready only whether.
const status = await builderStatus(stack.builder.url, stack.secret).catch(() => null);
if (status && !status.ready && status.problem) {
  console.error(`The registry cannot build images: ${status.problem}`);
  await stack.stop();
  process.exit(1);
}

const example = pkgsPath ? "hello" : "shell/hello";
console.log(`
Registry ready at ${stack.registryUrl} (builder at ${stack.builder.url}, packages from ${pkgsPath ?? process.env.NIXERY_PKGS_REPO ?? `nixpkgs (${process.env.NIXERY_CHANNEL ?? "nixos-unstable"})`})

  skopeo copy --src-tls-verify=false docker://${stack.registryHost}/${example}:latest oci:/tmp/img:latest
  podman --runtime runc run --rm --tls-verify=false ${stack.registryHost}/${example} hello
  curl ${tls ? "-k " : ""}${stack.registryUrl}/v2/${example}/manifests/latest

Any image name works: every path component is a package, e.g. ${stack.registryHost}/${pkgsPath ? "greeting/dataset" : "shell/git/python3"}.
Ctrl-C stops both.
`);
if (Object.keys(pullAuthVars).length > 0) {
  console.log(
    `Pull authentication is on: log in first (podman login --tls-verify=false ${stack.registryHost}), or add --creds user:password (skopeo, podman), -u user:password (curl).\n`,
  );
}

let stopping = false;
// SIGHUP too: a closed terminal must not leave the builder and workerd running on their ports.
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    void stack.stop().then(() => process.exit(0));
  });
}
