// The embedded default blob store: a content-addressed folder on the builder's disk.
//   <root>/blobs/sha256/<hex>   blob bytes
//   <root>/records/<kind>/<id>  small JSON records
//   <root>/tmp/                 staged writes, renamed into place when complete
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { finished } from "node:stream/promises";
import type { Digest } from "../common/digest.ts";
import { assertRecordName, type BlobInfo, type BlobStore, type ByteRange, type StagedBlob } from "./blob-store.ts";

export class LocalBlobStore implements BlobStore {
  readonly description: string;

  constructor(private readonly root: string) {
    this.description = `local folder ${root}`;
  }

  async init(): Promise<void> {
    await mkdir(join(this.root, "blobs", "sha256"), { recursive: true });
    await mkdir(join(this.root, "records"), { recursive: true });
    // Leftovers of writes interrupted by a crash are never valid blobs.
    await rm(join(this.root, "tmp"), { recursive: true, force: true });
    await mkdir(join(this.root, "tmp"), { recursive: true });
  }

  private blobPath(digest: Digest): string {
    return join(this.root, "blobs", "sha256", digest.slice("sha256:".length));
  }

  async stat(digest: Digest): Promise<BlobInfo | null> {
    try {
      return { size: (await stat(this.blobPath(digest))).size };
    } catch (error) {
      if (isNotFound(error)) return null;
      throw error;
    }
  }

  async read(digest: Digest, range?: ByteRange): Promise<Readable | null> {
    if (!(await this.stat(digest))) return null;
    return createReadStream(this.blobPath(digest), range ? { start: range.start, end: range.end } : {});
  }

  async stage(): Promise<StagedBlob> {
    const tmp = join(this.root, "tmp", randomUUID());
    const sink = createWriteStream(tmp, { flags: "wx" });
    const target = (digest: Digest) => this.blobPath(digest);
    return {
      sink,
      async commit(digest, size) {
        if (!sink.writableFinished) await finished(sink);
        const written = (await stat(tmp)).size;
        if (written !== size) {
          await rm(tmp, { force: true });
          throw new Error(`staged blob ${digest} has ${written} bytes, expected ${size}`);
        }
        await rename(tmp, target(digest));
      },
      async abort() {
        sink.destroy();
        await rm(tmp, { force: true });
      },
    };
  }

  async putBytes(digest: Digest, bytes: Uint8Array): Promise<void> {
    const tmp = join(this.root, "tmp", randomUUID());
    await writeFile(tmp, bytes);
    await rename(tmp, this.blobPath(digest));
  }

  async getRecord(name: string): Promise<Uint8Array | null> {
    assertRecordName(name);
    try {
      return await readFile(join(this.root, "records", name));
    } catch (error) {
      if (isNotFound(error)) return null;
      throw error;
    }
  }

  async putRecord(name: string, bytes: Uint8Array): Promise<void> {
    assertRecordName(name);
    const path = join(this.root, "records", name);
    await mkdir(join(path, ".."), { recursive: true });
    const tmp = join(this.root, "tmp", randomUUID());
    await writeFile(tmp, bytes);
    await rename(tmp, path);
  }
}

function isNotFound(error: unknown): boolean {
  return typeof error === "object" && error !== null && (error as { code?: string }).code === "ENOENT";
}
