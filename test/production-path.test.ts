// Issue "Production path": the builder writes blobs into a bucket over the S3 API (here s3rver, which checks
// SigV4 signatures, behind the test front in support/s3-server.ts), and the worker serves the first pull of a
// fresh image from the bucket: no blob request reaches the builder.
//
// The builder runs with BUILDER_STORE=s3, a 5 MiB multipart threshold and 5 MiB parts, and a layer budget of 2,
// so `greeting/dataset` (4 MiB of incompressible data plus busybox, hello and coreutils) has one store-path
// layer of a little over 5 MiB: it goes up as a multipart upload.
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, stat } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { OCI_MANIFEST } from "../common/media-types.ts";
import { OFFLINE_NIX_CONFIG, PROJECT_ROOT } from "../scripts/local-stack.ts";
import { mirrorIntoWorkerR2 } from "./support/r2-mirror.ts";
import { startTestS3, type TestS3 } from "./support/s3-server.ts";
import { pullAndUnpack, runInRootfs, startTestStack, TEST_PKGS, type TestStack } from "./support/stack.ts";

const execFileAsync = promisify(execFile);
const MiB = 1024 * 1024;
const IMAGE = "greeting/dataset";

let s3: TestS3;
let stack: TestStack;

function s3Env(): Record<string, string> {
  return {
    BUILDER_STORE: "s3",
    S3_ENDPOINT: s3.endpoint,
    S3_BUCKET: s3.bucket,
    S3_ACCESS_KEY_ID: s3.accessKeyId,
    S3_SECRET_ACCESS_KEY: s3.secretAccessKey,
    S3_MULTIPART_THRESHOLD_BYTES: String(5 * MiB),
    S3_PART_SIZE_BYTES: String(5 * MiB),
    S3_MAX_ATTEMPTS: "3",
    NIXERY_LAYER_BUDGET: "2",
  };
}

/** Starts builder-service/main.ts with this environment alone and returns how it ended. */
async function runBuilder(env: Record<string, string>): Promise<{ code: number; stderr: string }> {
  const tsx = join(PROJECT_ROOT, "node_modules/.bin/tsx");
  try {
    await execFileAsync(tsx, ["builder-service/main.ts"], {
      cwd: PROJECT_ROOT,
      env: { PATH: process.env.PATH, BUILDER_PORT: "0", NIXERY_PKGS_PATH: TEST_PKGS, NIX_CONFIG: OFFLINE_NIX_CONFIG, ...env },
      timeout: 30_000,
    });
    return { code: 0, stderr: "" };
  } catch (error) {
    const e = error as { code?: number; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stderr: e.stderr ?? "" };
  }
}

interface Manifest {
  config: { digest: string; size: number };
  layers: { digest: string; size: number }[];
}

beforeAll(async () => {
  s3 = await startTestS3();
  stack = await startTestStack({ builderEnv: s3Env() });
});

afterAll(async () => {
  await stack?.stop();
  await s3?.stop();
});

beforeEach(() => {
  s3.faults.length = 0;
});

describe("the builder with the S3 store", () => {
  it("refuses to start with a wrong S3 secret, naming the setting to fix", async () => {
    const { code, stderr } = await runBuilder({ ...s3Env(), BUILDER_SECRET: stack.secret, S3_SECRET_ACCESS_KEY: "wrong-secret" });
    expect(code).toBe(2);
    expect(stderr).toContain("cannot start: the S3 store refused the builder");
    expect(stderr).toMatch(/SignatureDoesNotMatch.*S3_SECRET_ACCESS_KEY is not the secret of S3_ACCESS_KEY_ID S3RVER/);
  });

  it("refuses to start without its S3 settings, naming every missing one", async () => {
    const { code, stderr } = await runBuilder({ BUILDER_SECRET: stack.secret, BUILDER_STORE: "s3", S3_BUCKET: s3.bucket });
    expect(code).toBe(2);
    for (const name of ["S3_ENDPOINT", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"]) expect(stderr).toContain(`${name} is not set`);
    expect(stderr).not.toContain("S3_BUCKET is not set");
  });

  it("reports the bucket in /health and is ready", async () => {
    const health = (await (await fetch(`${stack.builder.url}/health`)).json()) as { store: string };
    expect(health.store).toBe(`S3 bucket ${s3.bucket} at ${s3.endpoint}`);
    expect((await fetch(`${stack.builder.url}/ready`)).status).toBe(200);
  });

  it("leaves nothing under a layer's digest when its upload is interrupted, and the pull fails with the reason", async () => {
    // Every CompleteMultipartUpload loses its connection: the big layer can't be finished.
    s3.faults.push({ match: (r) => r.method === "POST" && r.query.uploadId !== undefined, action: { kind: "drop" }, times: Infinity });
    const response = await fetch(`${stack.registryUrl}/v2/${IMAGE}/manifests/latest`, { headers: { accept: OCI_MANIFEST } });
    expect(response.status).toBe(500);
    expect(await response.text()).toMatch(/complete multipart upload of blobs\/sha256\/[0-9a-f]{64}/);
    const started = s3.requests.filter((r) => r.method === "POST" && "uploads" in r.query);
    expect(started).toHaveLength(1);
    const key = started[0].key;
    expect(await s3.get(key)).toBeNull();
    expect(s3.requests.filter((r) => r.key === key && r.method === "DELETE" && r.query.uploadId).map((r) => r.outcome)).toEqual([204]);
    expect(await s3.pendingUploads()).toEqual([]);
    expect(await stack.r2Keys("images/")).toEqual([]);
    expect(stack.builder.logLines.some((line) => line.includes('"event":"s3-multipart-aborted"'))).toBe(true);
  });

  it("builds into the bucket: every blob under blobs/sha256/<hex> with its digest and size, the biggest layer in 5 MiB parts", async () => {
    const response = await fetch(`${stack.registryUrl}/v2/${IMAGE}/manifests/latest`, { headers: { accept: OCI_MANIFEST } });
    expect(response.status).toBe(200);
    const manifest = (await response.json()) as Manifest;
    expect(manifest.layers).toHaveLength(2);
    for (const blob of [manifest.config, ...manifest.layers]) {
      const object = await s3.get(`blobs/sha256/${blob.digest.slice(7)}`);
      expect(object, blob.digest).not.toBeNull();
      expect(object!.bytes.length).toBe(blob.size);
      expect(`sha256:${createHash("sha256").update(object!.bytes).digest("hex")}`).toBe(blob.digest);
      expect(object!.contentType).toBe("application/octet-stream");
    }
    const biggest = manifest.layers.reduce((a, b) => (a.size > b.size ? a : b));
    expect(biggest.size).toBeGreaterThan(5 * MiB);
    const key = `blobs/sha256/${biggest.digest.slice(7)}`;
    const completed = s3.requests.filter((r) => r.key === key && r.method === "POST" && r.query.uploadId && r.outcome === 200);
    expect(completed).toHaveLength(1);
    const parts = s3.requests.filter((r) => r.method === "PUT" && r.query.uploadId === completed[0].query.uploadId && r.outcome === 200);
    expect(parts.map((p) => p.bodyBytes).sort((a, b) => b - a)).toEqual([5 * MiB, biggest.size - 5 * MiB]);
    // The builder's caches are kept apart from the worker's records (images/, resolutions/, tags/).
    const keys = (await s3.list()).map((o) => o.key);
    expect(keys.filter((k) => !k.startsWith("blobs/sha256/") && !k.startsWith("builder-cache/"))).toEqual([]);
    const upload = stack.builder.logLines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.event === "s3-upload" && l.digest === biggest.digest);
    expect(upload).toMatchObject({ parts: 2, size: biggest.size });
    console.log(`multipart upload of the ${(biggest.size / MiB).toFixed(2)} MiB layer to s3rver: ${upload?.ms} ms, ${upload?.mbPerSecond} MB/s`);
  });

  it("serves a pull through the worker from the bucket: no blob request reaches the builder", async () => {
    // Production has one bucket; here the builder's bucket is copied into the worker's local R2 (see r2-mirror.ts).
    const copied = await mirrorIntoWorkerR2(s3, stack.workerStateDir);
    expect(copied.length).toBeGreaterThanOrEqual(3);
    const builds = stack.builderRequests("/build");
    const rootfs = await pullAndUnpack(stack.registryHost, `${IMAGE}:latest`, await mkdtemp(join(stack.scratch, "pull-")));
    expect((await runInRootfs(rootfs, ["greeting", "R2"])).stdout).toBe("HELLO, WORLD!\nand greetings to R2\n");
    expect((await stat(join(rootfs, "share/dataset/data.bin"))).size).toBe(4 * MiB);
    expect(stack.builderRequests("/blobs/")).toBe(0);
    expect(stack.builderRequests("/build")).toBe(builds);
  });
});
