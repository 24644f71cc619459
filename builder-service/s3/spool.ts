// The spool: a staged blob's bytes go to a file on local disk (never memory) and are hashed on the way, once.
//
// A layer's digest is known only when its last byte has left gzip, so the bytes wait here until commit. The
// sha256 computed while they are written is the blob's digest: the layer pipeline takes it from here rather
// than hashing the same bytes itself, and commit compares it with the digest it is given, so bytes that don't
// match are never uploaded. It is also the signed payload hash of a single PUT, whose server thereby checks the
// body against the digest itself.
//
// A multipart upload signs each part's own sha256. The first part's is the running hash at the part boundary
// (a copy, no extra work); each later part is hashed a second time, in the same pass, while its bytes are at
// hand. A blob of one part (any blob up to S3_MULTIPART_THRESHOLD_BYTES when that equals S3_PART_SIZE_BYTES, as
// by default) is hashed exactly once.
import { createHash, type Hash } from "node:crypto";
import { createWriteStream, type WriteStream } from "node:fs";
import { Writable } from "node:stream";
import type { Digest } from "../../common/digest.ts";

/** What the spool took: the digest and size of its bytes, and the hex sha256 of each part-sized slice. */
export interface SpooledBlob {
  digest: Digest;
  size: number;
  /** Part i + 1 is bytes [i * partSize, min((i + 1) * partSize, size)). */
  partSha256: string[];
}

export class Spool extends Writable {
  private bytes = 0;
  private readonly whole: Hash = createHash("sha256");
  private readonly parts: string[] = [];
  /** The hash of the current part after the first (null while in the first, which the whole hash covers). */
  private part: Hash | null = null;
  private partBytes = 0;
  private readonly file: WriteStream;
  private result: SpooledBlob | null = null;

  constructor(
    readonly path: string,
    private readonly partSize: number,
  ) {
    super({ highWaterMark: 1024 * 1024 });
    this.file = createWriteStream(path, { flags: "wx" });
    this.file.on("error", (error) => this.destroy(error));
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    for (let offset = 0; offset < chunk.length;) {
      // Slice by slice, so that the whole hash stands at the first part's end when that part closes.
      const take = Math.min(this.partSize - this.partBytes, chunk.length - offset);
      const slice = chunk.subarray(offset, offset + take);
      this.whole.update(slice);
      this.part?.update(slice);
      this.partBytes += take;
      offset += take;
      if (this.partBytes === this.partSize) this.closePart();
    }
    this.bytes += chunk.length;
    if (this.file.write(chunk)) callback();
    else this.file.once("drain", () => callback());
  }

  override _final(callback: (error?: Error | null) => void): void {
    if (this.partBytes > 0) this.closePart();
    this.result = { digest: `sha256:${this.whole.digest("hex")}`, size: this.bytes, partSha256: this.parts };
    this.file.end((error?: Error | null) => callback(error));
  }

  /**
   * Done once the file is closed: a file still being opened is created when the open completes, so a caller that
   * removes it on "close" (an aborted layer) must not remove it sooner, or the open would leave it behind.
   */
  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.file.closed) return callback(error);
    this.file.once("close", () => callback(error));
    this.file.destroy();
  }

  private closePart(): void {
    this.parts.push(this.part ? this.part.digest("hex") : this.whole.copy().digest("hex"));
    this.part = createHash("sha256");
    this.partBytes = 0;
  }

  /** The digest, size and part hashes of what was written; only once the spool has finished. */
  spooled(): SpooledBlob {
    if (!this.result) throw new Error("the staged blob was not finished");
    return this.result;
  }
}
