// Garbage collection: `builder-service --collect-garbage [--dry-run]` on the stack's own bucket (local R2, through
// the local S3 endpoint), and the builder's Nix store kept under BUILDER_NIX_STORE_MAX_BYTES.
//
// One stack. Its builder serves a git repository of the test package set that the test commits to as it goes, so
// that `latest` moves: commit one (pinned by a pull of hello by its commit), two (an old revision once three is
// made) and three (latest). The builder runs in a mount namespace of its own with an empty folder as /nix: its Nix
// store is its own, so the store's collection takes nobody else's paths (other tests share the machine's store), and
// the store's size is the builder's alone.
//
// The collection runs as the command an operator runs (tsx builder-service/main.ts --collect-garbage), with old
// revisions expiring at once (GC_OLD_REVISION_*_SECONDS=0) and a grace period of 1 s.
import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SWEEPS_PREFIX } from "../common/bucket-layout.ts";
import { loadConfig } from "../builder-service/config.ts";
import { collectGarbage, type GcReport } from "../builder-service/gc/collect.ts";
import type { Logger } from "../builder-service/log.ts";
import { storeBytes } from "../builder-service/nix-store-limit.ts";
import { S3BlobStore } from "../builder-service/s3/store.ts";
import { OFFLINE_NIX_CONFIG, PROJECT_ROOT } from "../scripts/local-stack.ts";
import { privateNixPrefix } from "./support/modern-nix.ts";
import { getManifest, PackageSetRepo, testPkgsWithHello } from "./support/package-sets.ts";
import { slowProgram } from "./support/slow-fixtures.ts";
import {
  podmanRun,
  pullAndUnpack,
  runInRootfs,
  startTestStack,
  type LogEntry,
  type TestStack,
} from "./support/stack.ts";

const execFileAsync = promisify(execFile);
const RUN = randomBytes(4).toString("hex");
const MiB = 1024 * 1024;
/**
 * The builder's Nix store limit: above what the bucket tests leave in the store (about 8 MiB, 4 MB of it the test
 * set's busybox), below that plus one of the fill packages (9 MiB each).
 */
const STORE_LIMIT = 16 * MiB;
const FILL_BYTES = 9 * MiB;
const SLOW_SECONDS = 2;
const TAG_TTL_SECONDS = 1;
const silentLog: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined };
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The package set of each commit: the test set with hello's message, a slow program and two fill packages. */
function packageSet(): string {
  const fill = (n: number) => `
  fill${n} = derivation {
    name = "fill${n}-${RUN}";
    inherit system;
    builder = "\${base.busybox}/bin/sh";
    args = [ "-ec" "\${base.busybox}/bin/mkdir -p $out/share && \${base.busybox}/bin/head -c ${FILL_BYTES} /dev/urandom > $out/share/fill${n}" ];
  };`;
  return `{ system ? builtins.currentSystem, ... }@args:
let base = import ./pkgs.nix args;
in base // {${slowProgram("slowtool", SLOW_SECONDS, RUN)}${[1, 2].map(fill).join("")}
}
`;
}

let scratch: string;
let nixDir: string;
let repo: PackageSetRepo;
let stack: TestStack;
let bucket: S3BlobStore;
const commits: string[] = [];

/** argv prefix: the rest runs with nixDir mounted at /nix, in a mount namespace of its own. */
const privateStore = () => privateNixPrefix(nixDir);

async function commit(message: string): Promise<string> {
  await writeFile(join(repo.dir, "pkgs.nix"), await testPkgsWithHello(message));
  await writeFile(join(repo.dir, "default.nix"), packageSet());
  await repo.git("add", "pkgs.nix", "default.nix");
  await repo.git("commit", "--quiet", "-m", message);
  const revision = await repo.git("rev-parse", "HEAD");
  commits.push(revision);
  return revision;
}

/** GET of the manifest by tag: builds the image on a miss. */
async function pull(name: string, tag = "latest"): Promise<void> {
  const fetched = await getManifest(stack.registryUrl, name, tag);
  expect(fetched.status, `${name}:${tag} ${JSON.stringify(fetched.error)}`).toBe(200);
}

async function allKeys(): Promise<string[]> {
  const keys: string[] = [];
  for await (const object of bucket.listObjects("")) keys.push(object.key);
  return keys.sort();
}

async function readJson<T>(key: string): Promise<T> {
  const bytes = await bucket.getObject(key);
  if (!bytes) throw new Error(`${key} is not in the bucket`);
  return JSON.parse(new TextDecoder().decode(bytes)) as T;
}

/** Runs the collection command as an operator would; its report is the log line gc-report. */
function collect(options: { dryRun?: boolean } = {}) {
  const child = spawn(
    join(PROJECT_ROOT, "node_modules/.bin/tsx"),
    ["builder-service/main.ts", "--collect-garbage", ...(options.dryRun ? ["--dry-run"] : [])],
    {
      cwd: PROJECT_ROOT,
      env: {
        ...process.env,
        ...stack.s3Env,
        BUILDER_SECRET: stack.secret,
        BUILDER_DATA_DIR: join(scratch, "gc-data"),
        GC_GRACE_SECONDS: "1",
        GC_OLD_REVISION_KEEP_SECONDS: "0",
        GC_OLD_REVISION_UNPULLED_SECONDS: "0",
      },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise<{ report: GcReport; summary: string }>((resolve, reject) => {
    child.on("exit", (code) => {
      if (code !== 0) return reject(new Error(`--collect-garbage exited with ${code}:\n${stderr}\n${stdout}`));
      const line = stdout
        .split("\n")
        .map((text) => (text.startsWith("{") ? (JSON.parse(text) as LogEntry) : null))
        .find((entry) => entry?.event === "gc-report");
      if (!line) return reject(new Error(`no gc-report line:\n${stdout}`));
      resolve({ report: line as unknown as GcReport, summary: stderr });
    });
  });
}

interface ImageObjects {
  record: string;
  manifests: string[];
  blobs: string[];
}

/** What an image record names, read from the bucket: its manifests, and their configs and layers. */
async function objectsOf(imageKey: string): Promise<ImageObjects> {
  const record = await readJson<{ oci: string; docker: string }>(`images/${imageKey}.json`);
  const manifests = [record.oci, record.docker].map((digest) => `manifests/sha256/${digest.slice(7)}`);
  const blobs = new Set<string>();
  for (const key of manifests) {
    const manifest = await readJson<{ config: { digest: string }; layers: { digest: string }[] }>(key);
    for (const digest of [manifest.config.digest, ...manifest.layers.map((layer) => layer.digest)])
      blobs.add(`blobs/sha256/${digest.slice(7)}`);
  }
  return { record: `images/${imageKey}.json`, manifests, blobs: [...blobs] };
}

/** The image keys the builder started jobs for, by revision. */
const jobKeys = (revision: string) => [
  ...new Set(
    stack
      .logEvents("job-started")
      .filter((e) => e.revision === revision)
      .map((e) => e.imageKey as string),
  ),
];
const jobKey = (packages: string[], revision: string) =>
  stack
    .logEvents("job-started")
    .find(
      (e) =>
        e.revision === revision && [...(e.packages as string[])].sort().join("/") === [...packages].sort().join("/"),
    )?.imageKey as string;

/** The store's valid paths, summed as the builder sums them, read by a Nix of our own on the builder's store. */
async function storeSize(): Promise<number> {
  const [command, ...args] = [
    ...privateStore(),
    "nix",
    "--extra-experimental-features",
    "nix-command",
    "path-info",
    "--all",
    "--json",
  ];
  const { stdout } = await execFileAsync(command, args, { maxBuffer: 64 * MiB });
  return storeBytes(stdout);
}

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "gc-test-"));
  nixDir = join(scratch, "nix");
  await mkdir(nixDir);
  repo = await PackageSetRepo.create(join(scratch, "repo"));
  await commit(`Hello from commit one (${RUN})`);
  stack = await startTestStack({
    builderCommandPrefix: privateStore(),
    builderEnv: {
      NIXERY_PKGS_PATH: "",
      NIXERY_PKGS_REPO: repo.url,
      NIXERY_TAG_TTL_SECONDS: String(TAG_TTL_SECONDS),
      NIX_CONFIG: OFFLINE_NIX_CONFIG,
      BUILDER_NIX_STORE_MAX_BYTES: String(STORE_LIMIT),
    },
  });
  const { store } = loadConfig({ ...stack.s3Env, BUILDER_SECRET: stack.secret });
  bucket = new S3BlobStore({ ...store, spoolDir: join(scratch, "spool"), log: silentLog });
}, 180_000);

afterAll(async () => {
  bucket?.close();
  await stack?.stop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

describe("bucket garbage collection", () => {
  let expected: string[];
  let before: string[];

  it("dry run: lists exactly an old revision's images and what only they use, and removes nothing", async () => {
    const [one] = commits;
    await pull("hello/greeting");
    // Pulled by its commit: commit one is pinned, and its images are kept.
    await pull("hello/greeting", one);
    const two = await commit(`Hello from commit two (${RUN})`);
    await sleep(TAG_TTL_SECONDS * 1000 + 200);
    await pull("hello");
    const three = await commit(`Hello from commit three (${RUN})`);
    await sleep(TAG_TTL_SECONDS * 1000 + 200);
    await pull("hello");
    expect(jobKeys(one)).toHaveLength(1);
    expect(jobKeys(two)).toHaveLength(1);
    expect(jobKeys(three)).toHaveLength(1);

    // What the collection must remove, from the image records and manifests: commit two's images, their manifests,
    // and the blobs no image of commit one or three uses; with them their layer records, jobs and markers.
    const gone = await Promise.all(jobKeys(two).map(objectsOf));
    const kept = await Promise.all([...jobKeys(one), ...jobKeys(three)].map(objectsOf));
    const keptObjects = new Set(kept.flatMap((image) => [...image.manifests, ...image.blobs]));
    const goneBlobs = new Set(gone.flatMap((image) => image.blobs).filter((key) => !keptObjects.has(key)));
    before = await allKeys();
    const layerRecords = [];
    for (const key of before.filter((k) => k.startsWith("builder-cache/layers/"))) {
      const { digest } = await readJson<{ digest: string }>(key);
      if (goneBlobs.has(`blobs/sha256/${digest.slice(7)}`)) layerRecords.push(key);
    }
    expected = [
      ...gone.map((image) => image.record),
      ...gone.flatMap((image) => image.manifests).filter((key) => !keptObjects.has(key)),
      ...goneBlobs,
      ...layerRecords,
      ...jobKeys(two).flatMap((key) => [
        `jobs/${key}.json`,
        `pulls/${key}`,
        ...before.filter((k) => k.startsWith("recent-jobs/") && k.endsWith(`-${key}`)),
      ]),
    ].sort();
    // hello and greeting changed with hello's message; busybox, coreutils and the rest did not, and stay.
    expect(goneBlobs.size).toBeGreaterThanOrEqual(3);
    expect(layerRecords.length).toBeGreaterThanOrEqual(2);
    expect(before).toEqual(expect.arrayContaining(expected));

    await sleep(1100); // the grace period
    const { report, summary } = await collect({ dryRun: true });
    expect(report.dryRun).toBe(true);
    expect(report.removals!.map((removal) => removal.key).sort()).toEqual(expected);
    expect(report.removed.count).toBe(expected.length);
    expect(report.kept.count).toBe(
      before.filter((k) => !/^(resolutions|tags|builder-cache\/startup-check)/.test(k)).length - expected.length,
    );
    expect(summary).toContain(`would remove ${expected.length} objects`);
    expect(summary).toMatch(/images\/[0-9a-f]{64}\.json {2}\(old revision, built 0 d 0 h ago/);
    expect(await allKeys()).toEqual(before);
  }, 120_000);

  it("removes exactly those objects, and reports counts and bytes", async () => {
    const { report, summary } = await collect();
    const after = await allKeys();
    expect(before.filter((key) => !after.includes(key))).toEqual(expected);
    expect(after.filter((key) => !before.includes(key))).toEqual([]);
    expect(after.some((key) => key.startsWith(SWEEPS_PREFIX))).toBe(false);
    expect(report).toMatchObject({ dryRun: false, leftForNextRun: 0 });
    expect(report.removed.count).toBe(expected.length);
    expect(report.removed.bytes).toBeGreaterThan(1000);
    expect(report.removed.byKind.images.count).toBe(1);
    expect(report.removals).toBeUndefined();
    expect(summary).toMatch(new RegExp(`removed ${expected.length} objects, [0-9.]+ MB \\(`));
  }, 60_000);

  it("leaves every image still referenced whole: pulled by skopeo and podman, and run, with nothing rebuilt", async () => {
    const [one] = commits;
    const jobs = stack.jobsStarted();
    const dir = await mkdtemp(join(scratch, "pull-"));
    await mkdir(join(dir, "a"));
    const rootfs = await pullAndUnpack(stack.registryHost, `hello/greeting:${one}`, join(dir, "a"));
    expect((await runInRootfs(rootfs, ["greeting", "gc"])).stdout).toBe(
      `HELLO FROM COMMIT ONE (${RUN.toUpperCase()})\nand greetings to gc\n`,
    );
    expect((await runInRootfs(rootfs, ["hello"])).stdout).toBe(`Hello from commit one (${RUN})\n`);
    const run = await podmanRun(join(dir, "p"), `${stack.registryHost}/hello:latest`, ["hello"]);
    expect(run.stdout).toBe(`Hello from commit three (${RUN})\n`);
    expect(stack.jobsStarted()).toBe(jobs);
  }, 120_000);

  it("races a build against a collection: the build waits, puts back what was taken, and its image pulls whole", async () => {
    const three = commits[2];
    // greeting's image, then its record removed (as if expired): its greeting layer is now referenced by nothing,
    // and the next build of an image with greeting finds that layer through its layer record and reuses it.
    await pull("greeting");
    const greetingOnly = jobKey(["greeting"], three);
    const taken = await objectsOf(greetingOnly);
    await bucket.deleteObjects([taken.record]);

    // The collection (grace 0: everything unreferenced goes) holds the bucket; the build starts meanwhile and
    // reaches its publishing while the collection has not yet listed the images.
    // In this process (the command's own code), to spare the test a second start of the command.
    const collecting = collectGarbage(
      bucket,
      { graceMs: 0, oldRevisionKeepMs: 0, oldRevisionUnpulledMs: 0, keepPinned: true },
      { dryRun: false, log: silentLog },
    );
    const markerSeen = Date.now();
    while (!(await allKeys()).some((key) => key.startsWith(SWEEPS_PREFIX))) {
      expect(Date.now() - markerSeen).toBeLessThan(20_000);
      await sleep(100);
    }
    const built = pull("greeting/slowtool");
    const [report] = await Promise.all([collecting, built]);

    const image = jobKey(["greeting", "slowtool"], three);
    const objects = await objectsOf(image);
    const elsewhere = new Set(
      (await Promise.all([...jobKeys(commits[0]), jobKey(["hello"], three)].map(objectsOf))).flatMap((o) => o.blobs),
    );
    // What the collection took from under the build: greeting's layer (and more), reused from the removed image.
    const reused = taken.blobs.filter((key) => objects.blobs.includes(key) && !elsewhere.has(key));
    expect(reused.length).toBeGreaterThan(0);
    expect(report.removed.byKind.blobs.count).toBeGreaterThanOrEqual(reused.length);
    expect(stack.logEvents("gc-wait").map((e) => e.imageKey)).toContain(image);
    const reuploaded = stack.logEvents("publish-reupload").filter((e) => e.imageKey === image);
    expect(reuploaded.flatMap((e) => e.keys as string[])).toEqual(expect.arrayContaining(reused));

    // Every object the image names is in the bucket, and the image pulls and runs.
    const keys = new Set(await allKeys());
    for (const key of [objects.record, ...objects.manifests, ...objects.blobs]) expect(keys.has(key), key).toBe(true);
    const rootfs = await pullAndUnpack(
      stack.registryHost,
      "greeting/slowtool:latest",
      await mkdtemp(join(scratch, "race-")),
    );
    expect((await runInRootfs(rootfs, ["slowtool"])).stdout).toBe(`slowtool ${RUN}\n`);
    expect((await runInRootfs(rootfs, ["greeting"])).stdout).toContain(
      `HELLO FROM COMMIT THREE (${RUN.toUpperCase()})`,
    );
  }, 120_000);
});

describe("the builder's Nix store under BUILDER_NIX_STORE_MAX_BYTES", () => {
  it("stays under the limit across builds that add more than it", async () => {
    const checks = () =>
      ["nix-store-checked", "nix-store-gc", "nix-store-over-limit"].flatMap((event) => stack.logEvents(event)).length;
    // Checks of earlier builds are over (each logs one of those events) before this test counts its own.
    for (let last = -1; checks() !== last; await sleep(1000)) last = checks();
    const sizes: number[] = [];
    for (const n of [1, 2]) {
      const done = checks();
      await pull(`fill${n}`);
      while (checks() === done) await sleep(100);
      sizes.push(await storeSize());
    }
    const collections = stack.logEvents("nix-store-gc");
    // Each fill (9 MiB) on top of what was there is more than the limit: it was collected.
    expect(collections.length).toBeGreaterThan(0);
    expect(Math.max(...collections.map((e) => e.before as number))).toBeGreaterThan(STORE_LIMIT);
    for (const size of sizes) expect(size).toBeLessThanOrEqual(STORE_LIMIT);
    expect(stack.logEvents("nix-store-over-limit")).toEqual([]);
    expect(stack.logEvents("nix-store-gc-failed")).toEqual([]);
    console.log(`store sizes after each fill build: ${sizes.map((s) => (s / MiB).toFixed(1)).join(", ")} MiB`);
  }, 120_000);
});
