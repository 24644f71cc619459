// A local S3 server for tests: @20minutes/s3rver (which checks SigV4 signatures: a wrong secret gets 403
// SignatureDoesNotMatch) behind a small front that adds what s3rver lacks and what the tests need:
//
//   - body checks as R2 and S3 make them: a signed x-amz-content-sha256 or a Content-MD5 that doesn't match the
//     body gets 400 XAmzContentSHA256Mismatch / BadDigest (s3rver stores whatever arrives);
//   - AbortMultipartUpload (s3rver answers it 405 MethodNotAllowed, after checking the signature): the front
//     forwards the DELETE, and when s3rver's answer shows the signature was good, removes the upload's parts
//     from s3rver's folder and answers 204, as S3 does;
//   - a record of every request, and faults on demand: an S3 error status, a connection dropped before the
//     answer or after some bytes of the body, an answer that never comes, a corrupted body.
import S3rver from "@20minutes/s3rver";
import { AwsV4Signer } from "aws4fetch";
import { createHash } from "node:crypto";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const S3RVER_KEY = "S3RVER";
export const S3RVER_SECRET = "S3RVER";

export interface RecordedRequest {
  method: string;
  key: string;
  query: Record<string, string>;
  /** Body bytes received (0 for a body cut short by a fault before the end). */
  bodyBytes: number;
  /** The status answered, or "dropped". */
  outcome: number | "dropped";
}

export type FaultAction =
  | { kind: "status"; status: number; code: string }
  /** Close the connection once the whole request has arrived, without answering. */
  | { kind: "drop" }
  /** Close the connection after this many body bytes. */
  | { kind: "drop-after"; bytes: number }
  /** Take the whole request and never answer (the client must give up on its own). */
  | { kind: "stall" }
  /** Flip one byte of the body before the checks (the body no longer matches its signed sha256). */
  | { kind: "corrupt" };

export interface Fault {
  match: (request: { method: string; key: string; query: Record<string, string> }) => boolean;
  action: FaultAction;
  /** How many matching requests it hits (Infinity: all). */
  times: number;
}

export interface TestS3 {
  /** What the builder is given as S3_ENDPOINT (the front). */
  endpoint: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** s3rver's data folder. */
  directory: string;
  requests: RecordedRequest[];
  faults: Fault[];
  /** Objects under a prefix, with sizes (ListObjects through the front, signed). */
  list(prefix?: string): Promise<{ key: string; size: number }[]>;
  /** An object's bytes and content type, or null. */
  get(key: string): Promise<{ bytes: Buffer; contentType: string | null } | null>;
  /** Multipart uploads begun and neither completed nor aborted (s3rver keeps each as a folder). */
  pendingUploads(): Promise<string[]>;
  stop(): Promise<void>;
}

function parseTarget(url: string, bucket: string): { key: string; query: Record<string, string> } {
  const parsed = new URL(url, "http://front");
  const path = decodeURIComponent(parsed.pathname);
  const prefix = `/${bucket}/`;
  const key = path.startsWith(prefix) ? path.slice(prefix.length) : path === `/${bucket}` ? "" : path;
  return { key, query: Object.fromEntries(parsed.searchParams) };
}

function s3Error(response: ServerResponse, status: number, code: string, message: string): void {
  const body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message></Error>`;
  response.writeHead(status, { "content-type": "application/xml", "content-length": Buffer.byteLength(body) });
  response.end(body);
}

export async function startTestS3(options: { bucket?: string } = {}): Promise<TestS3> {
  const bucket = options.bucket ?? "registry";
  const directory = await mkdtemp(join(tmpdir(), "s3rver-"));
  const s3rver = new S3rver({
    port: 0,
    address: "127.0.0.1",
    silent: true,
    directory,
    configureBuckets: [{ name: bucket }],
  });
  const backend = await s3rver.run();
  const requests: RecordedRequest[] = [];
  const faults: Fault[] = [];

  const takeFault = (target: { method: string; key: string; query: Record<string, string> }): FaultAction | null => {
    const fault = faults.find((f) => f.times > 0 && f.match(target));
    if (!fault) return null;
    fault.times--;
    return fault.action;
  };

  const forward = (
    incoming: IncomingMessage,
    body: Buffer,
    response: ServerResponse,
    after?: (status: number) => boolean,
  ) =>
    new Promise<number>((resolve, reject) => {
      const headers = { ...incoming.headers, "content-length": String(body.length) };
      delete headers["transfer-encoding"];
      const upstream = http.request(
        { host: "127.0.0.1", port: backend.port, method: incoming.method, path: incoming.url, headers },
        (answer) => {
          const status = answer.statusCode ?? 0;
          if (after?.(status)) {
            answer.resume();
            resolve(status);
            return;
          }
          response.writeHead(status, answer.headers);
          answer.pipe(response);
          answer.on("end", () => resolve(status));
        },
      );
      upstream.on("error", reject);
      upstream.end(body);
    });

  const front = http.createServer((incoming, response) => {
    const method = incoming.method ?? "GET";
    const { key, query } = parseTarget(incoming.url ?? "/", bucket);
    const record: RecordedRequest = { method, key, query, bodyBytes: 0, outcome: "dropped" };
    requests.push(record);
    const fault = takeFault({ method, key, query });
    const chunks: Buffer[] = [];
    incoming.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      record.bodyBytes += chunk.length;
      if (fault?.kind === "drop-after" && record.bodyBytes >= fault.bytes) incoming.socket.destroy();
    });
    incoming.on("end", () => {
      void (async () => {
        let body = Buffer.concat(chunks);
        if (fault?.kind === "drop") {
          incoming.socket.destroy();
          return;
        }
        if (fault?.kind === "stall") return;
        if (fault?.kind === "status") {
          record.outcome = fault.status;
          s3Error(response, fault.status, fault.code, "injected by the test");
          return;
        }
        if (fault?.kind === "corrupt" && body.length > 0) {
          body = Buffer.from(body);
          body[Math.floor(body.length / 2)] ^= 0xff;
        }
        const signedHash = incoming.headers["x-amz-content-sha256"];
        if (typeof signedHash === "string" && /^[0-9a-f]{64}$/.test(signedHash)) {
          if (createHash("sha256").update(body).digest("hex") !== signedHash) {
            record.outcome = 400;
            s3Error(
              response,
              400,
              "XAmzContentSHA256Mismatch",
              "The provided 'x-amz-content-sha256' header does not match what was computed.",
            );
            return;
          }
        }
        const md5 = incoming.headers["content-md5"];
        if (typeof md5 === "string" && createHash("md5").update(body).digest("base64") !== md5) {
          record.outcome = 400;
          s3Error(response, 400, "BadDigest", "The Content-MD5 you specified did not match what we received.");
          return;
        }
        if (method === "DELETE" && query.uploadId !== undefined) {
          // s3rver checks the signature, then refuses the method: 405 means the request was good.
          const status = await forward(incoming, body, response, (s) => s === 405);
          if (status === 405) {
            await rm(join(directory, bucket, "._S3rver_uploads", query.uploadId), { recursive: true, force: true });
            record.outcome = 204;
            response.writeHead(204);
            response.end();
          } else {
            record.outcome = status;
          }
          return;
        }
        record.outcome = await forward(incoming, body, response);
      })().catch((error: unknown) => {
        record.outcome = 500;
        if (!response.headersSent) s3Error(response, 500, "InternalError", String(error));
        else response.destroy();
      });
    });
  });
  await new Promise<void>((resolve) => front.listen(0, "127.0.0.1", resolve));
  const endpoint = `http://127.0.0.1:${(front.address() as AddressInfo).port}`;

  // The tests' own reads go straight to s3rver, so they stay out of `requests`.
  const signedFetch = async (method: string, path: string, query: Record<string, string> = {}) => {
    const url = new URL(`http://127.0.0.1:${backend.port}/${bucket}${path}`);
    for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
    const signed = await new AwsV4Signer({
      method,
      url: url.toString(),
      accessKeyId: S3RVER_KEY,
      secretAccessKey: S3RVER_SECRET,
      service: "s3",
      region: "auto",
    }).sign();
    return fetch(signed.url, { method, headers: signed.headers });
  };

  return {
    endpoint,
    bucket,
    accessKeyId: S3RVER_KEY,
    secretAccessKey: S3RVER_SECRET,
    directory,
    requests,
    faults,
    async list(prefix = "") {
      const objects: { key: string; size: number }[] = [];
      let marker = "";
      for (;;) {
        const response = await signedFetch("GET", "", { prefix, marker, "max-keys": "1000" });
        const xml = await response.text();
        if (response.status !== 200) throw new Error(`list failed: ${response.status} ${xml}`);
        for (const match of xml.matchAll(/<Contents>([\s\S]*?)<\/Contents>/g)) {
          const key = /<Key>([^<]*)<\/Key>/.exec(match[1])?.[1] ?? "";
          const size = Number(/<Size>(\d+)<\/Size>/.exec(match[1])?.[1]);
          objects.push({ key, size });
        }
        if (!/<IsTruncated>true<\/IsTruncated>/.test(xml) || objects.length === 0) break;
        marker = objects[objects.length - 1].key;
      }
      return objects.sort((a, b) => a.key.localeCompare(b.key));
    },
    async get(key) {
      const response = await signedFetch("GET", `/${key}`);
      if (response.status === 404) return null;
      if (response.status !== 200) throw new Error(`get ${key} failed: ${response.status} ${await response.text()}`);
      return { bytes: Buffer.from(await response.arrayBuffer()), contentType: response.headers.get("content-type") };
    },
    async pendingUploads() {
      try {
        return await readdir(join(directory, bucket, "._S3rver_uploads"));
      } catch {
        return [];
      }
    },
    async stop() {
      front.closeAllConnections();
      await new Promise<void>((resolve) => front.close(() => resolve()));
      await s3rver.close();
      await rm(directory, { recursive: true, force: true });
    },
  };
}
