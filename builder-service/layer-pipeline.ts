// One streaming pass per layer: tar -> sha256 (diff_id) -> gzip -> blob store, which hashes the compressed bytes
// as it spools them (the digest). Each byte is hashed once: the tar's here, the compressed ones by the store.
// No layer is ever held in memory; the blob becomes visible under its digest only once complete.
import { createHash, type Hash } from "node:crypto";
import { Transform, type TransformCallback } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGzip, constants as zlibConstants } from "node:zlib";
import type { Digest } from "../common/digest.ts";
import type { BlobStore } from "./blob-store.ts";
import { tarStream, type TarEntry } from "./tarball.ts";

export interface WrittenLayer {
  /** sha256 of the compressed bytes: the blob's address. */
  digest: Digest;
  /** sha256 of the uncompressed tar: what the image config lists. */
  diffId: Digest;
  /** Compressed size in bytes. */
  size: number;
  tarSize: number;
}

/** Gzip level 6 is gzip's own default: the usual balance of build time against pull bytes. */
const GZIP_LEVEL = 6;

class HashTap extends Transform {
  readonly hash: Hash = createHash("sha256");
  bytes = 0;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    callback(null, chunk);
  }

  digest(): Digest {
    return `sha256:${this.hash.digest("hex")}`;
  }
}

export async function writeLayer(entries: readonly TarEntry[], store: Pick<BlobStore, "stage">): Promise<WrittenLayer> {
  const uncompressed = new HashTap();
  const staged = await store.stage();
  try {
    // Node's gzip header carries no timestamp or file name, so the same tar gives the same bytes.
    await pipeline(
      tarStream(entries),
      uncompressed,
      createGzip({ level: GZIP_LEVEL, strategy: zlibConstants.Z_DEFAULT_STRATEGY }),
      staged.sink,
    );
    const { digest, size } = staged.written();
    await staged.commit(digest, size);
    return { digest, diffId: uncompressed.digest(), size, tarSize: uncompressed.bytes };
  } catch (error) {
    await staged.abort();
    throw error;
  }
}
