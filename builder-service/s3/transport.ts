// One S3 request at a time: signed with SigV4 by aws4fetch's signer, sent with node:http(s) over kept-alive
// connections, its body streamed, and tried again with exponential backoff while its failures are transient
// (5xx, 429, S3's RequestTimeout, dropped or stalled connections), S3_MAX_ATTEMPTS tries in all.
import { createHash } from "node:crypto";
import http, { type IncomingMessage } from "node:http";
import https from "node:https";
import type { Readable } from "node:stream";
import { AwsV4Signer } from "aws4fetch";
import type { BlobInfo } from "../blob-store.ts";
import type { Logger } from "../log.ts";
import { answerError, networkError, NoAnswerError, S3Error, SpoolReadError, type S3Target } from "./errors.ts";
import { parseErrorDocument } from "./xml.ts";

const EMPTY_SHA256 = createHash("sha256").digest("hex");

export interface S3Body {
  length: number;
  /** Hex sha256 of the body: signed as x-amz-content-sha256, so the server refuses a body changed on the way. */
  sha256: string;
  /** A fresh stream of the body for each try. */
  open: () => Readable | Buffer;
}

export interface S3Request {
  operation: string;
  method: "GET" | "HEAD" | "PUT" | "POST" | "DELETE";
  key: string;
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: S3Body;
}

export interface S3Response {
  status: number;
  headers: IncomingMessage["headers"];
  body: Buffer;
}

export interface S3TransportOptions extends S3Target {
  secretAccessKey: string;
  region: string;
  maxAttempts: number;
  log: Logger;
  /** First retry delay; doubles with each try (with jitter). */
  retryBaseMs: number;
  /** A request with no progress for this long is dropped and retried. */
  idleTimeoutMs: number;
}

/** A body in hand; its sha256 is computed here unless the caller has it already. */
export function bufferBody(body: Buffer, sha256 = createHash("sha256").update(body).digest("hex")): S3Body {
  return { length: body.length, sha256, open: () => body };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export class S3Transport {
  private readonly agent: http.Agent;
  private readonly signingCache = new Map<string, ArrayBuffer>();

  constructor(private readonly options: S3TransportOptions) {
    const secure = options.endpoint.startsWith("https:");
    this.agent = secure
      ? new https.Agent({ keepAlive: true, maxSockets: 32 })
      : new http.Agent({ keepAlive: true, maxSockets: 32 });
  }

  close(): void {
    this.agent.destroy();
  }

  /** Sends a request (with retries) and reads its whole answer; statuses outside `expected` throw an S3Error. */
  send(request: S3Request, expected: number[]): Promise<S3Response> {
    return this.attempts(request, async (r) => {
      const response = await this.exchange(r, false);
      const status = response.statusCode ?? 0;
      const body = await collect(response);
      // CompleteMultipartUpload may answer 200 with an error in its body.
      const errorIn200 = status === 200 && r.method === "POST" && parseErrorDocument(body.toString("utf8")) !== null;
      if (expected.includes(status) && !errorIn200) return { status, headers: response.headers, body };
      throw answerError(this.options, r, status, body);
    });
  }

  /** A GET whose answer (200 or 206) is handed on unread, to be streamed; null when there is no such object. */
  async stream(request: S3Request): Promise<Readable | null> {
    return this.attempts(request, async (r) => {
      const response = await this.exchange(r, true);
      const status = response.statusCode ?? 0;
      if (status === 404) {
        response.resume();
        return null;
      }
      if (status === 200 || status === 206) return response;
      throw answerError(this.options, r, status, await collect(response));
    });
  }

  /** HEAD: the object's size, or null when there is none. */
  async head(operation: string, key: string): Promise<BlobInfo | null> {
    const response = await this.send({ operation, method: "HEAD", key }, [200, 404]);
    if (response.status === 404) return null;
    const size = Number(response.headers["content-length"]);
    if (!Number.isSafeInteger(size)) throw new Error(`${operation} of ${key}: the answer has no Content-Length`);
    return { size };
  }

  async put(operation: string, key: string, contentType: string, body: S3Body): Promise<void> {
    await this.send({ operation, method: "PUT", key, headers: { "content-type": contentType }, body }, [200]);
  }

  /** Runs one request up to maxAttempts times while its failures are transient. */
  private async attempts<T>(request: S3Request, once: (request: S3Request) => Promise<T>): Promise<T> {
    const { maxAttempts, log, retryBaseMs } = this.options;
    for (let attempt = 1; ; attempt++) {
      try {
        return await once(request);
      } catch (error) {
        const s3 = error instanceof S3Error ? error : networkError(this.options, request, error);
        if (!s3.retryable || attempt >= maxAttempts) {
          if (s3.retryable && maxAttempts > 1) s3.message = `${s3.message} (gave up after ${attempt} tries)`;
          throw s3;
        }
        const delayMs = Math.round(Math.min(20_000, retryBaseMs * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2));
        log.warn("s3-retry", { operation: request.operation, key: request.key, attempt, delayMs, reason: s3.message });
        await sleep(delayMs);
      }
    }
  }

  private url(request: S3Request): URL {
    const path = request.key.split("/").map(encodeURIComponent).join("/");
    // The empty key is the bucket itself (listings, DeleteObjects): /<bucket>, without a trailing slash.
    const bucket = `${this.options.endpoint}/${encodeURIComponent(this.options.bucket)}`;
    const url = new URL(request.key === "" ? bucket : `${bucket}/${path}`);
    for (const [name, value] of Object.entries(request.query ?? {})) url.searchParams.set(name, value);
    return url;
  }

  /** One try: signs the request and sends it, streaming the body; resolves with the answer's head. */
  private async exchange(request: S3Request, streaming: boolean): Promise<IncomingMessage> {
    const { accessKeyId, secretAccessKey, region, idleTimeoutMs } = this.options;
    const url = this.url(request);
    const headers: Record<string, string> = {
      ...request.headers,
      "x-amz-content-sha256": request.body?.sha256 ?? EMPTY_SHA256,
    };
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
      const req = transport.request(
        signed.url,
        { method: request.method, headers: outgoing, agent: this.agent },
        (response) => {
          // A blob streamed on to a slow client may pause for long; only whole-answer reads keep the idle timeout.
          if (streaming) req.setTimeout(0);
          resolve(response);
        },
      );
      req.setTimeout(idleTimeoutMs, () => req.destroy(new NoAnswerError(`no answer for ${idleTimeoutMs / 1000} s`)));
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
        req.destroy(new SpoolReadError(`reading the spooled blob failed: ${error.message}`));
      });
      req.on("close", () => body.destroy());
      body.pipe(req);
    });
  }
}

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
