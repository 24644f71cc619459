// The worker's local R2 bucket (miniflare's, on disk under the stack's persist folder), opened from the test
// process through wrangler's platform proxy: the same data the running worker reads and writes.
import { join } from "node:path";
import { getPlatformProxy } from "wrangler";
import { PROJECT_ROOT } from "../../scripts/local-stack.ts";

/** The part of the R2 binding the tests use. */
export interface LocalR2 {
  put(key: string, value: ArrayBuffer | string, options?: { httpMetadata?: { contentType?: string } }): Promise<unknown>;
  list(options: { prefix?: string; cursor?: string }): Promise<{ objects: { key: string }[]; truncated: boolean; cursor?: string }>;
}

export async function withWorkerR2<T>(workerStateDir: string, use: (bucket: LocalR2) => Promise<T>): Promise<T> {
  const proxy = await getPlatformProxy<{ REGISTRY_BUCKET: LocalR2 }>({
    configPath: join(PROJECT_ROOT, "wrangler.toml"),
    persist: { path: join(workerStateDir, "v3") },
    remoteBindings: false,
  });
  try {
    return await use(proxy.env.REGISTRY_BUCKET);
  } finally {
    await proxy.dispose();
  }
}
