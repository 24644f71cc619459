// Stand-in for production's single bucket. In production the builder writes through R2's S3 API into the very
// bucket the worker reads through its binding. Locally the worker's R2 is miniflare's, on disk under the
// worker's persist folder, and has no S3 endpoint, so the builder writes to s3rver instead and this copies
// what it wrote into the worker's local R2, keys and content types unchanged.
import { join } from "node:path";
import { getPlatformProxy } from "wrangler";
import { PROJECT_ROOT } from "../../scripts/local-stack.ts";
import type { TestS3 } from "./s3-server.ts";

interface R2BucketLike {
  put(key: string, value: ArrayBuffer, options?: { httpMetadata?: { contentType?: string }; sha256?: string }): Promise<unknown>;
  head(key: string): Promise<{ size: number; httpMetadata?: { contentType?: string } } | null>;
}

/** Copies every object under `prefix` from the test S3 bucket into the worker's local R2; returns the keys. */
export async function mirrorIntoWorkerR2(s3: TestS3, workerStateDir: string, prefix = "blobs/"): Promise<string[]> {
  const proxy = await getPlatformProxy<{ REGISTRY_BUCKET: R2BucketLike }>({
    configPath: join(PROJECT_ROOT, "wrangler.toml"),
    persist: { path: join(workerStateDir, "v3") },
    remoteBindings: false,
  });
  try {
    const copied: string[] = [];
    for (const { key } of await s3.list(prefix)) {
      const object = await s3.get(key);
      if (!object) continue;
      const bytes = object.bytes;
      await proxy.env.REGISTRY_BUCKET.put(
        key,
        bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer,
        { httpMetadata: { contentType: object.contentType ?? "application/octet-stream" } },
      );
      copied.push(key);
    }
    return copied;
  } finally {
    await proxy.dispose();
  }
}
