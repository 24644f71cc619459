// Issue "Production path": the builder writes blobs, manifests and image records into the registry's bucket
// through the S3 API, and the worker serves pulls from that bucket through its binding, writing none of those
// itself and asking the builder for no blob. Here the bucket is the stack's own local R2 and the S3 API the local
// S3 endpoint onto it (scripts/local-s3-endpoint/, which checks SigV4 as R2 does). Between the builder and that
// endpoint sits a recording proxy (below) that sees every S3 request the builder makes, and can cut one off.
//
// The builder runs with a 5 MiB multipart threshold and 5 MiB parts, and a layer budget of 2, so
// `greeting/dataset` (4 MiB of incompressible data plus busybox, hello and coreutils) has one store-path layer of a
// little over 5 MiB: it goes up as a multipart upload.
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, stat } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OCI_MANIFEST } from "../common/media-types.ts";
import type { ImageManifest } from "../common/oci.ts";
import { builderStatus } from "../scripts/builder-calls.ts";
import { OFFLINE_NIX_CONFIG, PROJECT_ROOT, startBuilder, type Builder } from "../scripts/local-stack.ts";
import { withWorkerR2 } from "./support/local-r2.ts";
import {
  pullAndUnpack,
  runInRootfs,
  startTestStack,
  TEST_PKGS,
  type LogEntry,
  type TestStack,
} from "./support/stack.ts";
import { startHttpFront } from "./support/http-front.ts";

const execFileAsync = promisify(execFile);
const MiB = 1024 * 1024;
const IMAGE = "greeting/dataset";

/** The builder's settings besides the bucket's: small multipart uploads, few retries, two layers. */
const BUILDER_ENV = {
  S3_MULTIPART_THRESHOLD_BYTES: String(5 * MiB),
  S3_PART_SIZE_BYTES: String(5 * MiB),
  S3_MAX_ATTEMPTS: "3",
  NIXERY_LAYER_BUDGET: "2",
};

// ---------------------------------------------------------------------------------------------------------------
// The recording proxy in front of the S3 endpoint. It passes requests through untouched, Host header included (the
// builder signs the host it connects to, and the endpoint checks the signature against the Host it receives).

interface S3Call {
  method: string;
  /** The object key (the path after /<bucket>/, decoded). */
  key: string;
  query: Record<string, string>;
  bodyBytes: number;
  /** The status answered, or "dropped" when the proxy cut the connection. */
  status: number | "dropped";
  /** Order of events: when the request arrived and when its answer was complete (a shared counter). */
  arrived: number;
  answered: number;
  /** Date.now() when the answer was complete. */
  answeredAtMs: number;
}

interface S3Recorder {
  endpoint: string;
  calls: S3Call[];
  /** Requests to cut off (connection closed once the request is in, unanswered and not forwarded). */
  drop: { match: (call: S3Call) => boolean; times: number }[];
  close(): Promise<void>;
}

async function startS3Recorder(target: string, bucket: string): Promise<S3Recorder> {
  const calls: S3Call[] = [];
  const drop: S3Recorder["drop"] = [];
  let clock = 0;
  const front = await startHttpFront(target, (incoming, _response, forward) => {
    const url = new URL(incoming.url ?? "/", "http://proxy");
    const path = decodeURIComponent(url.pathname);
    const call: S3Call = {
      method: incoming.method ?? "GET",
      key: path.startsWith(`/${bucket}/`) ? path.slice(bucket.length + 2) : path,
      query: Object.fromEntries(url.searchParams),
      bodyBytes: 0,
      status: "dropped",
      arrived: ++clock,
      answered: 0,
      answeredAtMs: 0,
    };
    calls.push(call);
    incoming.on("data", (chunk: Buffer) => (call.bodyBytes += chunk.length));
    const fault = drop.find((f) => f.times > 0 && f.match(call));
    if (fault) {
      fault.times--;
      incoming.on("end", () => incoming.socket.destroy());
      incoming.resume();
      return;
    }
    forward((status) => {
      call.status = status;
      call.answered = ++clock;
      call.answeredAtMs = Date.now();
    });
  });
  return { endpoint: front.url, calls, drop, close: front.close };
}

// ---------------------------------------------------------------------------------------------------------------

let stack: TestStack;
let s3: S3Recorder;
/** The stack's builder, started again with its S3 requests through the recorder (see beforeAll). */
let builder: Builder;

function events(event: string): LogEntry[] {
  return builder.logLines.flatMap((line) => {
    try {
      const entry = JSON.parse(line) as LogEntry;
      return entry.event === event ? [entry] : [];
    } catch {
      return [];
    }
  });
}

/** Starts builder-service/main.ts with this environment alone and returns how it ended. */
async function runBuilder(env: Record<string, string>): Promise<{ code: number; stderr: string }> {
  const tsx = join(PROJECT_ROOT, "node_modules/.bin/tsx");
  try {
    await execFileAsync(tsx, ["builder-service/main.ts"], {
      cwd: PROJECT_ROOT,
      env: {
        PATH: process.env.PATH,
        BUILDER_PORT: "0",
        NIXERY_PKGS_PATH: TEST_PKGS,
        NIX_CONFIG: OFFLINE_NIX_CONFIG,
        ...env,
      },
      timeout: 30_000,
    });
    return { code: 0, stderr: "" };
  } catch (error) {
    const e = error as { code?: number; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stderr: e.stderr ?? "" };
  }
}

/** The keys under each prefix in R2, each with its upload time, read through the worker's binding. */
function uploadTimes(prefixes: string[]): Promise<Map<string, number>[]> {
  return withWorkerR2(stack.workerStateDir, async (bucket) => {
    const r2 = bucket as unknown as {
      list(options: {
        prefix: string;
        include?: string[];
      }): Promise<{ objects: { key: string; uploaded: Date }[]; truncated: boolean }>;
    };
    return Promise.all(
      prefixes.map(async (prefix) => {
        const page = await r2.list({ prefix });
        expect(page.truncated).toBe(false);
        return new Map(page.objects.map((o) => [o.key, o.uploaded.getTime()]));
      }),
    );
  });
}

beforeAll(async () => {
  stack = await startTestStack({ builderEnv: BUILDER_ENV });
  // The stack's S3 endpoint is known only once the stack is up: its builder is started again on the same port and
  // folder, with S3_ENDPOINT the recorder in front of that endpoint.
  s3 = await startS3Recorder(stack.s3Env.S3_ENDPOINT, stack.s3Env.S3_BUCKET);
  const port = Number(new URL(stack.builder.url).port);
  await stack.builder.stop();
  builder = await startBuilder({
    pkgsPath: TEST_PKGS,
    builderPort: port,
    builderDataDir: join(stack.scratch, "builder"),
    secret: stack.secret,
    s3Env: { ...stack.s3Env, S3_ENDPOINT: s3.endpoint },
    builderEnv: BUILDER_ENV,
  });
});

afterAll(async () => {
  await builder?.stop();
  await stack?.stop();
  await s3?.close();
});

describe("the builder's S3 settings", () => {
  it("refuses to start with a wrong S3 secret, naming the setting to fix", async () => {
    const { code, stderr } = await runBuilder({
      ...stack.s3Env,
      BUILDER_SECRET: stack.secret,
      S3_SECRET_ACCESS_KEY: "wrong-secret",
    });
    expect(code).toBe(2);
    expect(stderr).toContain("cannot start: the S3 store refused the builder");
    expect(stderr).toContain(`SignatureDoesNotMatch`);
    expect(stderr).toContain(
      `S3_SECRET_ACCESS_KEY is not the secret of S3_ACCESS_KEY_ID ${stack.s3Env.S3_ACCESS_KEY_ID}`,
    );
  });

  it("refuses to start without its S3 settings, naming every missing one", async () => {
    const { code, stderr } = await runBuilder({ BUILDER_SECRET: stack.secret, S3_BUCKET: stack.s3Env.S3_BUCKET });
    expect(code).toBe(2);
    for (const name of ["S3_ENDPOINT", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"])
      expect(stderr).toContain(`${name} is not set`);
    expect(stderr).not.toContain("S3_BUCKET is not set");
  });

  it("reports the bucket in its signed /status and is ready", async () => {
    const status = await builderStatus(builder.url, stack.secret);
    expect(status.store).toBe(`S3 bucket ${stack.s3Env.S3_BUCKET} at ${s3.endpoint}`);
    expect((await fetch(`${builder.url}/ready`)).status).toBe(200);
  });
});

describe("the builder writing into the registry's bucket", () => {
  it("leaves nothing under a layer's digest when its upload is interrupted, and the pull fails saying so", async () => {
    const from = s3.calls.length;
    // Every CompleteMultipartUpload loses its connection: the big layer can't be finished.
    s3.drop.push({ match: (c) => c.method === "POST" && c.query.uploadId !== undefined, times: Infinity });
    try {
      const response = await fetch(`${stack.registryUrl}/v2/${IMAGE}/manifests/latest`, {
        headers: { accept: OCI_MANIFEST },
      });
      expect(response.status).toBe(500);
      const body = (await response.json()) as { errors: { code: string; message: string }[] };
      expect(body.errors[0].code).toBe("BUILD_FAILED");
      expect(body.errors[0].message).toContain("could not write the image into the bucket");
    } finally {
      s3.drop.length = 0;
    }
    const calls = s3.calls.slice(from);
    const started = calls.filter((c) => c.method === "POST" && "uploads" in c.query);
    expect(started).toHaveLength(1);
    const key = started[0].key;
    expect(key).toMatch(/^blobs\/sha256\/[0-9a-f]{64}$/);
    // Tried S3_MAX_ATTEMPTS times, then aborted.
    expect(calls.filter((c) => c.key === key && c.method === "POST" && c.query.uploadId).map((c) => c.status)).toEqual([
      "dropped",
      "dropped",
      "dropped",
    ]);
    expect(
      calls.filter((c) => c.key === key && c.method === "DELETE" && c.query.uploadId).map((c) => c.status),
    ).toEqual([204]);
    expect(await stack.r2Keys(key)).toEqual([]);
    expect(await stack.r2Keys("images/")).toEqual([]);
    expect(await stack.r2Keys("manifests/")).toEqual([]);
    expect(events("s3-multipart-aborted").map((e) => e.key)).toEqual([key]);
    // The public answer keeps the bucket's details to itself; the builder's log has them.
    expect(events("job-crashed").some((e) => String(e.error).includes(`complete multipart upload of ${key}`))).toBe(
      true,
    );
  });

  it("writes every blob under blobs/sha256/<hex>, the biggest layer in 5 MiB parts, then the manifests, then the image record", async () => {
    const from = s3.calls.length;
    const response = await fetch(`${stack.registryUrl}/v2/${IMAGE}/manifests/latest`, {
      headers: { accept: OCI_MANIFEST },
    });
    expect(response.status).toBe(200);
    const manifest = (await response.json()) as ImageManifest;
    expect(manifest.layers).toHaveLength(2);
    const calls = s3.calls.slice(from);
    const keys = await stack.r2Keys("blobs/sha256/");
    for (const blob of [manifest.config, ...manifest.layers]) {
      expect(keys).toContain(`blobs/sha256/${blob.digest.slice(7)}`);
      const served = await fetch(`${stack.registryUrl}/v2/${IMAGE}/blobs/${blob.digest}`);
      const bytes = Buffer.from(await served.arrayBuffer());
      expect(bytes.length).toBe(blob.size);
      expect(`sha256:${createHash("sha256").update(bytes).digest("hex")}`).toBe(blob.digest);
      expect(served.headers.get("content-type")).toBe("application/octet-stream");
    }

    const biggest = manifest.layers.reduce((a, b) => (a.size > b.size ? a : b));
    expect(biggest.size).toBeGreaterThan(5 * MiB);
    const biggestKey = `blobs/sha256/${biggest.digest.slice(7)}`;
    const completed = calls.filter(
      (c) => c.key === biggestKey && c.method === "POST" && c.query.uploadId && c.status === 200,
    );
    expect(completed).toHaveLength(1);
    const parts = calls.filter(
      (c) => c.method === "PUT" && c.query.uploadId === completed[0].query.uploadId && c.status === 200,
    );
    expect(parts.map((p) => p.bodyBytes).sort((a, b) => b - a)).toEqual([5 * MiB, biggest.size - 5 * MiB]);
    const upload = events("s3-upload").find((e) => e.digest === biggest.digest);
    expect(upload).toMatchObject({ parts: 2, size: biggest.size });
    console.log(
      `multipart upload of the ${(biggest.size / MiB).toFixed(2)} MiB layer through the local S3 endpoint: ${upload?.ms} ms, ${upload?.mbPerSecond} MB/s`,
    );

    // Blobs, then manifests, then the image record: a pull never finds a record naming what isn't there yet.
    const written = calls.filter(
      (c) => (c.method === "PUT" && !c.query.uploadId) || (c.method === "POST" && c.query.uploadId),
    );
    const blobsDone = Math.max(...written.filter((c) => c.key.startsWith("blobs/")).map((c) => c.answered));
    const manifestPuts = written.filter((c) => c.key.startsWith("manifests/sha256/"));
    const imagePuts = written.filter((c) => c.key.startsWith("images/"));
    expect(manifestPuts.map((c) => c.status)).toEqual([200, 200]);
    expect(imagePuts.map((c) => c.status)).toEqual([200]);
    expect(Math.min(...manifestPuts.map((c) => c.arrived))).toBeGreaterThan(blobsDone);
    expect(imagePuts[0].arrived).toBeGreaterThan(Math.max(...manifestPuts.map((c) => c.answered)));
    // The builder writes its own keys only, never the worker's resolutions/ and tags/.
    for (const call of s3.calls.filter((c) => c.method === "PUT" || c.method === "POST")) {
      expect(call.key).toMatch(/^(blobs\/sha256|manifests\/sha256|images|jobs|recent-jobs|builder-cache)\//);
    }
  });

  it("is the only writer of manifests and image records: the worker wrote none of them", async () => {
    const [manifests, images, resolutions, tags] = await uploadTimes([
      "manifests/",
      "images/",
      "resolutions/",
      "tags/",
    ]);
    expect(manifests.size).toBe(2);
    expect(images.size).toBe(1);
    for (const [key, uploaded] of [...manifests, ...images]) {
      const puts = s3.calls.filter((c) => c.key === key && c.method === "PUT" && c.status === 200);
      expect(puts, key).toHaveLength(1);
      // The object in R2 is the one that PUT stored, not one written over it later (pulls came well after).
      expect(uploaded, key).toBeLessThanOrEqual(puts[0].answeredAtMs);
    }
    // The worker did write its own records: the tag's resolution and tag marker.
    expect([...resolutions.keys()]).toEqual(["resolutions/latest.json"]);
    expect([...tags.keys()]).toEqual([`tags/${IMAGE}/latest`]);
  });

  it("serves pulls from the bucket alone: no request reaches the builder, which can be stopped", async () => {
    const requests = () => events("request").length;
    const before = { requests: requests(), jobs: events("job-started").length, s3: s3.calls.length };
    const rootfs = await pullAndUnpack(
      stack.registryHost,
      `${IMAGE}:latest`,
      await mkdtemp(join(stack.scratch, "pull-")),
    );
    expect((await runInRootfs(rootfs, ["greeting", "R2"])).stdout).toBe("HELLO, WORLD!\nand greetings to R2\n");
    expect((await stat(join(rootfs, "share/dataset/data.bin"))).size).toBe(4 * MiB);
    await new Promise((resolve) => setTimeout(resolve, 50)); // the builder's log lines, if any, arrive
    expect(requests()).toBe(before.requests);
    expect(events("job-started")).toHaveLength(before.jobs);
    expect(s3.calls.length).toBe(before.s3);

    // With the builder gone, the image still pulls by digest, every blob from R2.
    const digest = (
      await fetch(`${stack.registryUrl}/v2/${IMAGE}/manifests/latest`, {
        method: "HEAD",
        headers: { accept: OCI_MANIFEST },
      })
    ).headers.get("docker-content-digest");
    expect(digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    await builder.stop();
    const again = await pullAndUnpack(
      stack.registryHost,
      `${IMAGE}@${digest}`,
      await mkdtemp(join(stack.scratch, "pull-")),
    );
    expect((await runInRootfs(again, ["greeting", "edge"])).stdout).toBe("HELLO, WORLD!\nand greetings to edge\n");
  });
});
