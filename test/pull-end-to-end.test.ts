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
    const rootfs = await pullAndUnpack(
      stack.registryHost,
      "hello:latest",
      await mkdtemp(join(stack.scratch, "hello-")),
    );
    const { stdout } = await runInRootfs(rootfs, ["hello"]);
    expect(stdout).toBe("Hello, world!\n");
  });

  it("pulls an image of two packages, a nested attribute among them, and both commands run", async () => {
    const rootfs = await pullAndUnpack(
      stack.registryHost,
      "hello/tools.greet:latest",
      await mkdtemp(join(stack.scratch, "two-")),
    );
    expect((await runInRootfs(rootfs, ["hello"])).stdout).toBe("Hello, world!\n");
    expect((await runInRootfs(rootfs, ["greet"])).stdout).toMatch(/greetings from tools\.greet/);
  });

  it("serves a second pull of the same image from R2 without building again", async () => {
    expect(stack.jobsStarted()).toBe(2); // hello, and hello/tools.greet
    const before = await stack.builderCounters();
    const requestsBefore = stack.builderRequests("/");
    const rootfs = await pullAndUnpack(
      stack.registryHost,
      "hello:latest",
      await mkdtemp(join(stack.scratch, "again-")),
    );
    expect((await runInRootfs(rootfs, ["hello"])).stdout).toBe("Hello, world!\n");
    await new Promise((resolve) => setTimeout(resolve, 50)); // the builder's log lines, if any, arrive
    expect(stack.jobsStarted()).toBe(2);
    expect((await stack.builderCounters()).builds).toBe(before.builds);
    // Nothing at all reached the builder: the image record, manifest and blobs all come from R2.
    expect(stack.builderRequests("/")).toBe(requestsBefore);
    expect(await stack.r2Keys("images/")).toHaveLength(2);
  });

  it("answers an unknown package with 404 MANIFEST_UNKNOWN naming it, and stores nothing", async () => {
    const response = await fetch(`${stack.registryUrl}/v2/hello/nosuchpackage/manifests/latest`);
    expect(response.status).toBe(404);
    expect(response.headers.get("content-type")).toBe("application/json");
    const body = (await response.json()) as {
      errors: { code: string; message: string; detail: { unknown: string[] } }[];
    };
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

  it("has every blob of an image in R2 once its manifest is served; a slow reader gets them whole, a client that hangs up harms nothing", async () => {
    const response = await fetch(`${stack.registryUrl}/v2/dataset/hello/manifests/latest`, {
      headers: { Accept: OCI_MANIFEST },
    });
    const manifest = (await response.json()) as ImageManifest;
    // The builder writes the blobs, then the manifests, then the image record: nothing a pull asks for next is missing.
    const blobs = await stack.r2Keys("blobs/sha256/");
    for (const blob of [manifest.config, ...manifest.layers])
      expect(blobs, blob.digest).toContain(`blobs/sha256/${blob.digest.slice(7)}`);
    expect(await stack.r2Keys("manifests/sha256/")).toContain(
      `manifests/sha256/${response.headers.get("docker-content-digest")?.slice(7)}`,
    );
    const [largest, second] = [...manifest.layers].sort((a, b) => b.size - a.size);
    expect(largest.size).toBeGreaterThan(4 * 1024 * 1024); // dataset's 4 MiB
    const requestsBefore = stack.builderRequests("/");

    // A slow reader: a pause after every chunk. It still gets every byte of the blob.
    const slow = await fetch(`${stack.registryUrl}/v2/dataset/hello/blobs/${second.digest}`);
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
    expect(received).toBe(second.size);
    expect(`sha256:${hash.digest("hex")}`).toBe(second.digest);

    // A client that hangs up in the middle of the big layer; the next one gets it whole.
    const controller = new AbortController();
    const gone = await fetch(`${stack.registryUrl}/v2/dataset/hello/blobs/${largest.digest}`, {
      signal: controller.signal,
    });
    expect(gone.status).toBe(200);
    const first = await gone.body!.getReader().read();
    expect(first.done).toBe(false);
    controller.abort();
    const again = Buffer.from(
      await (await fetch(`${stack.registryUrl}/v2/dataset/hello/blobs/${largest.digest}`)).arrayBuffer(),
    );
    expect(again.byteLength).toBe(largest.size);
    expect(`sha256:${createHash("sha256").update(again).digest("hex")}`).toBe(largest.digest);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(stack.builderRequests("/")).toBe(requestsBefore);
  });
});
