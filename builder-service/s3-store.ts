// The builder's store: the registry's bucket (R2 in production, the local stack's R2 locally), written through the
// S3 API (SigV4 by aws4fetch's signer), so layers reach R2 without passing through the worker. Which key holds
// what is common/bucket-layout.ts; blobs are stored as application/octet-stream, manifests with their media type.
//
// A layer's digest is known only when its last byte has gone through gzip, so staged bytes are spooled to a
// file on local disk (never memory) while their sha256 and md5 are computed, whole and per part. On commit:
//   1. the spool's sha256 must be the digest and its length the size, or nothing is uploaded;
//   2. HEAD: an object already there with that size is not uploaded again;
//   3. up to S3_MULTIPART_THRESHOLD_BYTES: one PUT; above: a multipart upload of equal parts of
//      S3_PART_SIZE_BYTES (R2 wants every part but the last the same size, and >= 5 MiB), each streamed from
//      its slice of the spool file;
//   4. every PUT carries its body's sha256 as the signed x-amz-content-sha256 and its md5 as Content-MD5, so
//      the server refuses a body that changed on the way (for a single PUT that sha256 is the digest itself);
//   5. a multipart upload becomes visible only at CompleteMultipartUpload, after which a HEAD checks the size;
//      any failure aborts the upload, so an interrupted upload leaves nothing under the digest.
// Transient failures (5xx, 429, S3's RequestTimeout, dropped or stalled connections) are retried per request
// with exponential backoff, S3_MAX_ATTEMPTS tries in all.
import { createHash, randomUUID, type Hash } from "node:crypto";
import { createReadStream, createWriteStream, type WriteStream } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import http, { type IncomingMessage } from "node:http";
import https from "node:https";
import { join } from "node:path";
import { Readable, Writable } from "node:stream";
import { finished } from "node:stream/promises";
import { AwsV4Signer } from "aws4fetch";
import type { Digest } from "../common/digest.ts";
import { blobKey, BUILDER_CACHE_PREFIX, manifestKey } from "../common/bucket-layout.ts";
import { escapeXml, xmlValue } from "../common/s3-xml.ts";
import { assertBuilderWritable, type BlobInfo, type BlobStore, type ByteRange, type StagedBlob } from "./blob-store.ts";
import { mapWithLimit } from "./bounded-map.ts";
import { MAX_SINGLE_PUT_BYTES, MIN_PART_SIZE_BYTES, type S3StoreConfig } from "./config.ts";
import type { Logger } from "./log.ts";

/** Written at startup to prove the credentials may write to the bucket; HEADed by /ready. */
export const CHECK_KEY = `${BUILDER_CACHE_PREFIX}startup-check`;
/** S3's and R2's limit on parts per upload. */
export const MAX_PARTS = 10_000;
const BLOB_CONTENT_TYPE = "application/octet-stream";
const EMPTY_SHA256 = createHash("sha256").digest("hex");


export interface S3BlobStoreOptions extends Omit<S3StoreConfig, "kind"> {
  /** Folder for spooled layers (emptied at init). */
  spoolDir: string;
  log: Logger;
  /** First retry delay; doubles with each try (with jitter). Default 250 ms. */
  retryBaseMs?: number;
  /** A request with no progress for this long is dropped and retried. Default 120 s. */
  idleTimeoutMs?: number;
}

/** An S3 request that failed, with what S3 said and an explanation a person can act on. */
export class S3Error extends Error {
  constructor(
    message: string,
    readonly operation: string,
    readonly key: string,
    readonly status: number | null,
    readonly code: string | null,
    readonly retryable: boolean,
  ) {
    super(message);
    this.name = "S3Error";
  }

  /** Whether this is a configuration problem (credentials, permissions, bucket) rather than an outage. */
  get isConfiguration(): boolean {
    return this.status === 401 || this.status === 403 || this.code === "NoSuchBucket" || this.code === "InvalidBucketName";
  }
}

interface Body {
  length: number;
  /** Hex sha256 of the body: signed, so the server checks it. */
  sha256: string;
  /** Base64 md5 of the body (Content-MD5), checked by the server too. */
  md5?: string;
  /** A fresh stream of the body for each try. */
  open: () => Readable | Buffer;
}

interface S3Request {
  operation: string;
  method: "GET" | "HEAD" | "PUT" | "POST" | "DELETE";
  key: string;
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: Body;
}

interface S3Response {
  status: number;
  headers: IncomingMessage["headers"];
  body: Buffer;
}

/** Part i covers bytes [i * partSize, min((i + 1) * partSize, size)). */
interface PartPlan {
  number: number;
  start: number;
  length: number;
}

interface PartHashes {
  sha256: string;
  md5: string;
}

const TRANSIENT_STATUSES = new Set([429, 500, 502, 503, 504]);
const TRANSIENT_CODES = new Set(["RequestTimeout", "InternalError", "SlowDown", "ServiceUnavailable"]);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The spool: writes staged bytes to a file and hashes them on the way, whole (sha256 to check the digest,
 * md5 for a single PUT's Content-MD5) and per part at fixed part boundaries (for multipart uploads).
 */
class SpoolWriter extends Writable {
  bytes = 0;
  private readonly whole: Hash = createHash("sha256");
  private readonly wholeMd5: Hash = createHash("md5");
  private readonly parts: PartHashes[] = [];
  private partSha: Hash = createHash("sha256");
  private partMd5: Hash = createHash("md5");
  private partBytes = 0;
  private readonly file: WriteStream;
  private results: { sha256: string; md5: string; parts: PartHashes[] } | null = null;

  constructor(
    readonly path: string,
    private readonly partSize: number,
  ) {
    super({ highWaterMark: 1024 * 1024 });
    this.file = createWriteStream(path, { flags: "wx" });
    this.file.on("error", (error) => this.destroy(error));
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    let offset = 0;
    while (offset < chunk.length) {
      const take = Math.min(this.partSize - this.partBytes, chunk.length - offset);
      const slice = chunk.subarray(offset, offset + take);
      this.whole.update(slice);
      this.wholeMd5.update(slice);
      // The first part's hashes are the whole blob's up to there (copied when it closes): most blobs are one part,
      // and each is hashed twice instead of four times.
      if (this.parts.length > 0) {
        this.partSha.update(slice);
        this.partMd5.update(slice);
      }
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
    this.results = { sha256: this.whole.digest("hex"), md5: this.wholeMd5.digest("base64"), parts: this.parts };
    this.file.end((error?: Error | null) => callback(error));
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.file.destroy();
    callback(error);
  }

  private closePart(): void {
    if (this.parts.length === 0) {
      this.parts.push({ sha256: this.whole.copy().digest("hex"), md5: this.wholeMd5.copy().digest("base64") });
      this.partBytes = 0;
      return;
    }
    this.parts.push({ sha256: this.partSha.digest("hex"), md5: this.partMd5.digest("base64") });
    this.partSha = createHash("sha256");
    this.partMd5 = createHash("md5");
    this.partBytes = 0;
  }

  hashes(): { sha256: string; md5: string; parts: PartHashes[] } {
    if (!this.results) throw new Error("the staged blob was not finished");
    return this.results;
  }
}

export class S3BlobStore implements BlobStore {
  readonly description: string;
  private readonly agent: http.Agent;
  private readonly signingCache = new Map<string, ArrayBuffer>();
  private readonly retryBaseMs: number;
  private readonly idleTimeoutMs: number;

  constructor(private readonly options: S3BlobStoreOptions) {
    if (options.partSizeBytes < MIN_PART_SIZE_BYTES) {
      throw new Error(`the part size ${options.partSizeBytes} is below the ${MIN_PART_SIZE_BYTES}-byte minimum of R2 and S3`);
    }
    if (options.multipartThresholdBytes > MAX_SINGLE_PUT_BYTES) {
      throw new Error(`the multipart threshold ${options.multipartThresholdBytes} is above R2's single-upload limit of ${MAX_SINGLE_PUT_BYTES} bytes (5 GiB less 5 MiB)`);
    }
    this.description = `S3 bucket ${options.bucket} at ${options.endpoint}`;
    const secure = options.endpoint.startsWith("https:");
    this.agent = secure ? new https.Agent({ keepAlive: true, maxSockets: 32 }) : new http.Agent({ keepAlive: true, maxSockets: 32 });
    this.retryBaseMs = options.retryBaseMs ?? 250;
    this.idleTimeoutMs = options.idleTimeoutMs ?? 120_000;
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
    await this.putSmall("startup check", CHECK_KEY, body, "application/json");
  }

  /** For /ready: null when the bucket answers, else what is wrong. */
  async probe(): Promise<string | null> {
    try {
      await this.send({ operation: "readiness check", method: "HEAD", key: CHECK_KEY }, [200, 404]);
      return null;
    } catch (error) {
      return (error as Error).message;
    }
  }

  close(): void {
    this.agent.destroy();
  }

  async stat(digest: Digest): Promise<BlobInfo | null> {
    return this.head("stat", blobKey(digest));
  }

  async read(digest: Digest, range?: ByteRange): Promise<Readable | null> {
    const key = blobKey(digest);
    const headers: Record<string, string> = range ? { range: `bytes=${range.start}-${range.end}` } : {};
    return this.attempts({ operation: "read", method: "GET", key, headers }, async (request) => {
      const response = await this.exchange(request, true);
      const status = response.statusCode ?? 0;
      if (status === 404) {
        response.resume();
        return null;
      }
      if (status === 200 || status === 206) return response;
      throw this.failure(request, status, await collect(response));
    });
  }

  async stage(): Promise<StagedBlob> {
    const path = join(this.options.spoolDir, randomUUID());
    const sink = new SpoolWriter(path, this.options.partSizeBytes);
    return {
      sink,
      commit: async (digest, size) => {
        try {
          if (!sink.writableFinished) await finished(sink);
          const hashes = sink.hashes();
          if (sink.bytes !== size) throw new Error(`staged blob ${digest} has ${sink.bytes} bytes, expected ${size}`);
          if (`sha256:${hashes.sha256}` !== digest) {
            throw new Error(`staged blob's bytes hash to sha256:${hashes.sha256}, not to ${digest}; not uploading it`);
          }
          await this.uploadFile(digest, size, path, hashes);
        } finally {
          await rm(path, { force: true });
        }
      },
      abort: async () => {
        sink.destroy();
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

  private async putDigested(operation: string, key: string, digest: Digest, bytes: Uint8Array, contentType: string): Promise<void> {
    const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const sha256 = createHash("sha256").update(buffer).digest("hex");
    if (`sha256:${sha256}` !== digest) throw new Error(`${operation}: the bytes hash to sha256:${sha256}, not to ${digest}`);
    const existing = await this.head("stat", key);
    if (existing?.size === buffer.length) return;
    await this.putSmall(operation, key, buffer, contentType);
  }

  async getObject(key: string): Promise<Uint8Array | null> {
    const response = await this.send({ operation: "get", method: "GET", key }, [200, 404]);
    return response.status === 404 ? null : new Uint8Array(response.body);
  }

  async putObject(key: string, bytes: Uint8Array, contentType: string): Promise<void> {
    assertBuilderWritable(key);
    await this.putSmall("put", key, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), contentType);
  }

  // --- uploads ---------------------------------------------------------------------------------------------

  private async uploadFile(digest: Digest, size: number, path: string, hashes: ReturnType<SpoolWriter["hashes"]>): Promise<void> {
    const { log, multipartThresholdBytes, partSizeBytes } = this.options;
    const key = blobKey(digest);
    const existing = await this.head("stat", key);
    if (existing?.size === size) {
      log.info("s3-blob-present", { digest, size, key });
      return;
    }
    if (existing) log.warn("s3-blob-replaced", { digest, key, size, storedSize: existing.size });
    const started = performance.now();
    let parts = 1;
    if (size <= multipartThresholdBytes) {
      await this.putBody("put blob", key, BLOB_CONTENT_TYPE, {
        length: size,
        sha256: hashes.sha256,
        md5: hashes.md5,
        open: () => (size === 0 ? Buffer.alloc(0) : createReadStream(path)),
      });
    } else {
      parts = Math.ceil(size / partSizeBytes);
      if (parts > MAX_PARTS) {
        throw new Error(
          `blob ${digest} of ${size} bytes needs ${parts} parts of S3_PART_SIZE_BYTES=${partSizeBytes}; ` +
            `the limit is ${MAX_PARTS}: raise S3_PART_SIZE_BYTES`,
        );
      }
      await this.multipartUpload(digest, key, size, path, hashes.parts);
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

  private async multipartUpload(digest: Digest, key: string, size: number, path: string, partHashes: PartHashes[]): Promise<void> {
    const { partSizeBytes, partConcurrency, log } = this.options;
    const plan: PartPlan[] = [];
    for (let start = 0, number = 1; start < size; start += partSizeBytes, number++) {
      plan.push({ number, start, length: Math.min(partSizeBytes, size - start) });
    }
    if (plan.length !== partHashes.length) throw new Error(`internal: ${plan.length} parts planned, ${partHashes.length} hashed`);

    const created = await this.send(
      { operation: "create multipart upload", method: "POST", key, query: { uploads: "" }, headers: { "content-type": BLOB_CONTENT_TYPE } },
      [200],
    );
    const uploadId = xmlValue(created.body.toString("utf8"), "UploadId");
    if (!uploadId) throw new Error(`create multipart upload of ${key}: the answer names no UploadId`);
    try {
      const etags = await mapWithLimit(plan, partConcurrency, async (part) => {
        const hashes = partHashes[part.number - 1];
        const response = await this.send(
          {
            operation: `upload part ${part.number}/${plan.length}`,
            method: "PUT",
            key,
            query: { partNumber: String(part.number), uploadId },
            body: {
              length: part.length,
              sha256: hashes.sha256,
              md5: hashes.md5,
              open: () => createReadStream(path, { start: part.start, end: part.start + part.length - 1 }),
            },
          },
          [200],
        );
        const etag = response.headers.etag;
        if (typeof etag !== "string" || !etag) throw new Error(`upload part ${part.number} of ${key}: the answer has no ETag`);
        return etag;
      });
      await this.completeMultipart(key, uploadId, size, etags);
    } catch (error) {
      try {
        await this.send({ operation: "abort multipart upload", method: "DELETE", key, query: { uploadId } }, [200, 204, 404]);
        log.warn("s3-multipart-aborted", { digest, key, uploadId, reason: (error as Error).message });
      } catch (abortError) {
        // The bucket should also have a lifecycle rule that aborts stale uploads (see deploy/README.md).
        log.error("s3-multipart-abort-failed", { digest, key, uploadId, error: (abortError as Error).message });
      }
      throw error;
    }
    const stored = await this.head("verify upload", key);
    if (stored?.size !== size) {
      await this.send({ operation: "delete wrong upload", method: "DELETE", key }, [200, 204, 404]).catch(() => undefined);
      throw new Error(`multipart upload of ${key}: the object has ${stored?.size ?? "no"} bytes after completion, expected ${size}`);
    }
  }

  private async completeMultipart(key: string, uploadId: string, size: number, etags: string[]): Promise<void> {
    const xml =
      "<CompleteMultipartUpload>" +
      etags.map((etag, i) => `<Part><PartNumber>${i + 1}</PartNumber><ETag>${escapeXml(etag)}</ETag></Part>`).join("") +
      "</CompleteMultipartUpload>";
    const body = Buffer.from(xml);
    const request: S3Request = {
      operation: "complete multipart upload",
      method: "POST",
      key,
      query: { uploadId },
      headers: { "content-type": "application/xml" },
      body: bufferBody(body),
    };
    try {
      await this.send(request, [200]);
    } catch (error) {
      // A retried Complete whose first try went through (its answer lost) finds the upload gone.
      if (error instanceof S3Error && error.code === "NoSuchUpload") {
        const stored = await this.head("verify upload", key);
        if (stored?.size === size) return;
      }
      throw error;
    }
  }

  private async putSmall(operation: string, key: string, body: Buffer, contentType: string): Promise<void> {
    await this.putBody(operation, key, contentType, bufferBody(body));
  }

  private async putBody(operation: string, key: string, contentType: string, body: Body): Promise<void> {
    await this.send({ operation, method: "PUT", key, headers: { "content-type": contentType }, body }, [200]);
  }

  private async head(operation: string, key: string): Promise<BlobInfo | null> {
    const response = await this.send({ operation, method: "HEAD", key }, [200, 404]);
    if (response.status === 404) return null;
    const size = Number(response.headers["content-length"]);
    if (!Number.isSafeInteger(size)) throw new Error(`${operation} of ${key}: the answer has no Content-Length`);
    return { size };
  }

  // --- requests ----------------------------------------------------------------------------------------------

  /** Sends a request (with retries) and reads its whole answer; statuses outside `expected` throw an S3Error. */
  private send(request: S3Request, expected: number[]): Promise<S3Response> {
    return this.attempts(request, async (r) => {
      const response = await this.exchange(r, false);
      const status = response.statusCode ?? 0;
      const body = await collect(response);
      // CompleteMultipartUpload may answer 200 with an error in its body.
      const errorIn200 = status === 200 && r.method === "POST" && /^\s*(<\?xml[^>]*>)?\s*<Error>/.test(body.toString("utf8"));
      if (expected.includes(status) && !errorIn200) return { status, headers: response.headers, body };
      throw this.failure(r, status, body);
    });
  }

  /** Runs one request up to maxAttempts times while its failures are transient. */
  private async attempts<T>(request: S3Request, once: (request: S3Request) => Promise<T>): Promise<T> {
    const { maxAttempts, log } = this.options;
    for (let attempt = 1; ; attempt++) {
      try {
        return await once(request);
      } catch (error) {
        const s3 = error instanceof S3Error ? error : this.networkError(request, error);
        if (!s3.retryable || attempt >= maxAttempts) {
          if (s3.retryable && maxAttempts > 1) s3.message = `${s3.message} (gave up after ${attempt} tries)`;
          throw s3;
        }
        const delayMs = Math.round(Math.min(20_000, this.retryBaseMs * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2));
        log.warn("s3-retry", { operation: request.operation, key: request.key, attempt, delayMs, reason: s3.message });
        await sleep(delayMs);
      }
    }
  }

  private url(request: S3Request): URL {
    const path = request.key.split("/").map(encodeURIComponent).join("/");
    const url = new URL(`${this.options.endpoint}/${encodeURIComponent(this.options.bucket)}/${path}`);
    for (const [name, value] of Object.entries(request.query ?? {})) url.searchParams.set(name, value);
    return url;
  }

  /** One try: signs the request and sends it, streaming the body; resolves with the answer's head. */
  private async exchange(request: S3Request, streaming: boolean): Promise<IncomingMessage> {
    const { accessKeyId, secretAccessKey, region } = this.options;
    const url = this.url(request);
    const headers: Record<string, string> = {
      ...request.headers,
      "x-amz-content-sha256": request.body?.sha256 ?? EMPTY_SHA256,
    };
    if (request.body?.md5) headers["content-md5"] = request.body.md5;
    const signed = await new AwsV4Signer({
      method: request.method,
      url: url.toString(),
      headers,
      accessKeyId,
      secretAccessKey,
      service: "s3",
      region,
      cache: this.signingCache,
    }).sign();
    const outgoing: Record<string, string> = {};
    signed.headers.forEach((value, name) => {
      outgoing[name] = value;
    });
    if (request.body) outgoing["content-length"] = String(request.body.length);
    else if (request.method === "PUT" || request.method === "POST") outgoing["content-length"] = "0";
    const transport = url.protocol === "https:" ? https : http;
    return new Promise<IncomingMessage>((resolve, reject) => {
      const req = transport.request(signed.url, { method: request.method, headers: outgoing, agent: this.agent }, (response) => {
        // A blob streamed on to a slow client may pause for long; only whole-answer reads keep the idle timeout.
        if (streaming) req.setTimeout(0);
        resolve(response);
      });
      req.setTimeout(this.idleTimeoutMs, () => req.destroy(new TransientError(`no answer for ${this.idleTimeoutMs / 1000} s`)));
      req.on("error", reject);
      if (!request.body) {
        req.end();
        return;
      }
      const body = request.body.open();
      if (Buffer.isBuffer(body)) {
        req.end(body);
        return;
      }
      body.on("error", (error) => {
        // Our own spool file failed: not the network's fault, and no retry will help.
        req.destroy(new LocalReadError(`reading the spooled blob failed: ${error.message}`));
      });
      req.on("close", () => body.destroy());
      body.pipe(req);
    });
  }

  /** A request that got no HTTP answer: the network's fault (retried) unless it was our own file or a bug. */
  private networkError(request: S3Request, error: unknown): S3Error {
    const message = error instanceof Error ? error.message : String(error);
    const code = (error as NodeJS.ErrnoException)?.code;
    const what = `${request.operation} of ${request.key} at ${this.options.endpoint}`;
    const make = (text: string, retryable: boolean) =>
      new S3Error(`${what} failed: ${text}`, request.operation, request.key, null, typeof code === "string" ? code : null, retryable);
    if (error instanceof LocalReadError) return make(message, false);
    if (code === "ENOTFOUND" || code === "EAI_AGAIN") return make(`cannot resolve the host of S3_ENDPOINT (${message})`, true);
    if (code === "ECONNREFUSED") return make(`nothing answers at S3_ENDPOINT (${message})`, true);
    // Socket errors (ECONNRESET, EPIPE, ETIMEDOUT, TLS errors, ...) carry a code; our own timeout is a TransientError.
    const transient = error instanceof TransientError || (typeof code === "string" && !code.startsWith("ERR_INVALID"));
    return make(`${typeof code === "string" ? `${code} ` : ""}${message}`, transient);
  }

  private failure(request: S3Request, status: number, body: Buffer): S3Error {
    const text = body.toString("utf8");
    const code = xmlValue(text, "Code");
    const said = xmlValue(text, "Message");
    const { bucket, endpoint, accessKeyId } = this.options;
    const what = `${request.operation} of ${request.key} in bucket ${bucket} at ${endpoint}`;
    let hint = "";
    if (code === "SignatureDoesNotMatch") {
      hint = `the signature was refused: S3_SECRET_ACCESS_KEY is not the secret of S3_ACCESS_KEY_ID ${accessKeyId} (or S3_REGION is wrong; R2 wants auto)`;
    } else if (code === "InvalidAccessKeyId") {
      hint = `S3_ACCESS_KEY_ID ${accessKeyId} is not known to the endpoint`;
    } else if (code === "AccessDenied" || status === 403) {
      hint =
        request.method === "HEAD"
          ? `403 Forbidden: the credentials were refused (check S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY, and that the key may read and write bucket ${bucket})`
          : `access denied: the key ${accessKeyId} may not ${request.method === "GET" ? "read" : "write"} bucket ${bucket} (R2: give the API token Object Read & Write on it)`;
    } else if (code === "NoSuchBucket") {
      hint = `bucket ${bucket} does not exist at S3_ENDPOINT (create it, or fix S3_BUCKET)`;
    } else if (code === "XAmzContentSHA256Mismatch" || code === "BadDigest" || code === "InvalidDigest") {
      hint = "the server received other bytes than were sent (checksum mismatch)";
    }
    const detail = [code, said].filter(Boolean).join(": ") || (text.trim().slice(0, 200) || "no details");
    const retryable = TRANSIENT_STATUSES.has(status) || (code !== null && TRANSIENT_CODES.has(code)) ||
      code === "XAmzContentSHA256Mismatch" || code === "BadDigest";
    return new S3Error(
      `${what} failed with ${status} (${detail})${hint ? `: ${hint}` : ""}`,
      request.operation,
      request.key,
      status,
      code,
      retryable,
    );
  }
}

class TransientError extends Error {}
class LocalReadError extends Error {}

function bufferBody(body: Buffer): Body {
  return {
    length: body.length,
    sha256: createHash("sha256").update(body).digest("hex"),
    md5: createHash("md5").update(body).digest("base64"),
    open: () => body,
  };
}

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
