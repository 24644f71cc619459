// Stand-in for production's single bucket. In production the builder writes through R2's S3 API into the very
// bucket the worker reads through its binding. Locally the worker's R2 is miniflare's, on disk under the
// worker's persist folder, and has no S3 endpoint, so the builder writes to s3rver instead and this copies
// what it wrote into the worker's local R2, keys and content types unchanged.
import { withWorkerR2 } from "./local-r2.ts";
import type { TestS3 } from "./s3-server.ts";

/** Copies every object under `prefix` from the test S3 bucket into the worker's local R2; returns the keys. */
export function mirrorIntoWorkerR2(s3: TestS3, workerStateDir: string, prefix = "blobs/"): Promise<string[]> {
  return withWorkerR2(workerStateDir, async (bucket) => {
    const copied: string[] = [];
    for (const { key } of await s3.list(prefix)) {
      const object = await s3.get(key);
      if (!object) continue;
      const bytes = object.bytes;
      await bucket.put(key, bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer, {
        httpMetadata: { contentType: object.contentType ?? "application/octet-stream" },
      });
      copied.push(key);
    }
    return copied;
  });
}
