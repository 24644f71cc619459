// Issue "Current nixpkgs with a Nix that can evaluate it": the builder under a Nix new enough for current nixpkgs
// (>= 2.18): the machine's own when it is, else Debian 13's Nix 2.26 from a bootstrapped root with its own store
// (test/support/modern-nix.ts; the first run bootstraps it, about a minute). A stand-in for the channel service
// and GitHub's archives (a local HTTP server) serves package-sets/test-nixpkgs as shipped, with nixpkgs' guard
// (lib/minver.nix: 2.18); shell/hello, python3packages.requests and the multi-output curl are pulled with skopeo
// and podman and run, and the builder's Nix really was that Nix. The prefix gives the builder a mount namespace of
// its own but the host's network: it writes into the stack's bucket through the S3 endpoint on 127.0.0.1.
import { execFile } from "node:child_process";
import { readFileSync, statSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { builderStatus } from "../scripts/builder-calls.ts";
import { OFFLINE_NIX_CONFIG, PROJECT_ROOT } from "../scripts/local-stack.ts";
import { atLeast, MIN_NIX_VERSION, prepareModernNix, type ModernNix } from "./support/modern-nix.ts";
import { ChannelService, getConfig, getManifest } from "./support/package-sets.ts";
import { podmanRun, pullAndUnpack, runInRootfs, startTestStack, type TestStack } from "./support/stack.ts";

const execFileAsync = promisify(execFile);

const COMMIT = "3".repeat(40);

let nix: ModernNix;
let stack: TestStack;
let channels: ChannelService;
let traceDir: string;
let trace: string;

/** A command started as the builder is: under the prefix, with its environment. */
async function underModernNix(command: string[]): Promise<string> {
  const [program, ...args] = [...nix.commandPrefix, ...command];
  const { stdout } = await execFileAsync(program, args, { env: { ...process.env, ...nix.env } });
  return stdout;
}

beforeAll(async () => {
  nix = await prepareModernNix();
  traceDir = await mkdtemp(join(tmpdir(), "modern-nix-trace-"));
  trace = join(traceDir, "calls");
  channels = await ChannelService.start(join(traceDir, "channel-service"));
  await channels.addFolderArchive(COMMIT, join(PROJECT_ROOT, "package-sets/test-nixpkgs"));
  channels.channels.set("nixos-test", COMMIT);
  stack = await startTestStack({
    builderEnv: {
      ...nix.env,
      MODERN_NIX_TRACE: trace,
      NIXERY_PKGS_PATH: "",
      NIXERY_CHANNEL: "nixos-test",
      NIXERY_CHANNELS_URL: channels.url,
      NIXERY_ARCHIVE_URL: `${channels.url}/archive`,
      NIX_CONFIG: OFFLINE_NIX_CONFIG,
    },
    builderCommandPrefix: nix.commandPrefix,
  });
}, 15 * 60_000);

afterAll(async () => {
  await stack?.stop();
  await channels?.close();
  if (traceDir) await rm(traceDir, { recursive: true, force: true });
});

describe(`the builder under Nix >= ${MIN_NIX_VERSION}`, () => {
  it("gives the builder's nix commands that Nix", async () => {
    expect(atLeast(nix.version, MIN_NIX_VERSION)).toBe(true);
    for (const command of ["nix-build", "nix-instantiate", "nix-store", "nix"]) {
      expect(await underModernNix([command, "--version"])).toContain(`(Nix) ${nix.version}`);
    }
    if (nix.bootstrapped) {
      // Under the prefix /nix is the separate store, not the host's.
      const inside = (await underModernNix(["stat", "-c", "%d:%i", "/nix"])).trim();
      const separate = statSync(nix.nixDir);
      expect(inside).toBe(`${separate.dev}:${separate.ino}`);
    }
  });

  it("is ready for the nixpkgs-shaped set as shipped (it needs Nix >= 2.18), before any pull", async () => {
    const response = await fetch(`${stack.builder.url}/ready`);
    expect(await response.json()).toEqual({ ready: true });
    const status = await builderStatus(stack.builder.url, stack.secret);
    expect(status.store).toBe(`S3 bucket ${stack.s3Env.S3_BUCKET} at ${stack.s3Env.S3_ENDPOINT}`);
    const answer = await getManifest(stack.registryUrl, "hello", "latest");
    expect(answer.status).toBe(200);
    expect(answer.manifest.annotations?.["org.opencontainers.image.revision"]).toBe(COMMIT);
  });

  it("pulls shell/hello with skopeo, and bash runs hello; podman runs it too", async () => {
    const rootfs = await pullAndUnpack(
      stack.registryHost,
      "shell/hello:latest",
      await mkdtemp(join(stack.scratch, "shell-")),
    );
    expect((await runInRootfs(rootfs, ["bash", "-c", "hello"])).stdout).toBe("Hello, world!\n");
    const { stdout } = await podmanRun(
      await mkdtemp(join(stack.scratch, "pod-")),
      `${stack.registryHost}/shell/hello`,
      ["hello"],
    );
    expect(stdout).toBe("Hello, world!\n");
  });

  it("pulls python3packages.requests, found case-insensitively in the nested set", async () => {
    const rootfs = await pullAndUnpack(
      stack.registryHost,
      "shell/python3packages.requests:latest",
      await mkdtemp(join(stack.scratch, "requests-")),
    );
    const { stdout } = await runInRootfs(rootfs, [
      "bash",
      "-c",
      "cat /lib/python3.12/site-packages/requests/__version__.py",
    ]);
    expect(stdout).toBe('__version__ = "2.32.3"\n');
  });

  it("pulls the multi-output curl: its program (the image's default command) and manual, not its headers", async () => {
    const answer = await getManifest(stack.registryUrl, "curl", "latest");
    expect((await getConfig(stack.registryUrl, "curl", answer.manifest)).config.Cmd).toEqual(["/bin/curl"]);
    const { stdout } = await podmanRun(await mkdtemp(join(stack.scratch, "pod-")), `${stack.registryHost}/curl`);
    expect(stdout).toBe("libcurl 8.9.1 (test fixture)\n");
    const rootfs = await pullAndUnpack(stack.registryHost, "curl:latest", await mkdtemp(join(stack.scratch, "curl-")));
    expect(await readdir(join(rootfs, "share/man/man1"))).toEqual(["curl.1"]);
    await expect(readdir(join(rootfs, "include"))).rejects.toThrow();
  });

  it("built those images with that Nix, into its store", async () => {
    const rootfs = await pullAndUnpack(
      stack.registryHost,
      "hello:latest",
      await mkdtemp(join(stack.scratch, "again-")),
    );
    const hello = (await readdir(join(rootfs, "nix/store"))).find((name) => /^[0-9a-z]{32}-hello-2\.12$/.test(name));
    expect(hello).toBeDefined();
    // Valid in the database of the Nix under the prefix: that Nix registered it when it built it.
    expect(await underModernNix(["nix-store", "--check-validity", "--print-invalid", `/nix/store/${hello}`])).toBe("");
    if (nix.bootstrapped) {
      // Every check and build of the running builder went through the wrappers.
      const calls = (await readFile(trace, "utf8")).split("\n");
      expect(calls.some((line) => line.startsWith("nix-instantiate "))).toBe(true);
      // The image's derivation is evaluated once, then planned and built from its .drv (with Nix's JSON log, which
      // says when each download is done, when the plan only downloads), its output rooted (an indirect root in the
      // builder's data folder) until the image is published.
      expect(
        calls.some((line) => line.startsWith("nix-instantiate ") && line.includes("build-image.nix -A image")),
      ).toBe(true);
      expect(calls.some((line) => line.startsWith("nix-store --realise --dry-run /nix/store/"))).toBe(true);
      expect(
        calls.some((line) =>
          /^nix-build (?:--log-format internal-json )?--out-link \/\S+\/gcroots\/image-drv-\w+\/image \/nix\/store\/[0-9a-z]{32}-image-metadata\.drv$/.test(
            line,
          ),
        ),
      ).toBe(true);
      // And the set's busybox was Debian 13's, the one in the bootstrapped root, not the host's.
      const trixieBusybox = readFileSync(join(nix.root!, "usr/bin/busybox"));
      const imported = (await readdir(join(nix.nixDir, "store"))).filter((name) => /^[0-9a-z]{32}-busybox$/.test(name));
      expect(
        imported.some((name) => readFileSync(join(nix.nixDir, "store", name, "busybox")).equals(trixieBusybox)),
      ).toBe(true);
    }
  });
});
