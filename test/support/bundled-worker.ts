// The worker bundled as `wrangler deploy` bundles it (`--dry-run --outdir`), for tests that run more instances of it
// in a Miniflare of their own, each with its own settings, beside the test stack.
import { join } from "node:path";
import { unstable_getMiniflareWorkerOptions } from "wrangler";
import { PROJECT_ROOT } from "../../scripts/local-stack.ts";
import { run } from "./stack.ts";

/** Options of one worker instance for Miniflare's `workers`: wrangler.toml's, with these bindings on top. */
export type WorkerInstance = (name: string, bindings: Record<string, unknown>) => Record<string, unknown>;

/** Bundles the worker into `bundleDir` and answers how to make instances of that bundle. */
export async function bundledWorker(bundleDir: string): Promise<WorkerInstance> {
  const config = join(PROJECT_ROOT, "wrangler.toml");
  await run(join(PROJECT_ROOT, "node_modules/.bin/wrangler"), [
    "deploy",
    "--dry-run",
    "--outdir",
    bundleDir,
    "--config",
    config,
  ]);
  const { workerOptions } = unstable_getMiniflareWorkerOptions(config);
  return (name, bindings) => ({
    ...(workerOptions as Record<string, unknown>),
    name,
    modules: true,
    modulesRoot: bundleDir,
    scriptPath: join(bundleDir, "index.js"),
    bindings: { ...(workerOptions.bindings as Record<string, unknown> | undefined), ...bindings },
    unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }],
  });
}
