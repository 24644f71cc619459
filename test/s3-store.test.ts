// Issue "Production path": the builder's S3 blob store against a local S3 server that checks SigV4
// signatures (s3rver) and, through the test front, bodies against their signed sha256 and Content-MD5.
// No Nix here: blobs are made of random bytes, staged and committed the way layer-pipeline.ts does.
import { randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { builderCacheKey, imageRecordKey, jobRecordKey, manifestKey, recentJobKey } from "../common/bucket-layout.ts";
import type { Digest } from "../common/digest.ts";
import { DOCKER_MANIFEST, OCI_MANIFEST } from "../common/media-types.ts";
import { ConfigError, loadConfig, type S3StoreConfig } from "../builder-service/config.ts";
import { S3Error } from "../builder-service/s3/errors.ts";
import { S3BlobStore } from "../builder-service/s3/store.ts";
import { startTestS3, type TestS3 } from "./support/s3-server.ts";
import { chunks, digestOf, writeBlob } from "./support/staged-blobs.ts";
import { RecordingLogger } from "./support/recording-logger.ts";

const MiB = 1024 * 1024;

let s3: TestS3;
let scratch: string;
const log = new RecordingLogger();

function storeConfig(overrides: Partial<S3StoreConfig> = {}): Omit<S3StoreConfig, "kind"> {
  return {
    endpoint: s3.endpoint,
    bucket: s3.bucket,
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
    region: "auto",
    multipartThresholdBytes: 5 * MiB,
    partSizeBytes: 5 * MiB,
    partConcurrency: 2,
    maxAttempts: 3,
    ...overrides,
  };
}

let spoolCount = 0;
async function newStore(overrides: Partial<S3StoreConfig> = {}, idleTimeoutMs?: number): Promise<S3BlobStore> {
  const store = new S3BlobStore({
    ...storeConfig(overrides),
    spoolDir: join(scratch, `spool-${spoolCount++}`),
    log,
    retryBaseMs: 20,
    idleTimeoutMs,
  });
  await store.init();
  return store;
}

const hexOf = (digest: Digest) => digest.slice("sha256:".length);
const requestsFor = (key: string) => s3.requests.filter((r) => r.key === key);

beforeAll(async () => {
  s3 = await startTestS3();
  scratch = await mkdtemp(join(tmpdir(), "s3-store-test-"));
});

afterAll(async () => {
  await s3?.stop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

beforeEach(() => {
  s3.faults.length = 0;
  log.clear();
});

describe("the S3 blob store", () => {
  it("stores a small blob with one signed PUT at blobs/sha256/<hex>, with the content type the worker serves blobs with", async () => {
    const store = await newStore();
    const bytes = randomBytes(300 * 1024);
    const digest = await writeBlob(store, bytes);
    const key = `blobs/sha256/${hexOf(digest)}`;
    const stored = await s3.get(key);
    expect(stored?.bytes.equals(bytes)).toBe(true);
    expect(stored?.contentType).toBe("application/octet-stream");
    const puts = requestsFor(key).filter((r) => r.method === "PUT");
    expect(puts).toHaveLength(1);
    expect(puts[0].outcome).toBe(200);
    expect(await store.stat(digest)).toEqual({ size: bytes.length });
    // Read back whole and by range.
    const whole = await store.read(digest);
    expect(Buffer.concat(await whole!.toArray()).equals(bytes)).toBe(true);
    const slice = await store.read(digest, { start: 10, end: 19 });
    expect(Buffer.concat(await slice!.toArray()).equals(bytes.subarray(10, 20))).toBe(true);
    expect(await store.stat(`sha256:${"0".repeat(64)}`)).toBeNull();
    expect(await store.read(`sha256:${"0".repeat(64)}`)).toBeNull();
    // The spool file is gone once committed.
    expect(await readdir(join(scratch, `spool-${spoolCount - 1}`))).toEqual([]);
  });

  it("uploads a blob over the threshold as a multipart upload of equal 5 MiB parts, and the object is the digest's bytes", async () => {
    const store = await newStore();
    const bytes = randomBytes(11 * MiB + 12345);
    const started = performance.now();
    const digest = await writeBlob(store, bytes);
    const seconds = (performance.now() - started) / 1000;
    const key = `blobs/sha256/${hexOf(digest)}`;
    const requests = requestsFor(key);
    expect(requests.filter((r) => r.method === "POST" && "uploads" in r.query)).toHaveLength(1);
    const parts = requests.filter((r) => r.method === "PUT" && r.query.partNumber);
    expect(parts.map((p) => [Number(p.query.partNumber), p.bodyBytes]).sort((a, b) => a[0] - b[0])).toEqual([
      [1, 5 * MiB],
      [2, 5 * MiB],
      [3, MiB + 12345],
    ]);
    expect(requests.filter((r) => r.method === "POST" && r.query.uploadId)).toHaveLength(1);
    const stored = await s3.get(key);
    expect(stored && digestOf(stored.bytes)).toBe(digest);
    expect(stored?.contentType).toBe("application/octet-stream");
    expect(await s3.pendingUploads()).toEqual([]);
    const upload = log.entries.find((l) => l.event === "s3-upload");
    expect(upload?.fields).toMatchObject({ digest, size: bytes.length, parts: 3 });
    console.log(
      `multipart upload of ${(bytes.length / MiB).toFixed(1)} MiB to s3rver (3 parts, 2 at a time): ${seconds.toFixed(2)} s including spooling, ${upload?.fields.mbPerSecond} MB/s for the upload`,
    );
  });

  it("hashes staged bytes as it spools them: that sha256 is the digest it hands back, and each part's is signed", async () => {
    const store = await newStore();
    // Chunks of an odd size straddle the 5 MiB part boundaries.
    const bytes = randomBytes(10 * MiB + 777);
    const staged = await store.stage();
    await pipeline(Readable.from(chunks(bytes, 100_003)), staged.sink);
    expect(staged.written()).toEqual({ digest: digestOf(bytes), size: bytes.length });
    await staged.commit(digestOf(bytes), bytes.length);
    // The front refuses a part whose body doesn't match its signed sha256: each part went through on its first try.
    const key = `blobs/sha256/${hexOf(digestOf(bytes))}`;
    const parts = requestsFor(key).filter((r) => r.method === "PUT" && r.query.partNumber);
    expect(parts.map((p) => [p.query.partNumber, p.outcome]).sort()).toEqual([
      ["1", 200],
      ["2", 200],
      ["3", 200],
    ]);
    expect(digestOf((await s3.get(key))!.bytes)).toBe(digestOf(bytes));
  });

  it("does not upload a blob that is already in the bucket", async () => {
    const store = await newStore();
    const bytes = randomBytes(64 * 1024);
    const digest = await writeBlob(store, bytes);
    const key = `blobs/sha256/${hexOf(digest)}`;
    const before = requestsFor(key).filter((r) => r.method === "PUT").length;
    await writeBlob(await newStore(), bytes);
    await store.putBytes(digest, bytes);
    expect(requestsFor(key).filter((r) => r.method === "PUT").length).toBe(before);
    expect(log.entries.some((l) => l.event === "s3-blob-present" && l.fields.digest === digest)).toBe(true);
  });

  it("retries a 503, a connection dropped in the middle of a part, and a body corrupted on the way, then succeeds", async () => {
    const store = await newStore();
    const bytes = randomBytes(10 * MiB + 1);
    const key = `blobs/sha256/${hexOf(digestOf(bytes))}`;
    const isPart = (n: string) => (r: { method: string; key: string; query: Record<string, string> }) =>
      r.key === key && r.method === "PUT" && r.query.partNumber === n;
    s3.faults.push(
      { match: isPart("1"), action: { kind: "status", status: 503, code: "ServiceUnavailable" }, times: 1 },
      { match: isPart("2"), action: { kind: "drop-after", bytes: 2 * MiB }, times: 1 },
      { match: isPart("3"), action: { kind: "corrupt" }, times: 1 },
    );
    const digest = await writeBlob(store, bytes);
    const outcomes = (n: string) =>
      requestsFor(key)
        .filter(isPart(n))
        .map((r) => r.outcome);
    expect(outcomes("1")).toEqual([503, 200]);
    expect(outcomes("2")).toEqual(["dropped", 200]);
    // The front checked the body against its signed sha256 and refused it, as R2 would.
    expect(outcomes("3")).toEqual([400, 200]);
    expect(digestOf((await s3.get(key))!.bytes)).toBe(digest);
    expect(log.entries.filter((l) => l.event === "s3-retry")).toHaveLength(3);
  });

  it("gives up on a request that gets no answer, and tries it again", async () => {
    const store = await newStore({}, 500);
    const bytes = randomBytes(100 * 1024);
    const key = `blobs/sha256/${hexOf(digestOf(bytes))}`;
    s3.faults.push({ match: (r) => r.key === key && r.method === "PUT", action: { kind: "stall" }, times: 1 });
    const started = performance.now();
    const digest = await writeBlob(store, bytes);
    expect(performance.now() - started).toBeGreaterThanOrEqual(500);
    expect(
      requestsFor(key)
        .filter((r) => r.method === "PUT")
        .map((r) => r.outcome),
    ).toEqual(["dropped", 200]);
    expect(log.entries.find((l) => l.event === "s3-retry")?.fields.reason).toMatch(/no answer for 0.5 s/);
    expect(digestOf((await s3.get(key))!.bytes)).toBe(digest);
  });

  it("leaves no object under the digest when a multipart upload is interrupted, and aborts the upload", async () => {
    const store = await newStore();
    const bytes = randomBytes(6 * MiB);
    const digest = digestOf(bytes);
    const key = `blobs/sha256/${hexOf(digest)}`;
    // CompleteMultipartUpload never gets an answer: every try loses its connection.
    s3.faults.push({
      match: (r) => r.key === key && r.method === "POST" && r.query.uploadId !== undefined,
      action: { kind: "drop" },
      times: Infinity,
    });
    await expect(writeBlob(store, bytes)).rejects.toThrow(
      /complete multipart upload of blobs\/sha256\/[0-9a-f]{64} .*gave up after 3 tries/,
    );
    expect(requestsFor(key).filter((r) => r.method === "POST" && r.query.uploadId)).toHaveLength(3);
    expect(await s3.get(key)).toBeNull();
    const aborts = requestsFor(key).filter((r) => r.method === "DELETE" && r.query.uploadId);
    expect(aborts.map((r) => r.outcome)).toEqual([204]);
    expect(await s3.pendingUploads()).toEqual([]);
    expect(log.entries.some((l) => l.event === "s3-multipart-aborted" && l.fields.digest === digest)).toBe(true);
    expect(await store.stat(digest)).toBeNull();
  });

  it("aborts the upload when a part keeps failing, and nothing is left under the digest", async () => {
    const store = await newStore();
    const bytes = randomBytes(5 * MiB + 100);
    const key = `blobs/sha256/${hexOf(digestOf(bytes))}`;
    s3.faults.push({
      match: (r) => r.key === key && r.method === "PUT" && r.query.partNumber === "2",
      action: { kind: "status", status: 500, code: "InternalError" },
      times: Infinity,
    });
    await expect(writeBlob(store, bytes)).rejects.toThrow(/upload part 2\/2 .*500 \(InternalError/);
    expect(await s3.get(key)).toBeNull();
    expect(
      requestsFor(key)
        .filter((r) => r.method === "DELETE" && r.query.uploadId)
        .map((r) => r.outcome),
    ).toEqual([204]);
    expect(await s3.pendingUploads()).toEqual([]);
  });

  it("refuses to upload bytes that do not hash to the digest they are committed under", async () => {
    const store = await newStore();
    const bytes = randomBytes(1000);
    const wrong: Digest = `sha256:${"ab".repeat(32)}`;
    await expect(writeBlob(store, bytes, wrong)).rejects.toThrow(/not to sha256:abab/);
    expect(requestsFor(`blobs/sha256/${hexOf(wrong)}`)).toEqual([]);
    await expect(store.putBytes(wrong, bytes)).rejects.toThrow(/not to sha256:abab/);
  });

  it("stores a manifest under manifests/sha256/<hex> as its exact bytes, with its media type as the content type, once", async () => {
    const store = await newStore();
    for (const mediaType of [OCI_MANIFEST, DOCKER_MANIFEST]) {
      const body = JSON.stringify(
        { schemaVersion: 2, mediaType, config: { size: 2, nonce: randomBytes(8).toString("hex") }, layers: [] },
        null,
        3,
      );
      const digest = digestOf(Buffer.from(body));
      const key = manifestKey(digest);
      expect(key).toBe(`manifests/sha256/${hexOf(digest)}`);
      await store.putManifest(digest, body, mediaType);
      const stored = await s3.get(key);
      expect(stored?.bytes.toString("utf8")).toBe(body);
      expect(stored?.contentType).toBe(mediaType);
      // Not under blobs/: the worker serves manifests from manifests/ with that content type.
      expect(await s3.get(`blobs/sha256/${hexOf(digest)}`)).toBeNull();
      await store.putManifest(digest, body, mediaType);
      expect(requestsFor(key).filter((r) => r.method === "PUT")).toHaveLength(1);
      // A body that is not the digest's is refused before anything is sent.
      const other = manifestKey(`sha256:${"cd".repeat(32)}`);
      await expect(store.putManifest(`sha256:${"cd".repeat(32)}`, body, mediaType)).rejects.toThrow(
        /not to sha256:cdcd/,
      );
      expect(requestsFor(other)).toEqual([]);
    }
  });

  it("writes the builder's own records under the keys of common/bucket-layout.ts, and reads them back", async () => {
    const store = await newStore();
    const imageKey = "e".repeat(64);
    const records = [
      builderCacheKey("layers", "abc.json"),
      imageRecordKey(imageKey),
      jobRecordKey(imageKey),
      recentJobKey(imageKey, Date.parse("2026-01-02T03:04:05Z")),
    ];
    expect(records).toEqual([
      "builder-cache/layers/abc.json",
      `images/${imageKey}.json`,
      `jobs/${imageKey}.json`,
      `recent-jobs/${String(9_999_999_999_999 - Date.parse("2026-01-02T03:04:05Z")).padStart(13, "0")}-${imageKey}`,
    ]);
    for (const key of records) {
      expect(await store.getObject(key)).toBeNull();
      const value = JSON.stringify({ key });
      await store.putObject(key, new TextEncoder().encode(value), "application/json");
      expect(new TextDecoder().decode(await store.getObject(key))).toBe(value);
      expect((await s3.get(key))?.contentType).toBe("application/json");
    }
    // A slice of a larger buffer: only the slice is stored.
    const buffer = new TextEncoder().encode('xx{"sliced":true}yy');
    await store.putObject(records[0], buffer.subarray(2, buffer.length - 2), "application/json");
    expect((await s3.get(records[0]))?.bytes.toString()).toBe('{"sliced":true}');
  });

  it("refuses to write keys that are not the builder's, before sending anything", async () => {
    const store = await newStore();
    const hex = "f".repeat(64);
    const refused = [
      // The worker's.
      "resolutions/latest.json",
      "tags/hello/latest",
      // Content-addressed: written only through stage/putBytes/putManifest, which check the digest.
      `blobs/sha256/${hex}`,
      `manifests/sha256/${hex}`,
      // Not keys of the layout at all.
      "images/abc.json",
      `jobs/${hex}.json.tmp`,
      "builder-cache/../images/x.json",
      "recent-jobs/123-abc",
      "",
    ];
    for (const key of refused) {
      await expect(store.putObject(key, new TextEncoder().encode("{}"), "application/json"), key).rejects.toThrow(
        /the builder does not write/,
      );
      expect(requestsFor(key), key).toEqual([]);
    }
    expect(() => builderCacheKey("layers", "../x")).toThrow(/invalid builder cache record name/);
    expect(() => builderCacheKey("Layers", "x.json")).toThrow(/invalid builder cache record name/);
  });

  it("fails the startup check with an error that names the wrong setting", async () => {
    await (await newStore()).check();
    const wrongSecret = await newStore({ secretAccessKey: "not-the-secret" });
    const error = await wrongSecret.check().then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(S3Error);
    expect((error as S3Error).isConfiguration).toBe(true);
    expect((error as S3Error).message).toMatch(
      /403 \(SignatureDoesNotMatch.*S3_SECRET_ACCESS_KEY is not the secret of S3_ACCESS_KEY_ID S3RVER/,
    );
    expect(await wrongSecret.probe()).toMatch(/403 Forbidden: the credentials were refused/);
    await expect((await newStore({ accessKeyId: "NOBODY" })).check()).rejects.toThrow(
      /InvalidAccessKeyId.*S3_ACCESS_KEY_ID NOBODY is not known/,
    );
    await expect((await newStore({ bucket: "no-such-bucket" })).check()).rejects.toThrow(
      /NoSuchBucket.*bucket no-such-bucket does not exist/,
    );
    // Nothing listening: a network error, retried, then named.
    await expect((await newStore({ endpoint: "http://127.0.0.1:9", maxAttempts: 2 })).check()).rejects.toThrow(
      /nothing answers at S3_ENDPOINT .*gave up after 2 tries/,
    );
  });
});

describe("the S3 store's configuration", () => {
  const base = { BUILDER_SECRET: "0123456789abcdef0123" };
  const complete = {
    S3_ENDPOINT: "https://abc.r2.cloudflarestorage.com/",
    S3_BUCKET: "nix-edge-registry",
    S3_ACCESS_KEY_ID: "key",
    S3_SECRET_ACCESS_KEY: "secret",
  };
  const problems = (env: Record<string, string>) => {
    try {
      loadConfig(env);
      return "";
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      return (error as Error).message;
    }
  };

  it("needs the S3 settings, and names every missing one at once", () => {
    for (const env of [base, { ...base, BUILDER_STORE: "s3" }]) {
      const message = problems(env);
      for (const name of ["S3_ENDPOINT", "S3_BUCKET", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"]) {
        expect(message).toContain(`${name} is not set: `);
      }
      expect(message.split("\n")).toHaveLength(4);
    }
    const partial = problems({ ...base, S3_ENDPOINT: complete.S3_ENDPOINT, S3_BUCKET: complete.S3_BUCKET });
    expect(partial.split("\n").map((line) => line.split(" ")[0])).toEqual(["S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"]);
  });

  it("refuses BUILDER_STORE=local (and any other store): the builder always writes into the bucket", () => {
    for (const store of ["local", "r2"]) {
      const message = problems({ ...base, ...complete, BUILDER_STORE: store });
      expect(message).toContain(
        `BUILDER_STORE=${store} is no longer a choice: the builder always writes into the registry's bucket through the S3 API`,
      );
      expect(message).toContain("Remove BUILDER_STORE");
      expect(message.split("\n")).toHaveLength(1);
    }
    // With the S3 settings missing too, both are named.
    const both = problems({ ...base, BUILDER_STORE: "local" });
    expect(both).toContain("BUILDER_STORE=local is no longer a choice");
    expect(both).toContain("S3_ENDPOINT is not set");
  });

  it("explains values that are wrong", () => {
    const message = problems({
      S3_ENDPOINT: "https://abc.r2.cloudflarestorage.com/my-bucket",
      S3_BUCKET: "My_Bucket",
      S3_ACCESS_KEY_ID: "k",
      S3_SECRET_ACCESS_KEY: "s",
      S3_PART_SIZE_BYTES: "1048576",
      S3_MULTIPART_THRESHOLD_BYTES: "8GiB",
    });
    expect(message).toContain("BUILDER_SECRET is not set");
    expect(message).toContain(
      "give the endpoint without the bucket (https://abc.r2.cloudflarestorage.com) and the bucket in S3_BUCKET",
    );
    expect(message).toContain("S3_BUCKET=My_Bucket is not a bucket name");
    expect(message).toContain("S3_PART_SIZE_BYTES=1048576 is not a whole number from 5242880 to 5363466240");
    expect(message).toContain("S3_MULTIPART_THRESHOLD_BYTES=8GiB is not a whole number");
    expect(problems({ ...base, ...complete, S3_ENDPOINT: "ftp://abc.example.com" })).toContain(
      "must start with https://",
    );
  });

  it("reads a complete S3 configuration, with R2's region by default, with BUILDER_STORE unset or s3", () => {
    const expected = {
      kind: "s3",
      endpoint: "https://abc.r2.cloudflarestorage.com",
      bucket: "nix-edge-registry",
      accessKeyId: "key",
      secretAccessKey: "secret",
      region: "auto",
      multipartThresholdBytes: 64 * MiB,
      partSizeBytes: 64 * MiB,
      partConcurrency: 4,
      maxAttempts: 5,
    };
    expect(loadConfig({ ...base, ...complete }).store).toEqual(expected);
    expect(loadConfig({ ...base, ...complete, BUILDER_STORE: "s3" }).store).toEqual(expected);
    expect(loadConfig({ ...base, ...complete, BUILDER_STORE: " s3 " }).store).toEqual(expected);
  });
});
