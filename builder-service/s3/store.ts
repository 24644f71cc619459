// The builder's store: the registry's bucket (R2 in production, the local stack's R2 locally), written through the
// S3 API, so layers reach R2 without passing through the worker. Which key holds what is common/bucket-layout.ts;
// blobs are stored as application/octet-stream, manifests with their media type.
//
// A staged blob is spooled and hashed once (spool.ts). On commit:
//   1. the spool's sha256 must be the digest and its length the size, or nothing is uploaded;
//   2. HEAD: an object already there with that size is not uploaded again;
//   3. up to S3_MULTIPART_THRESHOLD_BYTES: one PUT whose signed payload hash is the digest itself; above: a
//      multipart upload (multipart.ts);
//   4. every request is signed and retried by transport.ts; what a failure says, by errors.ts.
// The garbage collection (gc/) also lists the bucket (ListObjectsV2, page by page) and deletes (DeleteObjects).
import { createHash, randomUUID } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { finished } from "node:stream/promises";
import { blobKey, BUILDER_CACHE_PREFIX, manifestKey } from "../../common/bucket-layout.ts";
import { sha256Hex, type Digest } from "../../common/digest.ts";
import {
  assertBuilderWritable,
  assertDeletable,
  type BlobInfo,
  type BlobStore,
  type ByteRange,
  type StagedBlob,
} from "../blob-store.ts";
import { MAX_SINGLE_PUT_BYTES, MIN_PART_SIZE_BYTES, type S3StoreConfig } from "../config.ts";
import type { Logger } from "../log.ts";
import { partCount, uploadMultipart } from "./multipart.ts";
import { Spool, type SpooledBlob } from "./spool.ts";
import { bufferBody, S3Transport } from "./transport.ts";
import { deleteObjectsBody, parseDeleteErrors, parseListPage, type ListedObject } from "./xml.ts";

/** Keys per DeleteObjects request: S3's and R2's limit. */
const DELETE_BATCH = 1000;

/** Written at startup to prove the credentials may write to the bucket; HEADed by /ready. */
const CHECK_KEY = `${BUILDER_CACHE_PREFIX}startup-check`;
const BLOB_CONTENT_TYPE = "application/octet-stream";

export interface S3BlobStoreOptions extends Omit<S3StoreConfig, "kind"> {
  /** Folder for spooled layers (emptied at init). */
  spoolDir: string;
  log: Logger;
  /** First retry delay; doubles with each try (with jitter). Default 250 ms. */
  retryBaseMs?: number;
  /** A request with no progress for this long is dropped and retried. Default 120 s. */
  idleTimeoutMs?: number;
}

export class S3BlobStore implements BlobStore {
  readonly description: string;
  private readonly transport: S3Transport;

  constructor(private readonly options: S3BlobStoreOptions) {
    if (options.partSizeBytes < MIN_PART_SIZE_BYTES) {
      throw new Error(
        `the part size ${options.partSizeBytes} is below the ${MIN_PART_SIZE_BYTES}-byte minimum of R2 and S3`,
      );
    }
    if (options.multipartThresholdBytes > MAX_SINGLE_PUT_BYTES) {
      throw new Error(
        `the multipart threshold ${options.multipartThresholdBytes} is above R2's single-upload limit of ` +
          `${MAX_SINGLE_PUT_BYTES} bytes (5 GiB less 5 MiB)`,
      );
    }
    this.description = `S3 bucket ${options.bucket} at ${options.endpoint}`;
    this.transport = new S3Transport({
      ...options,
      retryBaseMs: options.retryBaseMs ?? 250,
      idleTimeoutMs: options.idleTimeoutMs ?? 120_000,
    });
  }

  async init(): Promise<void> {
    // Spooled layers of a previous run are never finished uploads.
    await rm(this.options.spoolDir, { recursive: true, force: true });
    await mkdir(this.options.spoolDir, { recursive: true });
  }

  /**
   * Proves at startup that the endpoint answers, the bucket exists and the credentials may write to it:
   * throws an S3Error whose message says which setting to fix.
   */
  async check(): Promise<void> {
    const body = Buffer.from(JSON.stringify({ checkedAt: new Date().toISOString() }));
    await this.transport.put("startup check", CHECK_KEY, "application/json", bufferBody(body));
  }

  /** For /ready: null when the bucket answers, else what is wrong. */
  async probe(): Promise<string | null> {
    try {
      await this.transport.send({ operation: "readiness check", method: "HEAD", key: CHECK_KEY }, [200, 404]);
      return null;
    } catch (error) {
      return (error as Error).message;
    }
  }

  close(): void {
    this.transport.close();
  }

  async stat(digest: Digest): Promise<BlobInfo | null> {
    return this.transport.head("stat", blobKey(digest));
  }

  async read(digest: Digest, range?: ByteRange): Promise<Readable | null> {
    const headers: Record<string, string> = range ? { range: `bytes=${range.start}-${range.end}` } : {};
    return this.transport.stream({ operation: "read", method: "GET", key: blobKey(digest), headers });
  }

  async stage(): Promise<StagedBlob> {
    const path = join(this.options.spoolDir, randomUUID());
    const spool = new Spool(path, this.options.partSizeBytes);
    return {
      sink: spool,
      written: () => {
        const { digest, size } = spool.spooled();
        return { digest, size };
      },
      commit: async (digest, size) => {
        try {
          if (!spool.writableFinished) await finished(spool);
          const spooled = spool.spooled();
          if (spooled.size !== size)
            throw new Error(`staged blob ${digest} has ${spooled.size} bytes, expected ${size}`);
          if (spooled.digest !== digest) {
            throw new Error(`staged blob's bytes hash to ${spooled.digest}, not to ${digest}; not uploading it`);
          }
          await this.upload(spooled, path);
        } finally {
          await rm(path, { force: true });
        }
      },
      abort: async () => {
        // After the spool's file is closed: one still being opened would be created after the rm.
        if (!spool.closed) await new Promise<void>((resolve) => spool.once("close", () => resolve()).destroy());
        await rm(path, { force: true });
      },
    };
  }

  async putBytes(digest: Digest, bytes: Uint8Array): Promise<void> {
    await this.putDigested("put blob", blobKey(digest), digest, bytes, BLOB_CONTENT_TYPE);
  }

  async putManifest(digest: Digest, body: string, mediaType: string): Promise<void> {
    await this.putDigested("put manifest", manifestKey(digest), digest, new TextEncoder().encode(body), mediaType);
  }

  async getObject(key: string): Promise<Uint8Array | null> {
    const response = await this.transport.send({ operation: "get", method: "GET", key }, [200, 404]);
    return response.status === 404 ? null : new Uint8Array(response.body);
  }

  async putObject(key: string, bytes: Uint8Array, contentType: string): Promise<void> {
    assertBuilderWritable(key);
    await this.transport.put("put", key, contentType, bufferBody(asBuffer(bytes)));
  }

  /** Every object whose key starts with prefix, in key order, a page (up to 1000) at a time. */
  async *listObjects(prefix: string): AsyncGenerator<ListedObject> {
    let token: string | null = null;
    do {
      const query: Record<string, string> = { "list-type": "2", prefix };
      if (token) query["continuation-token"] = token;
      const response = await this.transport.send({ operation: "list", method: "GET", key: "", query }, [200]);
      const page = parseListPage(response.body.toString("utf8"));
      yield* page.objects;
      token = page.next;
    } while (token);
  }

  /** Deletes the keys, 1000 per request; throws naming the keys the bucket would not delete. */
  async deleteObjects(keys: readonly string[]): Promise<void> {
    keys.forEach(assertDeletable);
    for (let start = 0; start < keys.length; start += DELETE_BATCH) {
      const body = Buffer.from(deleteObjectsBody(keys.slice(start, start + DELETE_BATCH)));
      // S3 requires an integrity header on DeleteObjects; Content-MD5 is the one every S3 API takes.
      const md5 = createHash("md5").update(body).digest("base64");
      const response = await this.transport.send(
        {
          operation: "delete",
          method: "POST",
          key: "",
          query: { delete: "" },
          headers: { "content-type": "application/xml", "content-md5": md5 },
          body: bufferBody(body),
        },
        [200],
      );
      const failed = parseDeleteErrors(response.body.toString("utf8"));
      if (failed.length > 0) {
        const first = failed[0];
        throw new Error(
          `the bucket did not delete ${failed.length} of ${Math.min(DELETE_BATCH, keys.length - start)} keys, e.g. ` +
            `${first.key}: ${first.code} ${first.message}`,
        );
      }
    }
  }

  /** A small content-addressed object: hashed once, to check the digest, which is then its signed payload hash. */
  private async putDigested(
    operation: string,
    key: string,
    digest: Digest,
    bytes: Uint8Array,
    contentType: string,
  ): Promise<void> {
    const buffer = asBuffer(bytes);
    const sha256 = await sha256Hex(buffer);
    if (`sha256:${sha256}` !== digest)
      throw new Error(`${operation}: the bytes hash to sha256:${sha256}, not to ${digest}`);
    const existing = await this.transport.head("stat", key);
    if (existing?.size === buffer.length) return;
    await this.transport.put(operation, key, contentType, bufferBody(buffer, sha256));
  }

  private async upload(spooled: SpooledBlob, path: string): Promise<void> {
    const { log, multipartThresholdBytes, partSizeBytes, partConcurrency } = this.options;
    const { digest, size } = spooled;
    const key = blobKey(digest);
    const existing = await this.transport.head("stat", key);
    if (existing?.size === size) {
      log.info("s3-blob-present", { digest, size, key });
      return;
    }
    if (existing) log.warn("s3-blob-replaced", { digest, key, size, storedSize: existing.size });
    const started = performance.now();
    let parts = 1;
    if (size <= multipartThresholdBytes) {
      await this.transport.put("put blob", key, BLOB_CONTENT_TYPE, {
        length: size,
        sha256: digest.slice("sha256:".length),
        open: () => (size === 0 ? Buffer.alloc(0) : createReadStream(path)),
      });
    } else {
      parts = partCount(digest, size, partSizeBytes);
      await uploadMultipart(this.transport, log, {
        digest,
        key,
        size,
        contentType: BLOB_CONTENT_TYPE,
        path,
        partSize: partSizeBytes,
        partConcurrency,
        partSha256: spooled.partSha256,
      });
    }
    const ms = performance.now() - started;
    log.info("s3-upload", {
      digest,
      key,
      size,
      parts,
      ms: Math.round(ms),
      mbPerSecond: Math.round((size / 1e6 / Math.max(ms, 1)) * 1000 * 10) / 10,
    });
  }
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
