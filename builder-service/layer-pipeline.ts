// One pass per layer: the tar is written straight into 1 MiB blocks (tar-blocks.ts); each full block is hashed
// (sha256 of the tar: the diff_id) and compressed as a gzip member or zstd frame on libuv's pool, several blocks at
// once (block-compression.ts); the compressed blocks go in order to the blob store, which hashes them as it spools
// them (the digest). Each byte is hashed once: the tar's here, the compressed ones by the store. No layer is ever
// held in memory (at most parallelism + 2 blocks, reused); the blob becomes visible under its digest only once
// complete.
import { createHash } from "node:crypto";
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

class SinkClosedError extends Error {
  constructor() {
    super("the staged blob's sink closed before the layer was written into it");
  }
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
  // A failed sink fails the layer at the next write (or at finished()), never the process: the listener stays, as
  // stream.pipeline's did, for an error the sink reports after the layer is done.
  let sinkError: Error | null = null;
  sink.on("error", (error: Error) => (sinkError ??= error));
  try {
    const queue = new CompressionQueue({
      compression: options.compression ?? "gzip",
      parallelism: options.parallelism ?? Math.max(1, os.availableParallelism()),
      done: (block) => pool.release(block),
      output: async (compressed) => {
        if (sink.destroyed) throw sinkError ?? new SinkClosedError();
        if (sink.write(compressed)) return;
        // Room again, or the sink gone (its "error", if any, comes before "close").
        await new Promise<void>((resolve, reject) => {
          const settle = () => {
            sink.off("drain", settle);
            sink.off("close", settle);
            if (sink.destroyed) reject(sinkError ?? new SinkClosedError());
            else resolve();
          };
          sink.on("drain", settle);
          sink.on("close", settle);
        });
      },
    });
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
  }
}
