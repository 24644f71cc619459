// One pass per layer: the tar is written straight into 1 MiB blocks (tar-blocks.ts); each full block is hashed
// (sha256 of the tar: the diff_id) and compressed as a gzip member or zstd frame on libuv's pool, several blocks at
// once (block-compression.ts); the compressed blocks go in order to the blob store, which hashes them as it spools
// them (the digest). Each byte is hashed once: the tar's here, the compressed ones by the store. No layer is ever
// held in memory (at most parallelism + 2 blocks, reused); the blob becomes visible under its digest only once
// complete.
import { createHash } from "node:crypto";
import { once } from "node:events";
import os from "node:os";
import { finished } from "node:stream/promises";
import type { Digest } from "../common/digest.ts";
import type { BlobStore } from "./blob-store.ts";
import type { LayerCompression } from "../common/image-name.ts";
import { BlockPool, CompressionQueue, layerBlocks } from "./block-compression.ts";
import { writeTarBlocks } from "./tar-blocks.ts";
import type { TarEntry } from "./tarball.ts";

export interface WrittenLayer {
  /** sha256 of the compressed bytes: the blob's address. */
  digest: Digest;
  /** sha256 of the uncompressed tar: what the image config lists. */
  diffId: Digest;
  /** Compressed size in bytes. */
  size: number;
  tarSize: number;
}

export interface LayerWriteOptions {
  /** gzip unless the image asked for zstd. */
  compression?: LayerCompression;
  /** Blocks compressed at once (the machine's cores by default): changes speed, never bytes. */
  parallelism?: number;
  /** Tests only: blocks of this many bytes (a multiple of 512) instead of COMPRESSION_BLOCK_BYTES. */
  blockBytes?: number;
}

export async function writeLayer(
  entries: readonly TarEntry[],
  store: Pick<BlobStore, "stage">,
  options: LayerWriteOptions = {},
): Promise<WrittenLayer> {
  const pool = options.blockBytes === undefined ? layerBlocks : new BlockPool(options.blockBytes, 0);
  const tarHash = createHash("sha256");
  const staged = await store.stage();
  const { sink } = staged;
  // Until the end, where finished() takes over, a failed sink fails the next write rather than the process.
  let sinkError: Error | null = null;
  const onSinkError = (error: Error) => (sinkError ??= error);
  sink.on("error", onSinkError);
  const queue = new CompressionQueue({
    compression: options.compression ?? "gzip",
    parallelism: options.parallelism ?? Math.max(1, os.availableParallelism()),
    done: (block) => pool.release(block),
    output: async (compressed) => {
      if (sinkError) throw sinkError;
      if (!sink.write(compressed)) await once(sink, "drain");
    },
  });
  try {
    const tarSize = await writeTarBlocks(entries, {
      acquire: () => pool.acquire(),
      emit: async (block) => {
        await queue.add(block);
        // Hashed while it compresses on another thread; both only read it, and it goes back to the pool only once
        // a later add or finish has handed its compressed form on.
        tarHash.update(block);
      },
    });
    await queue.finish();
    sink.end();
    await finished(sink);
    const { digest, size } = staged.written();
    await staged.commit(digest, size);
    return { digest, diffId: `sha256:${tarHash.digest("hex")}`, size, tarSize };
  } catch (error) {
    await staged.abort();
    throw error;
  } finally {
    sink.off("error", onSinkError);
  }
}
