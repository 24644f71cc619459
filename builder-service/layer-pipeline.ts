// One streaming pass per layer: tar -> sha256 (diff_id) -> gzip or zstd, block by block on every core
// (block-compression.ts) -> blob store, which hashes the compressed bytes as it spools them (the digest). Each byte
// is hashed once: the tar's here, the compressed ones by the store. No layer is ever held in memory (at most a few
// blocks per core); the blob becomes visible under its digest only once complete.
import { createHash, type Hash } from "node:crypto";
import os from "node:os";
import { Transform, type TransformCallback } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { Digest } from "../common/digest.ts";
import type { BlobStore } from "./blob-store.ts";
import type { LayerCompression } from "../common/image-name.ts";
import { BlockCompressor } from "./block-compression.ts";
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

export interface LayerWriteOptions {
  /** gzip unless the image asked for zstd. */
  compression?: LayerCompression;
  /** Blocks compressed at once (the machine's cores by default): changes speed, never bytes. */
  parallelism?: number;
}

export async function writeLayer(
  entries: readonly TarEntry[],
  store: Pick<BlobStore, "stage">,
  options: LayerWriteOptions = {},
): Promise<WrittenLayer> {
  const compressor = new BlockCompressor({
    compression: options.compression ?? "gzip",
    parallelism: options.parallelism ?? Math.max(1, os.availableParallelism()),
  });
  const uncompressed = new HashTap();
  const staged = await store.stage();
  try {
    await pipeline(tarStream(entries), uncompressed, compressor, staged.sink);
    const { digest, size } = staged.written();
    await staged.commit(digest, size);
    return { digest, diffId: uncompressed.digest(), size, tarSize: uncompressed.bytes };
  } catch (error) {
    await staged.abort();
    throw error;
  }
}
