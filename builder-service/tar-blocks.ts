// A layer's tar written straight into the blocks it is compressed in (block-compression.ts).
//
// Why not a tar library's stream: tar-stream's pack (the builder's writer until 2026-12) hands each 64 KiB chunk of
// each file through two streams, and the compressor then joins the chunks into blocks with a copy; on the one main
// thread that cost 1.3-2.1 s of CPU for the 116 MiB of curl/git/jq, against 3 s for the compression on all cores
// (docs/benchmark.md, "Layer writing alone"); now 0.4 s. Here each file is read by the kernel into the
// block being filled, at its offset, headers are written beside it, and full blocks go to the compressor: one copy
// of each byte (the read), no per-chunk objects, and blocks reused from a pool.
//
// The bytes are exactly tar-stream's (test/builder-units.test.ts compares them): its own header encoder
// (tar-stream/headers.js) with the header fields its pack gets, its padding, its pax records for names and link
// targets that a ustar header cannot hold, and its end of archive, so no layer's digest changed.
//
// Files are read synchronously: they are in the page cache just after Nix built them, where a read is a copy of
// microseconds, less than a thread-pool round trip, and the pool's threads are busy compressing. A read is at most a
// block (1 MiB), and the writer yields to the event loop whenever the compressor has no room for the next block,
// which, compression being the slower, is at nearly every block: other work on the event loop goes on.
import { closeSync, openSync, readSync } from "node:fs";
import headers, { type Header } from "tar-stream/headers.js";
import { FIXED_MTIME, type TarEntry } from "./tarball.ts";

/** Where the tar's blocks come from and go. */
export interface TarBlockSink {
  /** A block to fill, whatever it held before; every block has the same size, a multiple of 512 bytes. */
  acquire(): Buffer;
  /**
   * Takes a filled block: every one but the last is whole, the last is the rest of the tar (a view of the acquired
   * block, from its start). The writer does not touch a block after handing it on.
   */
  emit(block: Buffer): Promise<void>;
}

/** tar's record size: headers, and file contents padded with zeros, are whole records. */
const RECORD = 512;

export class FileChangedError extends Error {
  constructor(path: string, expected: number, problem: string) {
    super(
      `${path} changed while its layer was written (listed with ${expected} bytes, ${problem}); store paths never ` +
        "change, so something outside Nix wrote to the store: check it with `nix-store --verify --check-contents`",
    );
  }
}

/** Writes the tar of `entries` (in their order) into blocks from `sink`; returns the tar's size. */
export async function writeTarBlocks(entries: readonly TarEntry[], sink: TarBlockSink): Promise<number> {
  const writer = new TarBlockWriter(sink);
  for (const entry of entries) {
    for (const bytes of entryHeaders(entry)) await writer.write(bytes);
    if (entry.type === "file") {
      await writer.copyFile(entry.source, entry.size);
      await writer.zeros(padding(entry.size));
    }
  }
  // tar-stream's end of archive: two zero records.
  await writer.zeros(2 * RECORD);
  return writer.finish();
}

function padding(size: number): number {
  return (RECORD - (size % RECORD)) % RECORD;
}

/**
 * The header records of an entry as tar-stream's pack writes them: the fields tarball.ts gave it, its defaults
 * (pack.entry), one ustar header when the name and link target fit (headers.encode), else its pax form
 * (pack._encodePax): a "PaxHeader" entry carrying path and linkpath, padded, then a header named "PaxHeader".
 */
function entryHeaders(entry: TarEntry): Buffer[] {
  const header: Header = {
    name: entry.name,
    // pack.entry's default for a mode of 0 (a root-filesystem directory may be given one).
    mode: entry.mode || (entry.type === "directory" ? 0o755 : 0o644),
    mtime: FIXED_MTIME,
    uid: 0,
    gid: 0,
    uname: "",
    gname: "",
    type: entry.type,
    size: entry.type === "file" ? entry.size : 0,
    linkname: entry.type === "symlink" ? entry.target : undefined,
  };
  const ustar = headers.encode(header);
  if (ustar) return [ustar];
  const pax = headers.encodePax({ name: header.name, linkname: header.linkname });
  const paxEntry: Header = {
    ...header,
    name: "PaxHeader",
    size: pax.byteLength,
    type: "pax-header",
    linkname: header.linkname && "PaxHeader",
  };
  const first = headers.encode(paxEntry);
  const last = headers.encode({ ...paxEntry, size: header.size, type: header.type });
  if (!first || !last) throw new Error(`tar-stream could not encode the pax header of ${entry.name}`);
  return [first, pax, Buffer.alloc(padding(pax.byteLength)), last];
}

/** Fills blocks in order and hands each on when full. */
class TarBlockWriter {
  private block: Buffer;
  private filled = 0;
  private total = 0;
  /** One byte read past a file's listed size, to find out whether it grew. */
  private readonly probe = Buffer.alloc(1);

  constructor(private readonly sink: TarBlockSink) {
    this.block = sink.acquire();
    if (this.block.length === 0 || this.block.length % RECORD !== 0)
      throw new Error(`tar blocks must be a whole number of ${RECORD}-byte records, not ${this.block.length} bytes`);
  }

  async write(bytes: Buffer): Promise<void> {
    for (let done = 0; done < bytes.length;) {
      const take = Math.min(bytes.length - done, this.block.length - this.filled);
      bytes.copy(this.block, this.filled, done, done + take);
      done += take;
      await this.advance(take);
    }
  }

  async zeros(count: number): Promise<void> {
    for (let left = count; left > 0;) {
      const take = Math.min(left, this.block.length - this.filled);
      this.block.fill(0, this.filled, this.filled + take);
      left -= take;
      await this.advance(take);
    }
  }

  /**
   * The file's contents, read into the blocks; exactly `size` bytes or an error. Each read asks for one byte more
   * than is left when the block has room, so that a short read tells the end of the file without another call.
   */
  async copyFile(path: string, size: number): Promise<void> {
    const fd = openSync(path, "r");
    try {
      let left = size;
      while (left > 0) {
        const want = Math.min(left + 1, this.block.length - this.filled);
        const got = readSync(fd, this.block, this.filled, want, null);
        if (got > left) throw new FileChangedError(path, size, "now longer");
        if (got === 0) throw new FileChangedError(path, size, `ended after ${size - left}`);
        left -= got;
        const ended = left === 0 && got < want;
        await this.advance(got);
        if (ended) return;
      }
      // The block filled up exactly at the file's listed end: one read more to check that the file ends there.
      if (readSync(fd, this.probe, 0, 1, null) !== 0) throw new FileChangedError(path, size, "now longer");
    } finally {
      closeSync(fd);
    }
  }

  /** Hands the tar's last block on (a part of one; the tar is never empty). */
  async finish(): Promise<number> {
    if (this.filled > 0) await this.sink.emit(this.block.subarray(0, this.filled));
    return this.total;
  }

  private async advance(bytes: number): Promise<void> {
    this.filled += bytes;
    this.total += bytes;
    if (this.filled < this.block.length) return;
    const full = this.block;
    this.block = this.sink.acquire();
    this.filled = 0;
    await this.sink.emit(full);
  }
}
