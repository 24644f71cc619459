// Real software from the Debian-derived offline package set (package-sets/debian-pkgs): the images run curl, git and
// python3 as they would from nixpkgs. The set is generated from this machine's installed packages.
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PROJECT_ROOT } from "../scripts/local-stack.ts";
import { pullAndUnpack, runInRootfs, startTestStack, type TestStack } from "./support/stack.ts";

const execFileAsync = promisify(execFile);
let stack: TestStack;
let setDir: string;

beforeAll(async () => {
  setDir = await mkdtemp(join(tmpdir(), "debian-pkgs-"));
  await execFileAsync("node", [join(PROJECT_ROOT, "package-sets/debian-pkgs/generate.mjs"), setDir, "--quiet"]);
  stack = await startTestStack({ pkgsPath: setDir });
});

afterAll(async () => {
  await stack?.stop();
  await rm(setDir, { recursive: true, force: true });
});

describe("images of real software", () => {
  it("curl runs and prints its version", async () => {
    const rootfs = await pullAndUnpack(stack.registryHost, "curl:latest", await mkdtemp(join(stack.scratch, "curl-")));
    const { stdout } = await runInRootfs(rootfs, ["curl", "--version"]);
    expect(stdout).toMatch(/^curl \d+\.\d+\.\d+ /);
    expect(stdout).toMatch(/OpenSSL|GnuTLS/);
  });

  it("shell/git runs git --version, and bash and coreutils come from the package set", async () => {
    const rootfs = await pullAndUnpack(
      stack.registryHost,
      "shell/git:latest",
      await mkdtemp(join(stack.scratch, "git-")),
    );
    expect((await runInRootfs(rootfs, ["git", "--version"])).stdout).toMatch(/^git version \d+\.\d+/);
    expect((await runInRootfs(rootfs, ["bash", "-c", "echo $BASH_VERSION; ls /bin/ls"])).stdout).toMatch(
      /^\d+\.\d+.*\n\/bin\/ls\n$/,
    );
  });

  it("python3 finds its standard library, and shares its base layers with curl's image", async () => {
    const rootfs = await pullAndUnpack(stack.registryHost, "python3:latest", await mkdtemp(join(stack.scratch, "py-")));
    expect(
      (await runInRootfs(rootfs, ["python3", "-c", "import json, ssl; print(json.dumps([ssl.OPENSSL_VERSION[:7]]))"]))
        .stdout,
    ).toBe('["OpenSSL"]\n');
    const layers = async (image: string) => {
      const response = await fetch(`${stack.registryUrl}/v2/${image}/manifests/latest`);
      return ((await response.json()) as { layers: { digest: string }[] }).layers.map((l) => l.digest);
    };
    const [curl, python] = await Promise.all([layers("curl"), layers("python3")]);
    // glibc, openssl and the rest of the common base are the same blobs in both images.
    const shared = curl.filter((d) => python.includes(d));
    expect(shared.length).toBeGreaterThan(5);
    // And went into the bucket once: no blob was uploaded twice.
    const uploaded = stack.logEvents("s3-upload").map((entry) => entry.digest);
    expect(uploaded.filter((digest, i) => uploaded.indexOf(digest) !== i)).toEqual([]);
    for (const digest of shared) expect(uploaded, digest).toContain(digest);
  });
});
