// The edge cache (worker/edge-cache.ts), in workerd: worker instances that model Cloudflare locations, each with its
// own isolate and its own cache, in front of one bucket. The worker's R2 binding is wrapped to count reads
// (scripts/instrumented-worker.js), so "served from the location's cache" is shown by R2 reads that did not happen.
import { createHash } from "node:crypto";
import { connect } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../builder-service/config.ts";
import { S3BlobStore } from "../builder-service/s3/store.ts";
import { OCI_MANIFEST } from "../common/media-types.ts";
import type { ImageManifest } from "../common/oci.ts";
import { startTestStack, type TestStack } from "./support/stack.ts";
import { digestOf, writeBlob } from "./support/staged-blobs.ts";

const LOCATIONS = ["far", "fresh", "cut", "ranged", "off"] as const;
type Location = (typeof LOCATIONS)[number];

let stack: TestStack;
let manifest: ImageManifest;
let manifestDigest: string;
/** A blob of 24 MiB, large enough that a client hanging up gets only part of it. */
let big: { digest: string; bytes: Buffer };

const url = (location: Location) => stack.locationUrls[location];
const sha256 = (bytes: Uint8Array) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
const settle = () => new Promise((resolve) => setTimeout(resolve, 1_000));

interface Read {
  operation: string;
  key: string;
}

async function r2Reads(location: Location): Promise<Read[]> {
  const answer = (await (await fetch(`${url(location)}/.instrument/r2-reads`)).json()) as { reads: Read[] };
  return answer.reads;
}

async function resetReads(location: Location): Promise<void> {
  await fetch(`${url(location)}/.instrument/r2-reads/reset`, { method: "POST" });
}

/** A whole pull of shell/hello by tag: the manifest, the config and every layer, each checked against its digest. */
async function pull(location: Location): Promise<void> {
  const base = `${url(location)}/v2/shell/hello`;
  const answer = await fetch(`${base}/manifests/latest`, { headers: { Accept: OCI_MANIFEST } });
  expect(answer.status).toBe(200);
  const bytes = new Uint8Array(await answer.arrayBuffer());
  expect(sha256(bytes)).toBe(manifestDigest);
  for (const blob of [manifest.config, ...manifest.layers]) {
    const got = await fetch(`${base}/blobs/${blob.digest}`);
    expect(got.status).toBe(200);
    expect(sha256(new Uint8Array(await got.arrayBuffer()))).toBe(blob.digest);
  }
}

/** The headers a client sees, minus those of the moment (Date) and of the connection. */
function visibleHeaders(response: Response): Record<string, string> {
  const headers = Object.fromEntries(response.headers);
  for (const name of ["date", "connection", "keep-alive", "cf-cache-status", "age"]) delete headers[name];
  return headers;
}

beforeAll(async () => {
  stack = await startTestStack({
    instrument: {
      locations: LOCATIONS.map((name) => {
        const vars: Record<string, string> = name === "off" ? { EDGE_CACHE: "off" } : {};
        return { name, r2DelayMs: 0, vars };
      }),
    },
  });
  // Build it through the main instance; the locations above have never seen it.
  const answer = await fetch(`${stack.registryUrl}/v2/shell/hello/manifests/latest`, {
    headers: { Accept: OCI_MANIFEST },
  });
  expect(answer.status).toBe(200);
  const bytes = new Uint8Array(await answer.arrayBuffer());
  manifestDigest = sha256(bytes);
  manifest = JSON.parse(new TextDecoder().decode(bytes)) as ImageManifest;
  // A large blob, written into the bucket as the builder writes blobs.
  const { kind: _kind, ...s3 } = loadConfig({ ...stack.s3Env, BUILDER_SECRET: stack.secret }).store;
  const store = new S3BlobStore({
    ...s3,
    spoolDir: join(stack.scratch, "big-spool"),
    log: { info() {}, warn() {}, error() {} },
  });
  await store.init();
  const bytes24 = Buffer.alloc(24 * 1024 * 1024);
  for (let i = 0; i < bytes24.length; i += 4) bytes24.writeUInt32LE((i * 2654435761) >>> 0, i);
  big = { digest: await writeBlob(store, bytes24), bytes: bytes24 };
  expect(big.digest).toBe(digestOf(bytes24));
  store.close();
}, 240_000);

afterAll(async () => {
  await stack?.stop();
});

describe("a location's cache", () => {
  it("serves a second pull without one R2 read: manifests, blobs, the image record and the tag's resolution", async () => {
    await resetReads("far");
    await pull("far");
    const first = await r2Reads("far");
    // The first pull at this location read the bucket for every object.
    for (const blob of [manifest.config, ...manifest.layers]) {
      expect(first.some((read) => read.key === `blobs/sha256/${blob.digest.slice(7)}`)).toBe(true);
    }
    expect(first.some((read) => read.key.startsWith("manifests/"))).toBe(true);
    expect(first.some((read) => read.key.startsWith("images/"))).toBe(true);

    await settle(); // the cache writes that follow a response
    await resetReads("far");
    await pull("far");
    expect(await r2Reads("far")).toEqual([]);
  });

  it("answers Range, If-None-Match and HEAD from the cache with the headers and bytes R2's answers have", async () => {
    const layer = manifest.layers.reduce((a, b) => (b.size > a.size ? b : a));
    const path = `/v2/shell/hello/blobs/${layer.digest}`;
    const full = Buffer.from(await (await fetch(`${url("far")}${path}`)).arrayBuffer());
    const start = Math.floor(layer.size / 3);
    const end = Math.min(layer.size - 1, start + 999);
    const requests: [string, RequestInit][] = [
      ["GET", {}],
      ["HEAD", { method: "HEAD" }],
      ["Range", { headers: { Range: `bytes=${start}-${end}` } }],
      ["suffix Range", { headers: { Range: "bytes=-100" } }],
      ["If-None-Match", { headers: { "If-None-Match": `"${layer.digest}"` } }],
    ];
    await resetReads("far");
    for (const [what, init] of requests) {
      // "far" has the blob cached; "fresh" has not, so its answer comes from R2 (and fills its cache).
      const cached = await fetch(`${url("far")}${path}`, init);
      const fromR2 = await fetch(`${url("fresh")}${path}`, init);
      expect({ what, status: cached.status }).toEqual({ what, status: fromR2.status });
      expect({ what, headers: visibleHeaders(cached) }).toEqual({ what, headers: visibleHeaders(fromR2) });
      const [a, b] = [Buffer.from(await cached.arrayBuffer()), Buffer.from(await fromR2.arrayBuffer())];
      expect(a.equals(b)).toBe(true);
      if (what === "Range") {
        expect(cached.status).toBe(206);
        expect(cached.headers.get("content-range")).toBe(`bytes ${start}-${end}/${layer.size}`);
        expect(a.equals(full.subarray(start, end + 1))).toBe(true);
      }
      if (what === "If-None-Match") expect(cached.status).toBe(304);
      if (what === "HEAD") expect(cached.headers.get("content-length")).toBe(String(layer.size));
    }
    expect(await r2Reads("far")).toEqual([]);
    expect((await r2Reads("fresh")).length).toBeGreaterThan(0);
  });

  it("serves a ranged miss from R2 and fills the cache with the whole blob in the background", async () => {
    const layer = manifest.layers.reduce((a, b) => (b.size > a.size ? b : a));
    const path = `/v2/shell/hello/blobs/${layer.digest}`;
    await resetReads("ranged");
    const part = await fetch(`${url("ranged")}${path}`, { headers: { Range: "bytes=0-99" } });
    expect(part.status).toBe(206);
    expect((await part.arrayBuffer()).byteLength).toBe(100);
    expect((await r2Reads("ranged")).filter((read) => read.key.startsWith("blobs/")).length).toBeGreaterThan(0);
    await settle();
    await resetReads("ranged");
    const whole = await fetch(`${url("ranged")}${path}`);
    expect(sha256(new Uint8Array(await whole.arrayBuffer()))).toBe(layer.digest);
    expect(await r2Reads("ranged")).toEqual([]);
  });

  it("keeps nothing of a blob whose client hung up part way: the next GET streams it whole from R2", async () => {
    const path = `/v2/shell/hello/blobs/${big.digest}`;
    const target = new URL(url("cut"));
    // Read the headers and a little of the body, then hang up.
    await new Promise<void>((resolve, reject) => {
      const socket = connect(Number(target.port), target.hostname, () => {
        socket.write(`GET ${path} HTTP/1.1\r\nHost: ${target.host}\r\nConnection: close\r\n\r\n`);
      });
      let received = 0;
      socket.on("data", (chunk: Buffer) => {
        received += chunk.length;
        if (received > 256 * 1024) {
          socket.destroy();
          resolve();
        }
      });
      socket.on("error", reject);
      socket.on("end", () =>
        reject(new Error(`the whole blob arrived (${received} bytes) before the test could hang up`)),
      );
    });
    await settle();
    await resetReads("cut");
    const again = await fetch(`${url("cut")}${path}`);
    expect(again.status).toBe(200);
    const bytes = Buffer.from(await again.arrayBuffer());
    expect(bytes.length).toBe(big.bytes.length);
    expect(sha256(bytes)).toBe(big.digest);
    // Not from the cache: the partial copy was not kept.
    expect((await r2Reads("cut")).some((read) => read.key === `blobs/sha256/${big.digest.slice(7)}`)).toBe(true);
    // This whole read filled the cache; the next one needs no R2.
    await settle();
    await resetReads("cut");
    const cached = Buffer.from(await (await fetch(`${url("cut")}${path}`)).arrayBuffer());
    expect(sha256(cached)).toBe(big.digest);
    expect(await r2Reads("cut")).toEqual([]);
  });

  it("is left out with EDGE_CACHE=off: every pull reads the bucket", async () => {
    await pull("off");
    await settle();
    await resetReads("off");
    await pull("off");
    const reads = await r2Reads("off");
    for (const blob of [manifest.config, ...manifest.layers]) {
      expect(reads.some((read) => read.key === `blobs/sha256/${blob.digest.slice(7)}`)).toBe(true);
    }
  });
});
