// The blob redirect (worker/blob-redirect.ts), with real clients. One stack, its worker started with the redirect on:
// a GET of a blob of at least MIN_BYTES is answered 307 with a URL presigned by the worker for a local S3 endpoint
// (scripts/local-s3-endpoint/, the code the builder writes through) onto the stack's own bucket. The Docker daemon,
// skopeo, podman and containerd each pull an image through it, and what went where is read from two recording
// fronts: one before the registry (each blob GET's status) and one before the S3 endpoint (each presigned GET).
//
//   client ──> registry front ──> the stack (worker) ── 307 Location: <S3 front>/nix-edge-registry/blobs/...?X-Amz-...
//      └─────> S3 front ──> local S3 endpoint (this file's Miniflare, on the stack's R2 folder) ──> the same bucket
//
// The S3 endpoint is a second instance of the stack's, with credentials of this file's: the worker's settings are
// fixed when it starts, before the stack's own endpoint has its port and its randomly made key. The same Miniflare
// also runs two more copies of the worker on the bucket, one with wrangler.toml's settings (the redirect off) and
// one with a half-configured redirect, which must serve every blob itself.
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { AwsClient } from "aws4fetch";
import { Miniflare, type MiniflareOptions } from "miniflare";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { blobKey } from "../common/bucket-layout.ts";
import type { Digest } from "../common/digest.ts";
import { OCI_MANIFEST } from "../common/media-types.ts";
import { freePort } from "../scripts/local-stack.ts";
import {
  localS3EndpointWorker,
  randomS3Credentials,
  type LocalS3Credentials,
} from "../scripts/local-s3-endpoint/options.ts";
import { forwardWorkerdOutput } from "../scripts/workerd-process.ts";
import {
  parseBlobRedirect,
  redirectLocation,
  type BlobRedirect,
  type BlobRedirectEnv,
} from "../worker/blob-redirect.ts";
import { bundledWorker } from "./support/bundled-worker.ts";
import { has, startContainerd, startDockerd } from "./support/daemons.ts";
import { startHttpFront, type Forward, type HttpFront } from "./support/http-front.ts";
import { startTestS3, S3RVER_KEY, S3RVER_SECRET } from "./support/s3-server.ts";
import { podmanRun, run, startTestStack, type TestStack } from "./support/stack.ts";

const BUCKET = "nix-edge-registry";
/** busybox (about 1 MiB gzipped) and dataset (4 MiB that barely compress) are over it; hello, cacert, iana-etc,
 *  the root filesystem layer and the config are under it. */
const MIN_BYTES = 256 * 1024;
const IMAGE = "hello/dataset";

interface Exchange {
  method: string;
  path: string;
  status: number;
  range: string | null;
}

/** Passes every request on untouched (Host too, so presigned URLs hold) and records it with its answer's status. */
function recordInto(log: Exchange[]) {
  return (incoming: IncomingMessage, _response: ServerResponse, forward: Forward) => {
    const method = incoming.method ?? "";
    const path = incoming.url ?? "";
    const range = incoming.headers.range ?? null;
    forward((status) => log.push({ method, path, status, range }));
  };
}

const registryLog: Exchange[] = [];
const s3Log: Exchange[] = [];
let stack: TestStack;
let registryFront: HttpFront;
let s3Front: HttpFront;
let credentials: LocalS3Credentials;
let side: {
  miniflare: Miniflare;
  defaultUrl: string;
  halfConfiguredUrl: string;
  logLines: string[];
  bundleDir: string;
};
let scratch: string;
/** The image's blobs (config and layers) with their sizes. */
let blobs: { digest: Digest; size: number }[];
let large: Digest[];
let small: Digest[];

const hexOf = (digest: string) => digest.slice("sha256:".length);
const sha256 = (bytes: Uint8Array) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

/** The redirect settings the stack's worker runs with. */
function redirectEnv(overrides: BlobRedirectEnv = {}): BlobRedirectEnv {
  return {
    BLOB_REDIRECT_MIN_BYTES: String(MIN_BYTES),
    R2_S3_ENDPOINT: s3Front.url,
    R2_S3_BUCKET: BUCKET,
    R2_S3_ACCESS_KEY_ID: credentials.accessKeyId,
    R2_S3_SECRET_ACCESS_KEY: credentials.secretAccessKey,
    ...overrides,
  };
}

function presigned(overrides: BlobRedirectEnv = {}): Exclude<BlobRedirect, { kind: "off" }> {
  const { redirect, problems } = parseBlobRedirect(redirectEnv(overrides));
  expect(problems).toEqual([]);
  if (redirect.kind === "off") throw new Error("the redirect is off");
  return redirect;
}

/**
 * The worker bundled as `wrangler deploy` bundles it, twice more on the stack's bucket (in this file's Miniflare,
 * beside the S3 endpoint): with wrangler.toml's settings, and with a redirect that lacks its secret.
 */
async function startSideWorkers(s3Port: number): Promise<typeof side> {
  const bundleDir = await mkdtemp(join(tmpdir(), "redirect-bundle-"));
  const registry = await bundledWorker(bundleDir);
  const s3 = await localS3EndpointWorker({ port: s3Port, bucket: BUCKET, credentials });
  const logLines: string[] = [];
  const miniflare = new Miniflare({
    workers: [
      s3.options,
      registry("default-settings", {}),
      registry("half-configured", { ...redirectEnv(), R2_S3_SECRET_ACCESS_KEY: "" }),
    ],
    r2Persist: join(stack.workerStateDir, "v3", "r2"),
    host: "127.0.0.1",
    port: 0,
    handleRuntimeStdio: (stdout: Readable, stderr: Readable) =>
      forwardWorkerdOutput(stdout, stderr, (line) => logLines.push(line)),
  } as MiniflareOptions);
  await miniflare.ready;
  return {
    miniflare,
    defaultUrl: (await miniflare.unsafeGetDirectURL("default-settings")).origin,
    halfConfiguredUrl: (await miniflare.unsafeGetDirectURL("half-configured")).origin,
    logLines,
    bundleDir,
  };
}

beforeAll(async () => {
  scratch = await mkdtemp("/tmp/redirect-");
  credentials = randomS3Credentials();
  const s3Port = await freePort();
  s3Front = await startHttpFront(`http://127.0.0.1:${s3Port}`, recordInto(s3Log));
  stack = await startTestStack({ workerVars: redirectEnv() as Record<string, string> });
  side = await startSideWorkers(s3Port);
  registryFront = await startHttpFront(stack.registryUrl, recordInto(registryLog));
  // Build the image once; every client then pulls what is in the bucket.
  const response = await fetch(`${stack.registryUrl}/v2/${IMAGE}/manifests/latest`, {
    headers: { Accept: OCI_MANIFEST },
  });
  expect(response.status).toBe(200);
  const manifest = (await response.json()) as {
    config: { digest: Digest; size: number };
    layers: { digest: Digest; size: number }[];
  };
  blobs = [manifest.config, ...manifest.layers].map(({ digest, size }) => ({ digest, size }));
  large = blobs.filter((b) => b.size >= MIN_BYTES).map((b) => b.digest);
  small = blobs.filter((b) => b.size < MIN_BYTES).map((b) => b.digest);
}, 300_000);

afterAll(async () => {
  await registryFront?.close();
  await side?.miniflare.dispose();
  await stack?.stop();
  await s3Front?.close();
  if (side) await rm(side.bundleDir, { recursive: true, force: true });
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

/** The blob GETs and HEADs the registry front saw, by digest hex. */
function registryBlobRequests(): (Exchange & { hex: string })[] {
  return registryLog.flatMap((e) => {
    const match = /\/blobs\/sha256:([0-9a-f]{64})/.exec(e.path);
    return match ? [{ ...e, hex: match[1] }] : [];
  });
}

/** The S3 endpoint's requests, by blob hex. */
function s3BlobRequests(): (Exchange & { hex: string })[] {
  return s3Log.flatMap((e) => {
    const match = /\/blobs\/sha256\/([0-9a-f]{64})/.exec(e.path);
    return match ? [{ ...e, hex: match[1] }] : [];
  });
}

/**
 * What a pull must have done: every large blob GET answered 307 and fetched from the S3 endpoint with a presigned
 * URL (200, or 206 for a range), every small blob GET answered 200 by the worker and never sent to S3.
 */
function expectLargeBlobsRedirected(): void {
  const registry = registryBlobRequests();
  const s3 = s3BlobRequests();
  for (const digest of large) {
    const gets = registry.filter((e) => e.hex === hexOf(digest) && e.method === "GET");
    expect(gets.length, `GETs of large blob ${digest}`).toBeGreaterThan(0);
    expect(
      gets.map((e) => e.status),
      `large blob ${digest}`,
    ).toEqual(gets.map(() => 307));
    const fetched = s3.filter((e) => e.hex === hexOf(digest) && e.method === "GET");
    expect(fetched.length, `presigned GETs of ${digest}`).toBeGreaterThan(0);
    for (const e of fetched) {
      expect([200, 206]).toContain(e.status);
      expect(e.path).toContain("X-Amz-Signature=");
    }
  }
  for (const digest of small) {
    const gets = registry.filter((e) => e.hex === hexOf(digest) && e.method === "GET");
    expect(gets.length, `GETs of small blob ${digest}`).toBeGreaterThan(0);
    expect(
      gets.map((e) => e.status),
      `small blob ${digest}`,
    ).toEqual(gets.map(() => 200));
    expect(s3.filter((e) => e.hex === hexOf(digest))).toEqual([]);
  }
  // HEADs stay with the worker.
  for (const head of registry.filter((e) => e.method === "HEAD")) expect(head.status).toBe(200);
}

function clearLogs(): void {
  registryLog.length = 0;
  s3Log.length = 0;
}

const imageRef = () => `${registryFront.url.replace("http://", "")}/${IMAGE}:latest`;

describe("blob GETs with the redirect on", () => {
  it("has blobs on both sides of the threshold in the image pulled below", () => {
    expect(large.length).toBeGreaterThanOrEqual(2);
    expect(small.length).toBeGreaterThanOrEqual(2);
  });

  it("answers a large blob's GET with a bodiless 307 to a presigned URL, and HEAD with its size and digest", async () => {
    const digest = large[0];
    const size = blobs.find((b) => b.digest === digest)!.size;
    const url = `${stack.registryUrl}/v2/${IMAGE}/blobs/${digest}`;
    const response = await fetch(url, { redirect: "manual" });
    expect(response.status).toBe(307);
    expect(response.headers.get("docker-content-digest")).toBe(digest);
    expect(response.headers.get("cache-control")).toBe("no-store");
    expect((await response.arrayBuffer()).byteLength).toBe(0);
    const location = new URL(response.headers.get("location")!);
    expect(`${location.origin}${location.pathname}`).toBe(`${s3Front.url}/${BUCKET}/${blobKey(digest)}`);
    expect(location.searchParams.get("X-Amz-Expires")).toBe("300");
    expect(location.searchParams.get("X-Amz-Credential")).toMatch(
      new RegExp(`^${credentials.accessKeyId}/\\d{8}/auto/s3/aws4_request$`),
    );
    expect(location.searchParams.get("X-Amz-SignedHeaders")).toBe("host");

    const object = await fetch(location);
    expect(object.status).toBe(200);
    expect(sha256(new Uint8Array(await object.arrayBuffer()))).toBe(digest);

    const head = await fetch(url, { method: "HEAD", redirect: "manual" });
    expect(head.status).toBe(200);
    expect(head.headers.get("content-length")).toBe(String(size));
    expect(head.headers.get("docker-content-digest")).toBe(digest);
    expect(head.headers.get("location")).toBeNull();
  });

  it("streams a small blob itself", async () => {
    const response = await fetch(`${stack.registryUrl}/v2/${IMAGE}/blobs/${small[0]}`, { redirect: "manual" });
    expect(response.status).toBe(200);
    expect(sha256(new Uint8Array(await response.arrayBuffer()))).toBe(small[0]);
  });

  it("redirects a Range GET too, and the S3 endpoint answers the range that is sent again", async () => {
    const digest = large[1];
    const size = blobs.find((b) => b.digest === digest)!.size;
    const response = await fetch(`${stack.registryUrl}/v2/${IMAGE}/blobs/${digest}`, {
      redirect: "manual",
      headers: { Range: "bytes=1000-1999" },
    });
    expect(response.status).toBe(307);
    const location = response.headers.get("location")!;
    const whole = new Uint8Array(await (await fetch(location)).arrayBuffer());
    expect(sha256(whole)).toBe(digest);
    const part = await fetch(location, { headers: { Range: "bytes=1000-1999" } });
    expect(part.status).toBe(206);
    expect(part.headers.get("content-range")).toBe(`bytes 1000-1999/${size}`);
    expect(Buffer.from(await part.arrayBuffer()).equals(Buffer.from(whole.subarray(1000, 2000)))).toBe(true);
    // A client following the redirect itself (fetch does, resending Range) gets the same.
    const followed = await fetch(`${stack.registryUrl}/v2/${IMAGE}/blobs/${digest}`, {
      headers: { Range: "bytes=1000-1999" },
    });
    expect(followed.status).toBe(206);
    expect(Buffer.from(await followed.arrayBuffer()).equals(Buffer.from(whole.subarray(1000, 2000)))).toBe(true);
  });
});

describe("presigned URLs at the local S3 endpoint", () => {
  const objectUrl = (digest: Digest) => `${s3Front.url}/${BUCKET}/${blobKey(digest)}`;
  const errorCode = (xml: string) => /<Code>([^<]*)<\/Code>/.exec(xml)?.[1];
  const errorMessage = (xml: string) => /<Message>([^<]*)<\/Message>/.exec(xml)?.[1];

  it("refuses an expired URL with 403 AccessDenied, Request has expired", async () => {
    const location = await redirectLocation(
      presigned({ BLOB_REDIRECT_TTL_SECONDS: "60" }),
      large[0],
      new Date(Date.now() - 120_000),
    );
    const response = await fetch(location);
    expect(response.status).toBe(403);
    const body = await response.text();
    expect(errorCode(body)).toBe("AccessDenied");
    expect(errorMessage(body)).toBe("Request has expired");
    // Still within its time, the same kind of URL works.
    const fresh = await fetch(
      await redirectLocation(presigned({ BLOB_REDIRECT_TTL_SECONDS: "60" }), large[0], new Date(Date.now() - 30_000)),
    );
    expect(fresh.status).toBe(200);
    await fresh.arrayBuffer();
  });

  it("refuses a tampered URL with 403 SignatureDoesNotMatch", async () => {
    const genuine = new URL(await redirectLocation(presigned(), large[0]));
    const tampered: URL[] = [];
    // Another object under the same signature.
    const otherKey = new URL(genuine);
    otherKey.pathname = new URL(objectUrl(small[0])).pathname;
    tampered.push(otherKey);
    // A longer validity.
    const longer = new URL(genuine);
    longer.searchParams.set("X-Amz-Expires", "3600");
    tampered.push(longer);
    // One hex digit of the signature changed.
    const signature = genuine.searchParams.get("X-Amz-Signature")!;
    const flipped = new URL(genuine);
    flipped.searchParams.set("X-Amz-Signature", signature.slice(0, -1) + (signature.endsWith("0") ? "1" : "0"));
    tampered.push(flipped);
    // Signed with another secret.
    tampered.push(
      new URL(
        await redirectLocation(presigned({ R2_S3_SECRET_ACCESS_KEY: "not-the-secret-of-the-endpoint" }), large[0]),
      ),
    );
    for (const url of tampered) {
      const response = await fetch(url);
      const body = await response.text();
      expect({ url: url.toString(), status: response.status, code: errorCode(body) }).toEqual({
        url: url.toString(),
        status: 403,
        code: "SignatureDoesNotMatch",
      });
    }
    // A GET URL does not sign a HEAD (the method is signed).
    expect((await fetch(genuine, { method: "HEAD" })).status).toBe(403);
    // Another key id: not the endpoint's.
    const otherId = await redirectLocation(presigned({ R2_S3_ACCESS_KEY_ID: "AKIDNOTTHEENDPOINTS1" }), large[0]);
    const unknownKey = await fetch(otherId);
    expect(errorCode(await unknownKey.text())).toBe("InvalidAccessKeyId");
    // The genuine one still works.
    const response = await fetch(genuine);
    expect(response.status).toBe(200);
    expect(sha256(new Uint8Array(await response.arrayBuffer()))).toBe(large[0]);
  });

  it("takes a presigned HEAD, and refuses validity over a week and an incomplete URL", async () => {
    const client = new AwsClient({ ...credentials, service: "s3", region: "auto" });
    const head = await client.sign(`${objectUrl(large[0])}?X-Amz-Expires=60`, {
      method: "HEAD",
      aws: { signQuery: true },
    });
    const headResponse = await fetch(head.url, { method: "HEAD" });
    expect(headResponse.status).toBe(200);
    expect(headResponse.headers.get("content-length")).toBe(String(blobs.find((b) => b.digest === large[0])!.size));

    const tooLong = await client.sign(`${objectUrl(large[0])}?X-Amz-Expires=604801`, {
      method: "GET",
      aws: { signQuery: true },
    });
    const tooLongResponse = await fetch(tooLong.url);
    expect(tooLongResponse.status).toBe(400);
    expect(errorCode(await tooLongResponse.text())).toBe("AuthorizationQueryParametersError");

    const incomplete = new URL(
      (await client.sign(`${objectUrl(large[0])}?X-Amz-Expires=60`, { method: "GET", aws: { signQuery: true } })).url,
    );
    incomplete.searchParams.delete("X-Amz-Date");
    const incompleteResponse = await fetch(incomplete);
    expect(incompleteResponse.status).toBe(400);
    expect(errorCode(await incompleteResponse.text())).toBe("AuthorizationQueryParametersError");
  });

  it("makes URLs that another SigV4 implementation accepts too (s3rver), and that it refuses tampered", async () => {
    const s3 = await startTestS3({ bucket: "other-bucket" });
    try {
      const bytes = new TextEncoder().encode("a blob checked by s3rver\n");
      const digest = sha256(bytes) as Digest;
      const writer = new AwsClient({
        accessKeyId: S3RVER_KEY,
        secretAccessKey: S3RVER_SECRET,
        service: "s3",
        region: "auto",
      });
      const put = await writer.fetch(`${s3.endpoint}/other-bucket/${blobKey(digest)}`, { method: "PUT", body: bytes });
      expect(put.status).toBe(200);
      const redirect = parseBlobRedirect({
        BLOB_REDIRECT_MIN_BYTES: "1",
        R2_S3_ENDPOINT: s3.endpoint,
        R2_S3_BUCKET: "other-bucket",
        R2_S3_ACCESS_KEY_ID: S3RVER_KEY,
        R2_S3_SECRET_ACCESS_KEY: S3RVER_SECRET,
      }).redirect;
      if (redirect.kind === "off") throw new Error("the redirect is off");
      const location = await redirectLocation(redirect, digest);
      const response = await fetch(location);
      expect(response.status).toBe(200);
      expect(sha256(new Uint8Array(await response.arrayBuffer()))).toBe(digest);
      const tampered = new URL(location);
      tampered.searchParams.set("X-Amz-Expires", "3600");
      expect((await fetch(tampered)).status).toBe(403);
    } finally {
      await s3.stop();
    }
  });
});

describe("the redirect's settings", () => {
  it("is off by default: wrangler.toml's worker answers a large blob's GET with 200 and its bytes", async () => {
    expect(parseBlobRedirect({})).toEqual({ redirect: { kind: "off" }, problems: [] });
    expect(parseBlobRedirect({ BLOB_REDIRECT_MIN_BYTES: "0", R2_S3_ENDPOINT: "https://example.com" })).toEqual({
      redirect: { kind: "off" },
      problems: [],
    });
    for (const digest of large) {
      const response = await fetch(`${side.defaultUrl}/v2/${IMAGE}/blobs/${digest}`, { redirect: "manual" });
      expect(response.status).toBe(200);
      expect(sha256(new Uint8Array(await response.arrayBuffer()))).toBe(digest);
    }
  });

  it("serves every blob from the worker when half-configured, and logs why once, as a JSON incident", async () => {
    for (let round = 0; round < 2; round++) {
      for (const { digest } of blobs) {
        const response = await fetch(`${side.halfConfiguredUrl}/v2/${IMAGE}/blobs/${digest}`, { redirect: "manual" });
        expect(response.status).toBe(200);
        expect(sha256(new Uint8Array(await response.arrayBuffer()))).toBe(digest);
      }
    }
    const incidents = side.logLines
      .filter((line) => line.startsWith("{"))
      .map((line) => JSON.parse(line) as { event?: string; summary?: string; details?: { problems?: string[] } })
      .filter((entry) => entry.event === "incident" && /blob redirect/.test(entry.summary ?? ""));
    expect(incidents).toHaveLength(1);
    expect(incidents[0].details?.problems?.join(" ")).toMatch(/R2_S3_SECRET_ACCESS_KEY/);
    // The log names the settings, never their values.
    expect(side.logLines.join("\n")).not.toContain(credentials.accessKeyId);
  });

  it("names each problem of a half-configured redirect, and turns it off", () => {
    const problems = (env: BlobRedirectEnv) => {
      const parsed = parseBlobRedirect(env);
      expect(parsed.redirect.kind).toBe("off");
      return parsed.problems.join("; ");
    };
    expect(problems({ BLOB_REDIRECT_MIN_BYTES: "1MB" })).toMatch(/BLOB_REDIRECT_MIN_BYTES must be a number of bytes/);
    expect(problems({ BLOB_REDIRECT_MIN_BYTES: "1" })).toMatch(
      /R2_S3_ENDPOINT, R2_S3_BUCKET, R2_S3_ACCESS_KEY_ID, R2_S3_SECRET_ACCESS_KEY/,
    );
    expect(problems({ ...redirectEnv(), R2_S3_ENDPOINT: "ftp://example.com" })).toMatch(
      /R2_S3_ENDPOINT must be an http or https URL/,
    );
    expect(problems({ ...redirectEnv(), BLOB_REDIRECT_TTL_SECONDS: "604801" })).toMatch(/BLOB_REDIRECT_TTL_SECONDS/);
    expect(problems({ ...redirectEnv(), BLOB_REDIRECT_TTL_SECONDS: "0" })).toMatch(/BLOB_REDIRECT_TTL_SECONDS/);
    expect(problems({ ...redirectEnv(), R2_S3_BUCKET: "Not A Bucket" })).toMatch(/R2_S3_BUCKET/);
    expect(problems({ BLOB_REDIRECT_MIN_BYTES: "1", BLOB_REDIRECT_URL: "https://blobs.example.com/x?y=1" })).toMatch(
      /BLOB_REDIRECT_URL/,
    );
    expect(
      problems({ ...redirectEnv(), R2_S3_SECRET_ACCESS_KEY: "s3cr3t-value", R2_S3_ENDPOINT: "nonsense" }),
    ).not.toContain("s3cr3t-value");
  });

  it("redirects to a public domain of the bucket when BLOB_REDIRECT_URL is set, whatever the R2_S3_ settings", async () => {
    const { redirect } = parseBlobRedirect({
      ...redirectEnv(),
      BLOB_REDIRECT_URL: "https://blobs.example.com/registry/",
    });
    expect(redirect.kind).toBe("public");
    if (redirect.kind === "off") return;
    expect(await redirectLocation(redirect, large[0])).toBe(`https://blobs.example.com/registry/${blobKey(large[0])}`);
  });
});

describe("real clients pull through the redirect", () => {
  it("the Docker daemon (docker.io 20.10): docker pull and run", async (context) => {
    if (!(await has("dockerd")))
      context.skip("dockerd is not installed: apt-get install docker.io (.ci/run installs it)");
    const docker = await startDockerd(await mkdtemp(join(scratch, "docker-")));
    try {
      clearLogs();
      await docker.client(["pull", imageRef()], 180_000);
      expectLargeBlobsRedirected();
      const { stdout } = await docker.client(["run", "--rm", "--network", "none", imageRef(), "hello"], 120_000);
      expect(stdout.trim()).toBe("Hello, world!");
    } finally {
      await docker.clientAllowingFailure(["rmi", "-f", imageRef()], 60_000);
      await docker.stop();
    }
  });

  it("skopeo copy", async () => {
    clearLogs();
    const layout = join(await mkdtemp(join(scratch, "skopeo-")), "oci");
    await run("skopeo", ["copy", "--src-tls-verify=false", `docker://${imageRef()}`, `oci:${layout}:img`]);
    expectLargeBlobsRedirected();
    for (const digest of large) expect(existsSync(join(layout, "blobs", "sha256", hexOf(digest)))).toBe(true);
  });

  it("podman pull and run (runc)", async () => {
    clearLogs();
    const dir = await mkdtemp(join(scratch, "podman-"));
    const { stdout } = await podmanRun(dir, imageRef(), ["hello"]);
    expect(stdout.trim()).toBe("Hello, world!");
    expectLargeBlobsRedirected();
  });

  it("containerd (ctr images pull --plain-http)", async (context) => {
    if (!(await has("containerd")) || !(await has("ctr"))) {
      context.skip("containerd is not installed: apt-get install containerd (.ci/run installs it, with docker.io)");
    }
    const containerd = await startContainerd(await mkdtemp(join(scratch, "ctrd-")));
    try {
      clearLogs();
      await containerd.client(["images", "pull", "--plain-http", "--snapshotter", "native", imageRef()], 180_000);
      expectLargeBlobsRedirected();
      const { stdout } = await containerd.client(["images", "check"]);
      expect(stdout).toMatch(/complete/);
    } finally {
      await containerd.stop();
    }
  });
});
