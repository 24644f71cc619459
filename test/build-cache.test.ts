// Same inputs, same bytes; one build however many ask at once; a layer written once is reused, by any builder on
// the bucket; a builder (restarted, or another one) finds an image already in the bucket and doesn't build it again.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { manifestKey, blobKey, type JobRecord } from "../common/bucket-layout.ts";
import type { Digest } from "../common/digest.ts";
import type { ImageManifest } from "../common/oci.ts";
import { loadConfig } from "../builder-service/config.ts";
import type { Logger } from "../builder-service/log.ts";
import { S3BlobStore } from "../builder-service/s3/store.ts";
import { startBuilder, startLocalBucket, type Builder } from "../scripts/local-stack.ts";
import { build, builderStatus, resolveLatest } from "../scripts/builder-calls.ts";
import { startTestStack, TEST_PKGS, type BuilderCounters, type TestStack } from "./support/stack.ts";

let secret: string;
let scratch: string;
/** The file's stack: the worker and two builders, on one bucket. */
let stack: TestStack;
const readers: S3BlobStore[] = [];

const quiet: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined };

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "build-cache-"));
  stack = await startTestStack({ builders: 2 });
  secret = stack.secret;
});

afterAll(async () => {
  for (const reader of readers) reader.close();
  await stack?.stop();
  await rm(scratch, { recursive: true, force: true });
});

/** The bucket behind these S3 settings, read as the builder reads it (signed S3 requests). */
function bucket(s3Env: Record<string, string>): S3BlobStore {
  const { kind: _kind, ...s3 } = loadConfig({ ...s3Env, BUILDER_SECRET: secret }).store;
  const reader = new S3BlobStore({ ...s3, spoolDir: join(scratch, `reader-spool-${readers.length}`), log: quiet });
  readers.push(reader);
  return reader;
}

async function object(store: S3BlobStore, key: string): Promise<Buffer> {
  const bytes = await store.getObject(key);
  if (!bytes) throw new Error(`${key} is not in the bucket`);
  return Buffer.from(bytes);
}

/** The image's OCI manifest, from the bucket, as the job's record names it. */
async function manifestOf(store: S3BlobStore, record: JobRecord): Promise<ImageManifest> {
  expect(record.phase).toBe("done");
  return JSON.parse((await object(store, manifestKey(record.image!.oci))).toString("utf8")) as ImageManifest;
}

async function health(builder: Builder): Promise<BuilderCounters> {
  return builderStatus(builder.url, secret);
}

/** How many log lines of this event the builder has written so far. */
function events(builder: Builder, event: string): number {
  return builder.logLines.filter((line) => {
    try {
      return (JSON.parse(line) as { event?: string }).event === event;
    } catch {
      return false;
    }
  }).length;
}

async function builderOn(s3Env: Record<string, string>, dataDir: string): Promise<Builder> {
  return startBuilder({ pkgsPath: TEST_PKGS, builderPort: 0, builderDataDir: join(scratch, dataDir), secret, s3Env });
}

describe("the same inputs give the same image", () => {
  it("builders on separate empty buckets give identical bytes; on one bucket, another builder and a restarted one find the image and build nothing", async () => {
    const packages = ["dataset", "greeting", "hello", "tools.greet"];
    const bucketA = await startLocalBucket(join(scratch, "bucket-a"));
    const bucketB = await startLocalBucket(join(scratch, "bucket-b"));
    const storeA = bucket(bucketA.s3Env);
    const storeB = bucket(bucketB.s3Env);
    const started: Builder[] = [];
    try {
      const first = await builderOn(bucketA.s3Env, "first");
      started.push(first);
      const second = await builderOn(bucketB.s3Env, "second");
      started.push(second);
      const { revision } = await resolveLatest(first.url, secret);
      expect((await resolveLatest(second.url, secret)).revision).toBe(revision);
      const [a, b] = await Promise.all([
        build(first.url, secret, packages, revision),
        build(second.url, secret, packages, revision),
      ]);
      // Each built it: neither bucket had anything.
      expect(events(first, "build")).toBe(1);
      expect(events(second, "build")).toBe(1);
      expect(b.imageKey).toBe(a.imageKey);
      expect(b.image!.oci).toBe(a.image!.oci);
      expect(b.image!.docker).toBe(a.image!.docker);
      // The very bytes in each bucket: both manifests, the config and every layer.
      for (const digest of [a.image!.oci, a.image!.docker]) {
        expect((await object(storeB, manifestKey(digest))).equals(await object(storeA, manifestKey(digest)))).toBe(
          true,
        );
      }
      const manifest = await manifestOf(storeA, a);
      expect(await manifestOf(storeB, b)).toEqual(manifest);
      expect(manifest.layers.length).toBeGreaterThan(1);
      for (const blob of [manifest.config, ...manifest.layers]) {
        const inA = await object(storeA, blobKey(blob.digest));
        const inB = await object(storeB, blobKey(blob.digest));
        expect(inA.length).toBe(blob.size);
        expect(inB.equals(inA)).toBe(true);
      }
      // The image record is in each bucket: what makes the image exist for the worker.
      expect(JSON.parse((await object(storeA, `images/${a.imageKey}.json`)).toString())).toMatchObject({
        oci: a.image!.oci,
        revision,
      });

      // Another builder on bucket A, with an empty folder of its own, finds the image there.
      const third = await builderOn(bucketA.s3Env, "third");
      started.push(third);
      const found = await build(third.url, secret, packages, revision);
      expect(found.image!.oci).toBe(a.image!.oci);
      expect(events(third, "build")).toBe(0);
      expect(events(third, "job-started")).toBe(0);
      expect((await health(third)).builds).toBe(0);

      // So does the first one after a restart (same folder, same bucket).
      await first.stop();
      const restarted = await builderOn(bucketA.s3Env, "first");
      started.push(restarted);
      const again = await build(restarted.url, secret, packages, revision);
      expect(again.image!.oci).toBe(a.image!.oci);
      expect(events(restarted, "build")).toBe(0);
      expect((await health(restarted)).jobs.started).toBe(0);
    } finally {
      await Promise.all(started.map((builder) => builder.stop()));
      await bucketA.dispose();
      await bucketB.dispose();
    }
  });
});

describe("one build per image", () => {
  it("20 concurrent pulls of an image not built yet lead to exactly one job and one build, on one of the two builders", async () => {
    const before = await Promise.all(stack.builders.map(health));
    const jobsBefore = stack.jobsStarted();
    const buildsBefore = stack.builds();
    const responses = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        fetch(`${stack.registryUrl}/v2/greeting/hello/manifests/latest`, { method: i % 2 ? "HEAD" : "GET" }),
      ),
    );
    expect(responses.map((r) => r.status)).toEqual(Array(20).fill(200));
    const digests = new Set(responses.map((r) => r.headers.get("docker-content-digest")));
    expect(digests.size).toBe(1);
    const after = await Promise.all(stack.builders.map(health));
    const sum = (values: number[]) => values.reduce((a, b) => a + b, 0);
    expect(sum(after.map((h, i) => h.builds - before[i].builds))).toBe(1);
    expect(sum(after.map((h, i) => h.jobs.started - before[i].jobs.started))).toBe(1);
    expect(stack.jobsStarted()).toBe(jobsBefore + 1);
    expect(stack.builds()).toBe(buildsBefore + 1);
    // The digest served is the manifest the builder stored.
    const [digest] = digests;
    const stored = await object(bucket(stack.s3Env), manifestKey(digest as Digest));
    const body = Buffer.from(
      await (await fetch(`${stack.registryUrl}/v2/greeting/hello/manifests/${digest}`)).arrayBuffer(),
    );
    expect(body.equals(stored)).toBe(true);
  });

  it("20 concurrent build requests with their own job ids straight to a builder lead to exactly one build", async () => {
    // Each caller submits with an id of its own and asks again until done: a running job is reported to anyone, and
    // once it is done every other id must get the image, not a new job (common/builder-api.ts, JobRequest.jobId).
    const builder = stack.builders[0];
    const { revision } = await resolveLatest(builder.url, secret);
    const before = await health(builder);
    const buildsBefore = events(builder, "build");
    const results = await Promise.all(
      Array.from({ length: 20 }, () => build(builder.url, secret, ["dataset", "tools.greet"], revision)),
    );
    expect(new Set(results.map((r) => r.image!.oci)).size).toBe(1);
    const after = await health(builder);
    expect(after.builds).toBe(before.builds + 1);
    expect(after.jobs.started).toBe(before.jobs.started + 1);
    expect(events(builder, "build")).toBe(buildsBefore + 1);
  });
});

describe("layers are written once", () => {
  it("a second image reuses the stored layers of the store paths it shares with the first", async () => {
    const builder = stack.builders[0];
    const store = bucket(stack.s3Env);
    const { revision } = await resolveLatest(builder.url, secret);
    const first = await manifestOf(store, await build(builder.url, secret, ["hello"], revision));
    const before = await health(builder);
    const second = await manifestOf(store, await build(builder.url, secret, ["_2048", "hello"], revision));
    const after = await health(builder);
    // hello's closure (hello, busybox, cacert, iana-etc) is reused; only _2048's store path and the new root
    // filesystem are written.
    const firstStoreLayers = first.layers.slice(0, -1).map((l) => l.digest);
    const secondLayers = second.layers.map((l) => l.digest);
    expect(firstStoreLayers.length).toBeGreaterThan(0);
    for (const digest of firstStoreLayers) expect(secondLayers).toContain(digest);
    expect(after.layersWritten - before.layersWritten).toBe(2);
    expect(after.layersReused - before.layersReused).toBe(firstStoreLayers.length);
    expect(second.layers).toHaveLength(firstStoreLayers.length + 2);
  });

  it("a layer one builder wrote is reused by another builder on the same bucket", async () => {
    const [one, two] = stack.builders;
    const store = bucket(stack.s3Env);
    const { revision } = await resolveLatest(one.url, secret);
    const first = await manifestOf(store, await build(one.url, secret, ["nano"], revision));
    const before = await health(two);
    const second = await manifestOf(store, await build(two.url, secret, ["moreutils", "nano"], revision));
    const after = await health(two);
    const shared = first.layers.slice(0, -1).map((l) => l.digest);
    for (const digest of shared) expect(second.layers.map((l) => l.digest)).toContain(digest);
    expect(after.builds - before.builds).toBe(1);
    expect(after.layersReused - before.layersReused).toBe(shared.length);
    expect(after.layersWritten - before.layersWritten).toBe(second.layers.length - shared.length);
  });
});
