// Issue: a client pulls a Nix-built image through the worker and the builder, and it runs.
// Everything is real: Nix builds the offline package set, the worker runs in workerd, skopeo pulls,
// umoci unpacks, and the image's programs run in a container-like sandbox (bubblewrap).
import { mkdtemp } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
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
});
