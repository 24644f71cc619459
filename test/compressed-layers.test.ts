// Layers compressed in 1 MiB blocks on every core (builder-service/block-compression.ts), as gzip and, on request
// (the zstd meta-package), as zstd: the bytes do not depend on the number of threads, and real clients pull and run
// both. Docker 20.10, which cannot read zstd layers, gets a registry error that says so.
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LayerCompression } from "../common/image-name.ts";
import { OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST } from "../common/media-types.ts";
import type { ImageConfig, ImageManifest } from "../common/oci.ts";
import { BlockCompressor } from "../builder-service/block-compression.ts";
import { has, startContainerd, startDockerd } from "./support/daemons.ts";
import { podmanRun, run, startTestStack, type TestStack } from "./support/stack.ts";

let stack: TestStack;

beforeAll(async () => {
  // Two threads whatever the machine, so that the check against one thread below means the same everywhere.
  stack = await startTestStack({ builderEnv: { BUILDER_COMPRESSION_THREADS: "2" } });
});

afterAll(async () => {
  await stack?.stop();
});

const sha256 = (bytes: Uint8Array) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

async function manifestOf(name: string): Promise<ImageManifest> {
  const response = await fetch(`${stack.registryUrl}/v2/${name}/manifests/latest`, {
    headers: { Accept: OCI_MANIFEST },
  });
  expect(response.status).toBe(200);
  return (await response.json()) as ImageManifest;
}

async function blob(name: string, digest: string): Promise<Buffer> {
  const response = await fetch(`${stack.registryUrl}/v2/${name}/blobs/${digest}`);
  expect(response.status).toBe(200);
  return Buffer.from(await response.arrayBuffer());
}

/** Decompressed by the format's own command-line tool, not by the code that compressed it. */
async function decompress(compression: LayerCompression, bytes: Buffer): Promise<Buffer> {
  const child = spawn(compression, ["-dc"], { stdio: ["pipe", "pipe", "inherit"] });
  const out: Buffer[] = [];
  child.stdout.on("data", (chunk: Buffer) => out.push(chunk));
  const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
  await pipeline(Readable.from([bytes]), child.stdin);
  expect(await exited).toBe(0);
  return Buffer.concat(out);
}

/** The tar compressed again by the builder's compressor with one thread at a time. */
async function compressedWithOneThread(compression: LayerCompression, tar: Buffer): Promise<Buffer> {
  const out: Buffer[] = [];
  const compressor = new BlockCompressor({ compression, parallelism: 1 });
  compressor.on("data", (chunk: Buffer) => out.push(chunk));
  await pipeline(Readable.from([tar]), compressor);
  return Buffer.concat(out);
}

describe("layer bytes", () => {
  for (const [name, compression, mediaType] of [
    ["hello", "gzip", OCI_LAYER_GZIP],
    ["zstd/hello", "zstd", OCI_LAYER_ZSTD],
  ] as const) {
    it(`${name}: ${compression} layers whose tar is the diff_id, the same bytes with one thread as with two`, async () => {
      const manifest = await manifestOf(name);
      const config = JSON.parse((await blob(name, manifest.config.digest)).toString()) as ImageConfig;
      expect(manifest.layers.length).toBeGreaterThan(1);
      for (const [index, layer] of manifest.layers.entries()) {
        expect(layer.mediaType).toBe(mediaType);
        const bytes = await blob(name, layer.digest);
        const tar = await decompress(compression, bytes);
        expect(sha256(tar)).toBe(config.rootfs.diff_ids[index]);
        expect(sha256(await compressedWithOneThread(compression, tar))).toBe(layer.digest);
      }
    });
  }

  it("zstd/hello is another image than hello, with the same files", async () => {
    const [gzip, zstd] = await Promise.all([manifestOf("hello"), manifestOf("zstd/hello")]);
    expect(zstd.config.digest).toBe(gzip.config.digest);
    expect(zstd.layers.map((l) => l.digest)).not.toEqual(gzip.layers.map((l) => l.digest));
  });
});

describe("clients pull and run zstd/hello", () => {
  it("skopeo copies it, every layer checked against its digest", async () => {
    const layout = join(await mkdtemp(join(stack.scratch, "skopeo-")), "oci");
    await run("skopeo", [
      "copy",
      "--src-tls-verify=false",
      `docker://${stack.registryHost}/zstd/hello`,
      `oci:${layout}:img`,
    ]);
    for (const layer of (await manifestOf("zstd/hello")).layers)
      expect(existsSync(join(layout, "blobs", "sha256", layer.digest.slice("sha256:".length)))).toBe(true);
  });

  it("podman pulls and runs it (runc)", async () => {
    const dir = await mkdtemp(join(stack.scratch, "podman-"));
    const { stdout } = await podmanRun(dir, `${stack.registryHost}/zstd/hello`, ["hello"]);
    expect(stdout).toBe("Hello, world!\n");
  });

  it("containerd pulls and unpacks it, and runs it (runc)", async (context) => {
    if (!(await has("containerd")) || !(await has("ctr")))
      context.skip("containerd is not installed (apt-get install containerd)");
    const containerd = await startContainerd(await mkdtemp(join(stack.scratch, "ctrd-")));
    try {
      const image = `${stack.registryHost}/zstd/hello:latest`;
      await containerd.client(["images", "pull", "--plain-http", "--snapshotter", "native", image], 180_000);
      expect((await containerd.client(["images", "check"])).stdout).toMatch(/complete/);
      const { stdout } = await containerd.client([
        "run",
        "--rm",
        "--snapshotter",
        "native",
        image,
        "zstd-hello",
        "hello",
      ]);
      expect(stdout.trim()).toBe("Hello, world!");
    } finally {
      await containerd.stop();
    }
  });

  it("the Docker daemon (20.10), which cannot read zstd layers, is told so by the registry", async (context) => {
    if (!(await has("dockerd"))) context.skip("dockerd is not installed (apt-get install docker.io)");
    const docker = await startDockerd(await mkdtemp(join(stack.scratch, "docker-")));
    try {
      const pulled = await docker.clientAllowingFailure(["pull", `${stack.registryHost}/zstd/hello`], 180_000);
      // Left to itself it fails unpacking the first layer with "archive/tar: invalid tar header".
      expect(pulled.code).not.toBe(0);
      expect(pulled.stderr).toMatch(/zstd\/hello has zstd layers, which Docker 20\.10 cannot unpack .*: pull hello /);
      // The gzip image still pulls and runs there.
      await docker.client(["pull", `${stack.registryHost}/hello`], 180_000);
      const { stdout } = await docker.client([
        "run",
        "--rm",
        "--network",
        "none",
        `${stack.registryHost}/hello`,
        "hello",
      ]);
      expect(stdout.trim()).toBe("Hello, world!");
    } finally {
      await docker.stop();
    }
  });
});
