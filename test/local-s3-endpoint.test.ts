// The local S3 endpoint (scripts/local-s3-endpoint/): the builder's real S3 blob store writes through it into
// the Miniflare R2 bucket, and a second worker bound to that bucket (as the registry worker is) reads the
// objects back. One Miniflare for the file: a reader worker (the entry) and the endpoint on its own port.
import { createHash, randomBytes } from "node:crypto";
import http from "node:http";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { AwsV4Signer } from "aws4fetch";
import { Miniflare } from "miniflare";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { Digest } from "../common/digest.ts";
import type { S3StoreConfig } from "../builder-service/config.ts";
import { S3Error } from "../builder-service/s3/errors.ts";
import { S3BlobStore } from "../builder-service/s3/store.ts";
import {
  LOCAL_S3_BUCKET_BINDING,
  localS3EndpointWorker,
  randomS3Credentials,
  s3EndpointUrl,
  type LocalS3Credentials,
  type LocalS3EndpointWorker,
} from "../scripts/local-s3-endpoint/options.ts";
import { startWorkerdDyingWithParent } from "../scripts/workerd-process.ts";
import { digestOf, writeBlob } from "./support/staged-blobs.ts";
import { RecordingLogger } from "./support/recording-logger.ts";
import { startHttpFront, type HttpFront } from "./support/http-front.ts";

const PROJECT_ROOT = fileURLToPath(new URL("../", import.meta.url));
const MiB = 1024 * 1024;
const BUCKET = "nix-edge-registry";
const EMPTY_SHA256 = createHash("sha256").digest("hex");

/** What the registry worker does with a blob, reduced: read the key from the bucket and serve it. */
const READER_SCRIPT = `
export default {
  async fetch(request, env) {
    const key = decodeURIComponent(new URL(request.url).pathname.slice(1));
    const object = await env.${LOCAL_S3_BUCKET_BINDING}.get(key);
    if (object === null) return new Response("no such object", { status: 404 });
    const headers = new Headers();
    object.writeHttpMetadata(headers);
    headers.set("x-object-etag", object.etag);
    return new Response(object.body, { headers });
  },
};`;

let miniflare: Miniflare;
let endpointWorker: LocalS3EndpointWorker;
let endpoint: string;
let credentials: LocalS3Credentials;
let scratch: string;
const log = new RecordingLogger();

let spoolCount = 0;
async function newStore(overrides: Partial<Omit<S3StoreConfig, "kind">> = {}): Promise<S3BlobStore> {
  const store = new S3BlobStore({
    endpoint,
    bucket: BUCKET,
    accessKeyId: credentials.accessKeyId,
    secretAccessKey: credentials.secretAccessKey,
    region: "auto",
    multipartThresholdBytes: 5 * MiB,
    partSizeBytes: 5 * MiB,
    partConcurrency: 2,
    maxAttempts: 2,
    spoolDir: join(scratch, `spool-${spoolCount++}`),
    log,
    retryBaseMs: 20,
    ...overrides,
  });
  await store.init();
  return store;
}

const keyOf = (digest: Digest) => `blobs/sha256/${digest.slice("sha256:".length)}`;

/** An object as the reader worker serves it, or null. */
async function readThroughWorker(
  key: string,
): Promise<{ bytes: Buffer; contentType: string | null; etag: string | null } | null> {
  const response = await miniflare.dispatchFetch(`http://reader.local/${encodeURIComponent(key)}`);
  if (response.status === 404) {
    await response.arrayBuffer();
    return null;
  }
  expect(response.status).toBe(200);
  return {
    bytes: Buffer.from(await response.arrayBuffer()),
    contentType: response.headers.get("content-type"),
    etag: response.headers.get("x-object-etag"),
  };
}

async function bucket() {
  return miniflare.getR2Bucket(LOCAL_S3_BUCKET_BINDING, "reader");
}

/** A request signed as the builder signs them (aws4fetch), sent with fetch; `sha256` is what the client claims. */
async function signedFetch(
  method: string,
  path: string,
  options: { body?: Buffer; sha256?: string; headers?: Record<string, string>; secret?: string } = {},
): Promise<{ status: number; headers: Headers; text: string }> {
  const url = `${endpoint}${path}`;
  const body = options.body;
  const signed = await new AwsV4Signer({
    method,
    url,
    headers: {
      ...options.headers,
      "x-amz-content-sha256": options.sha256 ?? (body ? createHash("sha256").update(body).digest("hex") : EMPTY_SHA256),
    },
    accessKeyId: credentials.accessKeyId,
    secretAccessKey: options.secret ?? credentials.secretAccessKey,
    service: "s3",
    region: "auto",
  }).sign();
  const response = await fetch(signed.url, { method, headers: signed.headers, body });
  return { status: response.status, headers: response.headers, text: await response.text() };
}

const codeOf = (xml: string) => /<Code>([^<]*)<\/Code>/.exec(xml)?.[1] ?? null;

/**
 * An HTTP front for the endpoint that refuses requests matching `refuse` itself (400 InvalidArgument, which the
 * store does not retry) and forwards the rest untouched (Host included, so signatures still hold).
 */
async function startRefusingFront(refuse: (method: string, url: URL) => boolean): Promise<HttpFront> {
  return startHttpFront(endpoint, (request, response, forward) => {
    if (!refuse(request.method ?? "GET", new URL(request.url ?? "/", "http://front"))) return forward();
    request.resume();
    const xml = `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidArgument</Code><Message>refused by the test front</Message></Error>`;
    response.writeHead(400, { "content-type": "application/xml", "content-length": Buffer.byteLength(xml) });
    response.end(xml);
  });
}

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "local-s3-endpoint-test-"));
  credentials = randomS3Credentials();
  endpointWorker = await localS3EndpointWorker({ port: 0, bucket: BUCKET, credentials });
  await startWorkerdDyingWithParent(join(PROJECT_ROOT, "node_modules/.cache/nix-edge-registry"));
  miniflare = new Miniflare({
    workers: [
      {
        name: "reader",
        modules: true,
        script: READER_SCRIPT,
        compatibilityDate: "2026-04-26",
        r2Buckets: { [LOCAL_S3_BUCKET_BINDING]: BUCKET },
      },
      endpointWorker.options,
    ],
    r2Persist: join(scratch, "state", "v3", "r2"),
    host: "127.0.0.1",
    port: 0,
  });
  await miniflare.ready;
  endpoint = await s3EndpointUrl(miniflare);
});

afterAll(async () => {
  await miniflare?.dispose();
  await endpointWorker?.dispose();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

beforeEach(() => {
  log.clear();
});

describe("the local S3 endpoint over the Miniflare R2 bucket", () => {
  it("listens on its own port and answers a readiness probe without credentials", async () => {
    expect(endpoint).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(new URL(endpoint).port).not.toBe(new URL(await miniflare.ready).port);
    const response = await fetch(`${endpoint}/`);
    expect(response.status).toBe(200);
    expect(await response.text()).toContain(BUCKET);
  });

  it("takes a small blob from the builder's S3 store with one PUT, and the bucket's other worker serves the same bytes and content type", async () => {
    const store = await newStore();
    const bytes = randomBytes(300 * 1024);
    const digest = await writeBlob(store, bytes);
    const served = await readThroughWorker(keyOf(digest));
    expect(served?.bytes.equals(bytes)).toBe(true);
    expect(served?.contentType).toBe("application/octet-stream");
    // A single PUT: R2's etag is the body's md5, not a multipart etag.
    expect(served?.etag).toBe(createHash("md5").update(bytes).digest("hex"));
    expect(log.entries.find((entry) => entry.event === "s3-upload")?.fields.parts).toBe(1);

    expect(await store.stat(digest)).toEqual({ size: bytes.length });
    const whole = await store.read(digest);
    expect(Buffer.concat(await whole!.toArray()).equals(bytes)).toBe(true);
    const slice = await store.read(digest, { start: 10, end: 19 });
    expect(Buffer.concat(await slice!.toArray()).equals(bytes.subarray(10, 20))).toBe(true);
    const missing: Digest = `sha256:${"0".repeat(64)}`;
    expect(await store.stat(missing)).toBeNull();
    expect(await store.read(missing)).toBeNull();
    // An empty blob (a zero-length PUT) is an object too.
    const empty = await writeBlob(store, Buffer.alloc(0));
    expect((await readThroughWorker(keyOf(empty)))?.bytes.length).toBe(0);
    expect(await store.stat(empty)).toEqual({ size: 0 });
    // Committing the same digest again finds it there (HEAD) and uploads nothing.
    log.clear();
    await writeBlob(store, bytes);
    expect(log.entries.map((entry) => entry.event)).toContain("s3-blob-present");
    store.close();
  });

  it("takes a 12 MiB blob as a multipart upload of 5 MiB parts, readable whole and by ranges across parts", async () => {
    const store = await newStore();
    const bytes = randomBytes(12 * MiB + 4321);
    const digest = await writeBlob(store, bytes);
    expect(log.entries.find((entry) => entry.event === "s3-upload")?.fields.parts).toBe(3);
    const served = await readThroughWorker(keyOf(digest));
    expect(served?.bytes.length).toBe(bytes.length);
    expect(served?.bytes.equals(bytes)).toBe(true);
    expect(served?.contentType).toBe("application/octet-stream");
    expect(served?.etag).toMatch(/-3$/);
    const head = await (await bucket()).head(keyOf(digest));
    expect(head?.size).toBe(bytes.length);
    expect(head?.httpMetadata?.contentType).toBe("application/octet-stream");

    const across = { start: 5 * MiB - 100, end: 10 * MiB + 99 };
    const slice = await store.read(digest, across);
    expect(Buffer.concat(await slice!.toArray()).equals(bytes.subarray(across.start, across.end + 1))).toBe(true);
    const tail = await store.read(digest, { start: bytes.length - 5, end: bytes.length + 1000 });
    expect(Buffer.concat(await tail!.toArray()).equals(bytes.subarray(bytes.length - 5))).toBe(true);
    store.close();
  });

  it("refuses wrong credentials, unsigned requests and other buckets as R2 does, naming the problem", async () => {
    const good = await newStore();
    await good.check();
    expect(await readThroughWorker("builder-cache/startup-check")).not.toBeNull();
    expect(await good.probe()).toBeNull();
    good.close();

    const wrongSecret = await newStore({ secretAccessKey: randomS3Credentials().secretAccessKey });
    const refused = await wrongSecret.check().then(
      () => null,
      (error: unknown) => error,
    );
    expect(refused).toBeInstanceOf(S3Error);
    expect((refused as S3Error).status).toBe(403);
    expect((refused as S3Error).code).toBe("SignatureDoesNotMatch");
    expect((refused as S3Error).message).toMatch(/S3_SECRET_ACCESS_KEY/);
    wrongSecret.close();

    const wrongKey = await newStore({ accessKeyId: "AKIANOTTHELOCALKEY00" });
    await expect(wrongKey.check()).rejects.toMatchObject({ status: 403, code: "InvalidAccessKeyId" });
    wrongKey.close();

    const wrongRegion = await newStore({ region: "eu-west-1" });
    await expect(wrongRegion.check()).rejects.toMatchObject({ status: 400, code: "AuthorizationHeaderMalformed" });
    wrongRegion.close();

    const otherBucket = await newStore({ bucket: "some-other-bucket" });
    await expect(otherBucket.check()).rejects.toMatchObject({ status: 404, code: "NoSuchBucket" });
    otherBucket.close();

    const unsigned = await fetch(`${endpoint}/${BUCKET}/builder-cache/unsigned`, { method: "PUT", body: "hello" });
    expect(unsigned.status).toBe(403);
    expect(unsigned.headers.get("content-type")).toBe("application/xml");
    const xml = await unsigned.text();
    expect(xml).toMatch(/^<\?xml version="1\.0" encoding="UTF-8"\?><Error><Code>AccessDenied<\/Code><Message>/);
    expect(await (await bucket()).head("builder-cache/unsigned")).toBeNull();

    // A signature made for one method does not pass for another (the request is signed again, not trusted).
    const signed = await new AwsV4Signer({
      method: "GET",
      url: `${endpoint}/${BUCKET}/builder-cache/startup-check`,
      headers: { "x-amz-content-sha256": EMPTY_SHA256 },
      accessKeyId: credentials.accessKeyId,
      secretAccessKey: credentials.secretAccessKey,
      service: "s3",
      region: "auto",
    }).sign();
    const replayed = await fetch(signed.url, { method: "DELETE", headers: signed.headers });
    expect(replayed.status).toBe(403);
    expect(codeOf(await replayed.text())).toBe("SignatureDoesNotMatch");
    expect(await (await bucket()).head("builder-cache/startup-check")).not.toBeNull();
  });

  it("refuses a signed PUT whose body doesn't match its x-amz-content-sha256 or Content-MD5, and stores nothing", async () => {
    const key = "builder-cache/test/mismatch";
    const body = randomBytes(64 * 1024);
    const other = createHash("sha256").update("other bytes").digest("hex");
    const mismatch = await signedFetch("PUT", `/${BUCKET}/${key}`, {
      body,
      sha256: other,
      headers: { "content-type": "application/octet-stream" },
    });
    expect(mismatch.status).toBe(400);
    expect(codeOf(mismatch.text)).toBe("XAmzContentSHA256Mismatch");
    expect(await (await bucket()).head(key)).toBeNull();

    const badMd5 = await signedFetch("PUT", `/${BUCKET}/${key}`, {
      body,
      headers: { "content-md5": createHash("md5").update("other bytes").digest("base64") },
    });
    expect(badMd5.status).toBe(400);
    expect(codeOf(badMd5.text)).toBe("BadDigest");
    expect(await (await bucket()).head(key)).toBeNull();

    // The same request with the right hashes goes through.
    const good = await signedFetch("PUT", `/${BUCKET}/${key}`, {
      body,
      headers: { "content-md5": createHash("md5").update(body).digest("base64"), "content-type": "application/x-test" },
    });
    expect(good.status).toBe(200);
    const stored = await readThroughWorker(key);
    expect(stored?.bytes.equals(body)).toBe(true);
    expect(stored?.contentType).toBe("application/x-test");
    const deleted = await signedFetch("DELETE", `/${BUCKET}/${key}`);
    expect(deleted.status).toBe(204);
    expect(await (await bucket()).head(key)).toBeNull();
  });

  it("never stores a body shorter than its Content-Length (the client went away mid-body)", async () => {
    /** A signed PUT of an unsigned payload (only the length protects it) that sends `sent` of `declared` bytes. */
    async function putCut(key: string, declared: number, sent: number): Promise<number | "hung up"> {
      const url = new URL(`${endpoint}/${BUCKET}/${key}`);
      const signed = await new AwsV4Signer({
        method: "PUT",
        url: url.toString(),
        headers: { "x-amz-content-sha256": "UNSIGNED-PAYLOAD" },
        accessKeyId: credentials.accessKeyId,
        secretAccessKey: credentials.secretAccessKey,
        service: "s3",
        region: "auto",
      }).sign();
      const headers: Record<string, string> = { "content-length": String(declared) };
      signed.headers.forEach((value, name) => {
        headers[name] = value;
      });
      return new Promise((resolve) => {
        const request = http.request(url, { method: "PUT", headers });
        request.on("error", () => resolve("hung up"));
        request.on("response", (response) => {
          response.resume();
          resolve(response.statusCode ?? 0);
        });
        request.write(randomBytes(sent), () => {
          if (sent === declared) request.end();
          else setTimeout(() => request.destroy(), 200);
        });
      });
    }
    // The same request, whole, is stored: only the missing bytes make the difference.
    expect(await putCut("builder-cache/test/whole", 1024 * 1024, 1024 * 1024)).toBe(200);
    expect((await (await bucket()).head("builder-cache/test/whole"))?.size).toBe(1024 * 1024);

    expect(await putCut("builder-cache/test/short", 1024 * 1024, 300 * 1024)).toBe("hung up");
    // Give the endpoint time to see the connection end and fail the put.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(await (await bucket()).head("builder-cache/test/short")).toBeNull();
  });

  it("refuses an UploadPart whose body doesn't match its signed sha256 without storing it; the upload goes on", async () => {
    const key = "builder-cache/test/parts";
    const created = await signedFetch("POST", `/${BUCKET}/${key}?uploads=`, {
      headers: { "content-type": "application/x-parts" },
    });
    expect(created.status).toBe(200);
    const uploadId = /<UploadId>([^<]*)<\/UploadId>/.exec(created.text)?.[1];
    expect(uploadId).toBeTruthy();
    const partPath = `/${BUCKET}/${key}?partNumber=1&uploadId=${encodeURIComponent(uploadId!)}`;
    const body = randomBytes(256 * 1024);

    const bad = await signedFetch("PUT", partPath, {
      body,
      sha256: createHash("sha256").update("not the part").digest("hex"),
    });
    expect(bad.status).toBe(400);
    expect(codeOf(bad.text)).toBe("XAmzContentSHA256Mismatch");
    const badMd5 = await signedFetch("PUT", partPath, {
      body,
      headers: { "content-md5": createHash("md5").update("x").digest("base64") },
    });
    expect(badMd5.status).toBe(400);
    expect(codeOf(badMd5.text)).toBe("BadDigest");

    const good = await signedFetch("PUT", partPath, {
      body,
      headers: { "content-md5": createHash("md5").update(body).digest("base64") },
    });
    expect(good.status).toBe(200);
    const etag = good.headers.get("etag");
    expect(etag).toMatch(/^".+"$/);
    const xml = `<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>${etag!.replace(/"/g, "&quot;")}</ETag></Part></CompleteMultipartUpload>`;
    const completed = await signedFetch("POST", `/${BUCKET}/${key}?uploadId=${encodeURIComponent(uploadId!)}`, {
      body: Buffer.from(xml),
      headers: { "content-type": "application/xml" },
    });
    expect(completed.status).toBe(200);
    expect(completed.text).toContain("<CompleteMultipartUploadResult");
    const stored = await readThroughWorker(key);
    expect(stored?.bytes.equals(body)).toBe(true);
    expect(stored?.contentType).toBe("application/x-parts");
  });

  it("leaves nothing behind when the builder's multipart upload fails part-way: the upload is aborted", async () => {
    const front = await startRefusingFront(
      (method, url) => method === "PUT" && url.searchParams.get("partNumber") === "2",
    );
    try {
      const store = await newStore({ endpoint: front.url, partConcurrency: 1 });
      const bytes = randomBytes(11 * MiB);
      const digest = digestOf(bytes);
      await expect(writeBlob(store, bytes)).rejects.toMatchObject({ code: "InvalidArgument" });
      store.close();
      const aborted = log.entries.find((entry) => entry.event === "s3-multipart-aborted");
      expect(aborted, JSON.stringify(log.entries)).toBeDefined();
      expect(log.entries.find((entry) => entry.event === "s3-multipart-abort-failed")).toBeUndefined();
      expect(await (await bucket()).head(keyOf(digest))).toBeNull();
      expect(await readThroughWorker(keyOf(digest))).toBeNull();
      // The upload itself is gone: completing it now is NoSuchUpload.
      const uploadId = String(aborted!.fields.uploadId);
      const completed = await signedFetch(
        "POST",
        `/${BUCKET}/${keyOf(digest)}?uploadId=${encodeURIComponent(uploadId)}`,
        {
          body: Buffer.from(
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>",
          ),
        },
      );
      expect(completed.status).toBe(404);
      expect(codeOf(completed.text)).toBe("NoSuchUpload");
    } finally {
      await front.close();
    }
  });

  it("lists a prefix page by page (ListObjectsV2) and deletes keys at once (DeleteObjects), as R2 does", async () => {
    const store = await newStore();
    const keys = ["a", "b", "c"].map((c) => `jobs/${c.repeat(64)}.json`);
    for (const key of keys) await store.putObject(key, new TextEncoder().encode(key), "application/json");
    const first = await signedFetch("GET", `/${BUCKET}?list-type=2&prefix=jobs%2F&max-keys=2`);
    expect(first.status).toBe(200);
    expect([...first.text.matchAll(/<Key>([^<]*)<\/Key>/g)].map((m) => m[1])).toEqual(keys.slice(0, 2));
    expect(first.text).toContain("<IsTruncated>true</IsTruncated>");
    const token = /<NextContinuationToken>([^<]*)</.exec(first.text)![1];
    const second = await signedFetch(
      "GET",
      `/${BUCKET}?list-type=2&prefix=jobs%2F&max-keys=2&continuation-token=${encodeURIComponent(token)}`,
    );
    expect([...second.text.matchAll(/<Key>([^<]*)<\/Key>/g)].map((m) => m[1])).toEqual(keys.slice(2));
    expect(second.text).toContain("<IsTruncated>false</IsTruncated>");

    const listed = [];
    for await (const object of store.listObjects("jobs/")) listed.push(object);
    expect(listed.map((object) => [object.key, object.size])).toEqual(keys.map((key) => [key, key.length]));
    for (const object of listed) expect(Math.abs(object.lastModifiedMs - Date.now())).toBeLessThan(60_000);

    // DeleteObjects needs its integrity header right, as S3 does.
    const body = Buffer.from(`<Delete><Object><Key>${keys[0]}</Key></Object></Delete>`);
    const wrongMd5 = await signedFetch("POST", `/${BUCKET}?delete`, {
      body,
      headers: { "content-md5": createHash("md5").update("other").digest("base64") },
    });
    expect(wrongMd5.status).toBe(400);
    expect(codeOf(wrongMd5.text)).toBe("BadDigest");
    await store.deleteObjects(keys);
    const left = [];
    for await (const object of store.listObjects("jobs/")) left.push(object.key);
    expect(left).toEqual([]);
    // The collection deletes only its own kinds of keys.
    await expect(store.deleteObjects(["resolutions/latest.json"])).rejects.toThrow(/does not delete/);
  });

  it("answers what it does not implement with 501 NotImplemented", async () => {
    const listing = await signedFetch("GET", `/${BUCKET}`);
    expect(listing.status).toBe(501);
    expect(codeOf(listing.text)).toBe("NotImplemented");
    const delimited = await signedFetch("GET", `/${BUCKET}?list-type=2&delimiter=%2F`);
    expect(delimited.status).toBe(501);
    const tagging = await signedFetch("GET", `/${BUCKET}/builder-cache/startup-check?tagging=`);
    expect(tagging.status).toBe(501);
    const copy = await signedFetch("PUT", `/${BUCKET}/builder-cache/copy`, {
      headers: { "x-amz-copy-source": `/${BUCKET}/builder-cache/startup-check` },
    });
    expect(copy.status).toBe(501);
    expect(await (await bucket()).head("builder-cache/copy")).toBeNull();
  });
});
