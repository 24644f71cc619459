// Issue: a client pulls a Nix-built image through the worker and the builder, and it runs.
// Everything is real: Nix builds the offline package set, the worker runs in workerd, skopeo pulls,
// umoci unpacks, and the image's programs run in a container-like sandbox (bubblewrap).
import { createHash } from "node:crypto";
import { mkdtemp } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OCI_MANIFEST } from "../common/media-types.ts";
import type { ImageManifest } from "../common/oci.ts";
import { pullAndUnpack, runInRootfs, startTestStack, type TestStack } from "./support/stack.ts";

let stack: TestStack;

beforeAll(async () => {
  stack = await startTestStack();
});

afterAll(async () => {
  await stack?.stop();
});

describe("pulling a Nix-built image end to end", () => {
  it("pulls hello, and hello runs", async () => {
    const rootfs = await pullAndUnpack(stack.registryHost, "hello:latest", await mkdtemp(join(stack.scratch, "hello-")));
    const { stdout } = await runInRootfs(rootfs, ["hello"]);
    expect(stdout).toBe("Hello, world!\n");
  });

  it("pulls an image of two packages, a nested attribute among them, and both commands run", async () => {
    const rootfs = await pullAndUnpack(stack.registryHost, "hello/tools.greet:latest", await mkdtemp(join(stack.scratch, "two-")));
    expect((await runInRootfs(rootfs, ["hello"])).stdout).toBe("Hello, world!\n");
    expect((await runInRootfs(rootfs, ["greet"])).stdout).toMatch(/greetings from tools\.greet/);
  });

  it("serves a second pull of the same image from R2 without building again", async () => {
    const before = await stack.builderCounters();
    const buildRequestsBefore = stack.builderRequests("/build");
    const blobRequestsBefore = stack.builderRequests("/blobs/");
    const rootfs = await pullAndUnpack(stack.registryHost, "hello:latest", await mkdtemp(join(stack.scratch, "again-")));
    expect((await runInRootfs(rootfs, ["hello"])).stdout).toBe("Hello, world!\n");
    expect(stack.builderRequests("/build")).toBe(buildRequestsBefore);
    expect((await stack.builderCounters()).builds).toBe(before.builds);
    // Every blob was copied into R2 on the first pull, so none was fetched from the builder again.
    expect(stack.builderRequests("/blobs/")).toBe(blobRequestsBefore);
    expect(await stack.r2Keys("images/")).toHaveLength(2);
  });

  it("answers an unknown package with 404 MANIFEST_UNKNOWN naming it, and stores nothing", async () => {
    const response = await fetch(`${stack.registryUrl}/v2/hello/nosuchpackage/manifests/latest`);
    expect(response.status).toBe(404);
    expect(response.headers.get("content-type")).toBe("application/json");
    const body = (await response.json()) as { errors: { code: string; message: string; detail: { unknown: string[] } }[] };
    expect(body.errors[0].code).toBe("MANIFEST_UNKNOWN");
    expect(body.errors[0].message).toContain("nosuchpackage");
    expect(body.errors[0].message).not.toContain("hello,");
    expect(body.errors[0].detail.unknown).toEqual(["nosuchpackage"]);
  });

  it("answers a package whose build fails with an error naming it and the tail of its log, and stores nothing", async () => {
    const imagesBefore = await stack.r2Keys("images/");
    const manifestsBefore = await stack.r2Keys("manifests/");
    const response = await fetch(`${stack.registryUrl}/v2/broken/manifests/latest`);
    expect(response.status).toBe(500);
    const body = (await response.json()) as { errors: { code: string; message: string; detail: { log: string } }[] };
    expect(body.errors[0].code).toBe("BUILD_FAILED");
    expect(body.errors[0].message).toMatch(/broken-1\.0/);
    expect(body.errors[0].detail.log).toMatch(/broken on purpose/);
    expect(await stack.r2Keys("images/")).toEqual(imagesBefore);
    expect(await stack.r2Keys("manifests/")).toEqual(manifestsBefore);
  });

  it("copies a blob the builder serves into R2 whole, for a client that reads slowly and for one that hangs up", async () => {
    const manifest = (await (
      await fetch(`${stack.registryUrl}/v2/dataset/hello/manifests/latest`, { headers: { Accept: OCI_MANIFEST } })
    ).json()) as ImageManifest;
    const inR2 = async (digest: string) => (await stack.r2Keys(`blobs/sha256/${digest.slice(7)}`)).length === 1;
    // Layers no earlier pull has brought into R2 (hello's are there already): dataset's 4 MiB and the root filesystem.
    const fresh = [];
    for (const layer of manifest.layers) if (!(await inR2(layer.digest))) fresh.push(layer);
    const [largest, second] = fresh.sort((a, b) => b.size - a.size);
    expect(second).toBeDefined();
    // The client that hangs up gets the big one, so it leaves mid-blob; the slow reader the other.
    const [slowOne, abandoned] = [second, largest];

    // A slow reader: a pause after every chunk. It still gets every byte of the blob.
    const slow = await fetch(`${stack.registryUrl}/v2/dataset/hello/blobs/${slowOne.digest}`);
    expect(slow.status).toBe(200);
    const hash = createHash("sha256");
    let received = 0;
    const reader = slow.body!.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      hash.update(value);
      received += value.byteLength;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    expect(received).toBe(slowOne.size);
    expect(`sha256:${hash.digest("hex")}`).toBe(slowOne.digest);

    // A client that hangs up as soon as the headers are in: the copy into R2 goes on without it.
    const controller = new AbortController();
    const gone = await fetch(`${stack.registryUrl}/v2/dataset/hello/blobs/${abandoned.digest}`, { signal: controller.signal });
    expect(gone.status).toBe(200);
    controller.abort();

    for (let i = 0; i < 100 && !((await inR2(largest.digest)) && (await inR2(second.digest))); i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(await inR2(largest.digest)).toBe(true);
    expect(await inR2(second.digest)).toBe(true);
    // And R2 holds the right bytes: served from there now, with no builder request.
    const blobRequests = stack.builderRequests("/blobs/");
    const again = Buffer.from(await (await fetch(`${stack.registryUrl}/v2/dataset/hello/blobs/${abandoned.digest}`)).arrayBuffer());
    expect(`sha256:${createHash("sha256").update(again).digest("hex")}`).toBe(abandoned.digest);
    expect(stack.builderRequests("/blobs/")).toBe(blobRequests);
  });
});
