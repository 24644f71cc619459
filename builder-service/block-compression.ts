// Compression of a layer on every core, with bytes that do not depend on how many there are.
//
// One gzip (or zstd) stream is one chain of back-references and runs on one core, so the largest layer of an image
// bounded the build's layer phase. Here the tar stream is cut into fixed-size blocks and each block is compressed
// on its own, as a complete gzip member (or zstd frame), on libuv's thread pool; the members are written in order.
// Both formats define the concatenation of members (frames) as one stream of the concatenated data, and every
// client's reader takes it (Go's compress/gzip and klauspost/compress/zstd, which docker, containerd, skopeo and
// podman use; GNU gzip and zstd; umoci). pigz makes the same kind of stream, for the same reason.
//
// Determinism: a block is the same bytes at the same offset whatever the parallelism, and each is compressed alone
// with fixed settings, so the output is a function of the input and the block size only. Parallelism (how many
// blocks are in flight) changes speed and memory (parallelism blocks compressing, one being filled and one waiting
// for room, all reused from a pool), never bytes.
import os from "node:os";
import { Transform, type TransformCallback } from "node:stream";
import zlib from "node:zlib";
import type { LayerCompression } from "../common/image-name.ts";

/**
 * 1 MiB: measured on the curl/git/jq closure (docs/benchmark.md), gzip -6 in 1 MiB members is 0.3% larger than one
 * stream; 256 KiB costs 1.0%, 4 MiB saves 0.1% more but needs 4x the memory and leaves small layers on one core.
 */
export const COMPRESSION_BLOCK_BYTES = 1024 * 1024;

/** gzip's own default level: the usual balance of build time against pull bytes. */
const GZIP_LEVEL = 6;
/** zstd's own default level, which compresses about as well as gzip -6 at several times its speed. */
const ZSTD_LEVEL = 3;

/** Byte 9 of a gzip member's header names the operating system zlib was built for; fixed, so no host shows. */
const GZIP_OS_BYTE = 9;
const GZIP_OS_UNIX = 3;

/** The part of node:zlib's zstd support (Node 22.15+) used here; the project's @types/node predates it. */
interface ZstdZlib {
  createZstdCompress?: (options: {
    params: Record<number, number>;
    pledgedSrcSize: number;
    chunkSize: number;
  }) => Transform;
  constants: { ZSTD_c_compressionLevel?: number; ZSTD_c_checksumFlag?: number; ZSTD_c_contentSizeFlag?: number };
}
const zstdZlib = zlib as unknown as ZstdZlib;

/** Whether this Node has zstd in node:zlib (22.15 and later). */
export function zstdAvailable(): boolean {
  return typeof zstdZlib.createZstdCompress === "function";
}

/**
 * Room for a block's whole compressed form (deflate and zstd grow incompressible data by well under 1%), so that
 * zlib compresses it in one call on the thread pool rather than one call per 16 KiB of output.
 */
function outputRoom(block: Buffer): number {
  return Math.max(64 * 1024, block.length + (block.length >> 6) + 1024);
}

/**
 * The block compressed by `engine` (a gzip member or a zstd frame). Not zlib.gzip or zlib.zstdCompress: their output
 * comes in two or more pieces (the block, then the end of the stream), which they join with a copy into a new buffer
 * although the pieces lie back to back in one output buffer. That copy was a tenth of the main thread's time in the
 * layer phase, and its allocations kept the garbage collector busy.
 */
function compressed(engine: Transform, block: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const pieces: Buffer[] = [];
    engine.on("data", (piece: Buffer) => pieces.push(piece));
    engine.on("error", reject);
    engine.on("end", () => resolve(joined(pieces)));
    engine.end(block);
  });
}

/** The pieces as one buffer: a view when they lie back to back in one ArrayBuffer, else a copy. */
function joined(pieces: readonly Buffer[]): Buffer {
  const [first] = pieces;
  if (pieces.length <= 1) return first ?? Buffer.alloc(0);
  let end = first.byteOffset;
  for (const piece of pieces) {
    if (piece.buffer !== first.buffer || piece.byteOffset !== end) return Buffer.concat(pieces);
    end += piece.length;
  }
  return Buffer.from(first.buffer, first.byteOffset, end - first.byteOffset);
}

async function compressBlock(compression: LayerCompression, block: Buffer): Promise<Buffer> {
  if (compression === "gzip") {
    const member = await compressed(zlib.createGzip({ level: GZIP_LEVEL, chunkSize: outputRoom(block) }), block);
    member[GZIP_OS_BYTE] = GZIP_OS_UNIX;
    return member;
  }
  const { createZstdCompress, constants } = zstdZlib;
  if (!createZstdCompress) throw new ZstdUnavailableError();
  const engine = createZstdCompress({
    params: {
      // zstd.h's parameter numbers (100, 201, 200), which node:zlib's constants carry.
      [constants.ZSTD_c_compressionLevel ?? 100]: ZSTD_LEVEL,
      // A checksum per frame, so a reader notices a damaged block; the content size, so it can size its buffer.
      [constants.ZSTD_c_checksumFlag ?? 201]: 1,
      [constants.ZSTD_c_contentSizeFlag ?? 200]: 1,
    },
    pledgedSrcSize: block.length,
    chunkSize: outputRoom(block),
  });
  return compressed(engine, block);
}

export class ZstdUnavailableError extends Error {
  constructor() {
    super(
      `this builder's Node.js ${process.version} has no zstd in node:zlib, which zstd layers need: ` +
        "run the builder on Node.js 22.15 or later (or 23.8 and later)",
    );
  }
}

export interface BlockCompressorOptions {
  compression: LayerCompression;
  /** Blocks compressed at once; at least 1. */
  parallelism: number;
  /** Tests only: the size every block but the last has (the layer writer's COMPRESSION_BLOCK_BYTES otherwise). */
  blockBytes?: number;
}

/**
 * Block buffers for reuse. A layer's tar is written into blocks of one size, which are compressed and given back:
 * without reuse every MiB of every layer would be a new allocation for the garbage collector to find. Holds at most
 * `keep` free blocks; more in use at once (several layers written together) are allocated and dropped as before.
 */
export class BlockPool {
  private readonly free: ArrayBuffer[] = [];

  constructor(
    readonly blockBytes: number,
    private readonly keep: number,
  ) {}

  /** A block of blockBytes, its contents undefined: whoever fills it writes every byte it hands on. */
  acquire(): Buffer {
    const reused = this.free.pop();
    return Buffer.from(reused ?? new ArrayBuffer(this.blockBytes));
  }

  /** Gives back a block (or a view from its start) that nothing reads any more. */
  release(block: Buffer): void {
    if (block.byteOffset === 0 && block.buffer.byteLength === this.blockBytes && this.free.length < this.keep)
      this.free.push(block.buffer as ArrayBuffer);
  }
}

/** The pool of 1 MiB blocks the layer writer shares: enough for two layers written at once on every core. */
export const layerBlocks = new BlockPool(COMPRESSION_BLOCK_BYTES, 2 * (os.availableParallelism() + 2));

export interface CompressionQueueOptions {
  compression: LayerCompression;
  /** Blocks compressed at once; at least 1. */
  parallelism: number;
  /** Takes each block's compressed form, in input order; the next is not handed on before this settles. */
  output: (compressed: Buffer) => void | Promise<void>;
  /** Gets each block back once it is compressed and nothing reads it (to go back to its pool). */
  done?: (block: Buffer) => void;
}

/**
 * Compresses blocks, at most `parallelism` at once on libuv's thread pool, and hands their compressed forms on in
 * the order the blocks came. Room is made before a block starts, not after, so the caller goes on filling the next
 * block while the others compress.
 */
export class CompressionQueue {
  private readonly inFlight: { block: Buffer; compressed: Promise<Buffer> }[] = [];
  private blocks = 0;

  constructor(private readonly options: CompressionQueueOptions) {
    if (!Number.isInteger(options.parallelism) || options.parallelism < 1)
      throw new Error(`compression parallelism must be a whole number from 1, not ${options.parallelism}`);
    if (options.compression === "zstd" && !zstdAvailable()) throw new ZstdUnavailableError();
  }

  /** How many blocks were added. */
  get count(): number {
    return this.blocks;
  }

  /**
   * Starts compressing `block` once fewer than `parallelism` blocks are compressing. The block is read on another
   * thread until `done` gets it back: it must not change before then.
   */
  async add(block: Buffer): Promise<void> {
    await this.drain(this.options.parallelism - 1);
    this.blocks++;
    const compressed = compressBlock(this.options.compression, block);
    // Awaited in order by drain; this only keeps an early failure from counting as unhandled meanwhile.
    compressed.catch(() => undefined);
    this.inFlight.push({ block, compressed });
  }

  /** Hands on every block still compressing. */
  finish(): Promise<void> {
    return this.drain(0);
  }

  /** Hands on finished blocks, in order, until at most `left` are compressing. */
  private async drain(left: number): Promise<void> {
    while (this.inFlight.length > left) {
      const { block, compressed } = this.inFlight[0];
      const bytes = await compressed;
      void this.inFlight.shift();
      this.options.done?.(block);
      await this.options.output(bytes);
    }
  }
}

/**
 * A transform from any stream to its compressed form, block by block (see the comment at the top), cutting blocks at
 * the same offsets as the layer writer whatever the chunks it is given: the reference the tests compress tars with.
 */
export class BlockCompressor extends Transform {
  private readonly blockBytes: number;
  private readonly queue: CompressionQueue;
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  constructor(options: BlockCompressorOptions) {
    super();
    this.queue = new CompressionQueue({ ...options, output: (bytes) => void this.push(bytes) });
    this.blockBytes = options.blockBytes ?? COMPRESSION_BLOCK_BYTES;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    this.addFullBlocks().then(() => callback(), callback);
  }

  override _flush(callback: TransformCallback): void {
    // The last, shorter block; an empty input still gets one (empty) member, so the output is a valid stream.
    const last =
      this.pendingBytes > 0 || this.queue.count === 0 ? this.queue.add(this.takeBlock(this.pendingBytes)) : null;
    Promise.resolve(last)
      .then(() => this.queue.finish())
      .then(() => callback(), callback);
  }

  private async addFullBlocks(): Promise<void> {
    while (this.pendingBytes >= this.blockBytes) await this.queue.add(this.takeBlock(this.blockBytes));
  }

  /** The first `bytes` of the pending input as one buffer. */
  private takeBlock(bytes: number): Buffer {
    const all = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending, this.pendingBytes);
    const block = all.subarray(0, bytes);
    const rest = all.subarray(bytes);
    this.pending = rest.length > 0 ? [rest] : [];
    this.pendingBytes = rest.length;
    // A copy: the block outlives this call on the thread pool, and its source chunk may be reused upstream.
    return Buffer.from(block);
  }
}
