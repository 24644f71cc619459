// Writing a blob into a builder store the way the layer pipeline does: into the staged sink in 64 KiB chunks, then
// commit (abort on failure).
import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { BlobStore } from "../../builder-service/blob-store.ts";
import type { Digest } from "../../common/digest.ts";

export const digestOf = (bytes: Buffer): Digest => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

export function* chunks(bytes: Buffer, size: number): Generator<Buffer> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
}

export async function writeBlob(
  store: Pick<BlobStore, "stage">,
  bytes: Buffer,
  digest = digestOf(bytes),
): Promise<Digest> {
  const staged = await store.stage();
  try {
    await pipeline(Readable.from(chunks(bytes, 64 * 1024)), staged.sink);
    await staged.commit(digest, bytes.length);
  } catch (error) {
    await staged.abort();
    throw error;
  }
  return digest;
}
