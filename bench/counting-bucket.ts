// A bucket for measuring the builder alone: an S3 endpoint that takes every byte the builder sends over HTTP, keeps
// the small objects (records, manifests, configs) and only counts the bytes of the large ones (layers).
//
// Why: in production the bucket is R2, on Cloudflare's machines, and costs the builder's cores nothing but the
// sending. Here the local stack's bucket (workerd with Miniflare's R2) runs on the same two cores and takes 1.5-2.5
// CPU-seconds of a cold build's layer phase; s3rver about as much. This one costs a few hundred milliseconds, so a
// cold build into it shows what the builder itself takes. It is a measuring instrument, not a store: it checks no
// signature and no body hash, and a large object's bytes cannot be read back (501).
import { randomUUID } from "node:crypto";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { escapeXml } from "../common/s3-xml.ts";

/** Objects up to this size are kept whole (a layer record, a manifest, a config, a job record). */
const KEPT_BYTES = 1024 * 1024;

interface CountedObject {
  size: number;
  contentType: string;
  /** The bytes, for objects up to KEPT_BYTES. */
  bytes: Buffer | null;
}

export interface CountingBucket {
  /** The builder's S3 settings for it. */
  s3Env: Record<string, string>;
  /** Bytes taken in object and part bodies. */
  bytesReceived(): number;
  close(): Promise<void>;
}

function xml(response: ServerResponse, status: number, body: string): void {
  const text = `<?xml version="1.0" encoding="UTF-8"?>\n${body}`;
  response.writeHead(status, { "content-type": "application/xml", "content-length": Buffer.byteLength(text) });
  response.end(text);
}

function s3Error(response: ServerResponse, status: number, code: string, message: string): void {
  xml(response, status, `<Error><Code>${code}</Code><Message>${escapeXml(message)}</Message></Error>`);
}

/** The body: kept when small, counted either way. */
async function readBody(request: IncomingMessage): Promise<{ size: number; bytes: Buffer | null }> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size <= KEPT_BYTES) chunks.push(chunk);
  }
  return { size, bytes: size <= KEPT_BYTES ? Buffer.concat(chunks) : null };
}

export async function startCountingBucket(bucket = "registry"): Promise<CountingBucket> {
  const objects = new Map<string, CountedObject>();
  const uploads = new Map<string, { key: string; contentType: string; parts: Map<number, number> }>();
  let received = 0;

  const handle = async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
    const url = new URL(request.url ?? "/", "http://bucket");
    const [name, ...rest] = decodeURIComponent(url.pathname).slice(1).split("/");
    const key = rest.join("/");
    const query = url.searchParams;
    if (name !== bucket) return s3Error(response, 404, "NoSuchBucket", `no bucket ${name}`);
    const method = request.method ?? "GET";

    if (method === "PUT" && query.has("uploadId")) {
      const upload = uploads.get(query.get("uploadId") ?? "");
      const { size } = await readBody(request);
      received += size;
      if (!upload) return s3Error(response, 404, "NoSuchUpload", "no such upload");
      const part = Number(query.get("partNumber"));
      upload.parts.set(part, size);
      response.writeHead(200, { etag: `"part-${part}"` });
      return void response.end();
    }
    if (method === "PUT") {
      const { size, bytes } = await readBody(request);
      received += size;
      objects.set(key, { size, bytes, contentType: request.headers["content-type"] ?? "application/octet-stream" });
      response.writeHead(200, { etag: '"counted"' });
      return void response.end();
    }
    if (method === "POST" && query.has("uploads")) {
      request.resume();
      const uploadId = randomUUID();
      const contentType = request.headers["content-type"] ?? "application/octet-stream";
      uploads.set(uploadId, { key, contentType, parts: new Map() });
      return xml(
        response,
        200,
        `<InitiateMultipartUploadResult><Bucket>${bucket}</Bucket><Key>${escapeXml(key)}</Key>` +
          `<UploadId>${uploadId}</UploadId></InitiateMultipartUploadResult>`,
      );
    }
    if (method === "POST" && query.has("uploadId")) {
      await readBody(request);
      const uploadId = query.get("uploadId") ?? "";
      const upload = uploads.get(uploadId);
      if (!upload) return s3Error(response, 404, "NoSuchUpload", "no such upload");
      uploads.delete(uploadId);
      const size = [...upload.parts.values()].reduce((sum, part) => sum + part, 0);
      objects.set(upload.key, { size, bytes: null, contentType: upload.contentType });
      return xml(
        response,
        200,
        `<CompleteMultipartUploadResult><Bucket>${bucket}</Bucket><Key>${escapeXml(key)}</Key>` +
          `<ETag>"counted"</ETag></CompleteMultipartUploadResult>`,
      );
    }
    request.resume();
    if (method === "DELETE") {
      if (query.has("uploadId")) uploads.delete(query.get("uploadId") ?? "");
      else objects.delete(key);
      response.writeHead(204);
      return void response.end();
    }
    if (method === "GET" && key === "") {
      const prefix = query.get("prefix") ?? "";
      const listed = [...objects.entries()].filter(([k]) => k.startsWith(prefix)).sort(([a], [b]) => (a < b ? -1 : 1));
      const contents = listed
        .map(
          ([k, object]) =>
            `<Contents><Key>${escapeXml(k)}</Key><Size>${object.size}</Size>` +
            `<LastModified>${new Date().toISOString()}</LastModified></Contents>`,
        )
        .join("");
      return xml(
        response,
        200,
        `<ListBucketResult><Name>${bucket}</Name><Prefix>${escapeXml(prefix)}</Prefix>` +
          `<KeyCount>${listed.length}</KeyCount><IsTruncated>false</IsTruncated>${contents}</ListBucketResult>`,
      );
    }
    if (method === "GET" || method === "HEAD") {
      const object = objects.get(key);
      if (!object) {
        if (method === "HEAD") {
          response.writeHead(404);
          return void response.end();
        }
        return s3Error(response, 404, "NoSuchKey", "The specified key does not exist.");
      }
      if (method === "GET" && !object.bytes)
        return s3Error(response, 501, "NotImplemented", `the counting bucket keeps no bodies over ${KEPT_BYTES} bytes`);
      response.writeHead(200, { "content-length": object.size, "content-type": object.contentType, etag: '"counted"' });
      return void response.end(method === "HEAD" ? undefined : object.bytes);
    }
    return s3Error(response, 501, "NotImplemented", `the counting bucket does not do ${method} ${url.search}`);
  };

  const server = http.createServer((request, response) => {
    handle(request, response).catch((error: unknown) => {
      if (!response.headersSent) s3Error(response, 500, "InternalError", String(error));
      else response.destroy();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    s3Env: {
      BUILDER_STORE: "s3",
      S3_ENDPOINT: `http://127.0.0.1:${port}`,
      S3_BUCKET: bucket,
      S3_ACCESS_KEY_ID: "counting-bucket",
      S3_SECRET_ACCESS_KEY: "counting-bucket-secret",
      S3_REGION: "auto",
    },
    bytesReceived: () => received,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
