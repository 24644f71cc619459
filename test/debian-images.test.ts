// Real software from the Debian-derived offline package set (package-sets/debian-pkgs): the images run curl, git and
// python3 as they would from nixpkgs. The set is generated from this machine's installed packages, with a salt of
// this run's own, so that Nix builds every package afresh as on a new builder: layers are written while it builds
// (builder-service/early-layers.ts), and the image is the same as one written after the build.
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { build, resolveLatest } from "../scripts/builder-calls.ts";
import { PROJECT_ROOT, startBuilder, startLocalBucket } from "../scripts/local-stack.ts";
import { pullAndUnpack, runInRootfs, startTestStack, type TestStack } from "./support/stack.ts";

const execFileAsync = promisify(execFile);
let stack: TestStack;
let setDir: string;

beforeAll(async () => {
  setDir = await mkdtemp(join(tmpdir(), "debian-pkgs-"));
  await execFileAsync("node", [join(PROJECT_ROOT, "package-sets/debian-pkgs/generate.mjs"), setDir, "--quiet"]);
  // New store paths for every package (package-sets/debian-pkgs/default.nix mixes the salt into each).
  const packagesFile = join(setDir, "packages.json");
  const set = JSON.parse(await readFile(packagesFile, "utf8")) as Record<string, unknown>;
  await writeFile(packagesFile, JSON.stringify({ ...set, salt: `debian-images-${Date.now()}-${process.pid}` }));
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

  it("curl's layers were written while Nix built, and give the image a builder writing them after the build gives", async () => {
    // curl's pull above was the first build of this set: Nix built every package of its closure.
    const [built] = stack.logEvents("build").filter((entry) => JSON.stringify(entry.packages) === '["curl"]');
    expect(built).toBeDefined();
    expect(built.earlyLayers).toBeGreaterThan(0);
    expect(built.earlyLayersUnused).toBe(0);
    const response = await fetch(`${stack.registryUrl}/v2/curl/manifests/latest`, {
      headers: { Accept: "application/vnd.oci.image.manifest.v1+json" },
    });
    const served = response.headers.get("docker-content-digest");
    // Another builder, on a bucket of its own, with early layers off: the store paths are built already, and it
    // writes every layer after Nix is done.
    const bucket = await startLocalBucket(join(stack.scratch, "late-bucket"));
    const late = await startBuilder({
      pkgsPath: setDir,
      builderPort: 0,
      builderDataDir: join(stack.scratch, "late-builder"),
      secret: stack.secret,
      s3Env: bucket.s3Env,
      builderEnv: { BUILDER_EARLY_LAYERS: "0" },
    });
    try {
      const { revision } = await resolveLatest(late.url, stack.secret);
      const record = await build(late.url, stack.secret, ["curl"], revision);
      expect(record.image!.oci).toBe(served);
      const lateBuild = late.logLines.find((line) => line.includes('"event":"build"'));
      expect(JSON.parse(lateBuild!)).toMatchObject({ earlyLayers: 0, packages: ["curl"] });
    } finally {
      await late.stop();
      await bucket.dispose();
    }
  });
});
