// The worker's local R2 bucket (Miniflare's, on disk under the stack's persist folder), opened from the test
// process by a Miniflare of its own bound to the same bucket: the same data the running worker reads.
import { join } from "node:path";
import { Miniflare } from "miniflare";

/** The part of the R2 binding the tests use. */
export interface LocalR2 {
  put(
    key: string,
    value: ArrayBuffer | string,
    options?: { httpMetadata?: { contentType?: string } },
  ): Promise<unknown>;
  list(options: {
    prefix?: string;
    cursor?: string;
  }): Promise<{ objects: { key: string }[]; truncated: boolean; cursor?: string }>;
}

export async function withWorkerR2<T>(workerStateDir: string, use: (bucket: LocalR2) => Promise<T>): Promise<T> {
  const miniflare = new Miniflare({
    modules: true,
    script: "export default { fetch() { return new Response(null, { status: 404 }); } };",
    // wrangler.toml's binding and bucket_name, and the stack's r2Persist.
    r2Buckets: { REGISTRY_BUCKET: "nix-edge-registry" },
    r2Persist: join(workerStateDir, "v3", "r2"),
  });
  try {
    const bucket = (await miniflare.getR2Bucket("REGISTRY_BUCKET")) as unknown as LocalR2;
    return await use(bucket);
  } finally {
    await miniflare.dispose();
  }
}
