// Issue "Current nixpkgs with a Nix that can evaluate it", on the machine's own Nix (Debian 12: 2.8.0).
//
// A local HTTP server stands in for the channel service and GitHub's archives (as in sources.test.ts) and serves
// package-sets/test-nixpkgs, the offline set shaped like nixpkgs, in two versions:
// - as shipped, with nixpkgs' guard (lib/minver.nix: 2.18): too new for this Nix. Before any pull, --check, the
//   signed /status (the open /ready only says "not ready") and `npm start` say so; a pull gets the same error, and
//   nothing is built. (Where the machine's Nix is 2.18 or newer, the guard is raised to 99.0 so that the same path
//   is taken.)
// - with its guard lowered to a version this Nix meets: aliases of removed packages, packages nixpkgs refuses
//   (broken, unfree, insecure), a multi-output package, a nested set and meta.mainProgram, pulled and run with
//   skopeo, umoci and podman.
// test/modern-nix.test.ts runs the set as shipped with Debian 13's Nix 2.26.
import { execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildBuilder } from "./support/built-builder.ts";
import { builderStatus } from "../scripts/builder-calls.ts";
import { OFFLINE_NIX_CONFIG, PROJECT_ROOT } from "../scripts/local-stack.ts";
import { ChannelService, getConfig, getManifest } from "./support/package-sets.ts";
import { podmanRun, pullAndUnpack, runInRootfs, startTestStack, type TestStack } from "./support/stack.ts";

const execFileAsync = promisify(execFile);
const TEST_NIXPKGS = join(PROJECT_ROOT, "package-sets/test-nixpkgs");
const WRAPPER = join(PROJECT_ROOT, "deploy/builder-service");

const hostNix = (
  await execFileAsync("nix-instantiate", ["--eval", "--json", "-E", "builtins.nixVersion"], {
    env: { ...process.env, NIX_CONFIG: OFFLINE_NIX_CONFIG },
  })
).stdout
  .trim()
  .replace(/"/g, "");
const [major, minor] = hostNix.split(".").map(Number);
const hostMeetsNixpkgs = major > 2 || (major === 2 && minor >= 18);
/** What the "too new" set requires: nixpkgs' own 2.18 where this Nix is older, else a version no Nix has. */
const tooNewNeeds = hostMeetsNixpkgs ? "99.0" : "2.18";

const commits = { tooNew: "1".repeat(40), usable: "2".repeat(40) };
let scratch: string;
let channels: ChannelService;
let tooNew: TestStack;
let usable: TestStack;

/** The builder's environment for a channel source served by the stand-in: `latest` follows `channel`. */
function channelEnv(channel: string): Record<string, string> {
  return {
    NIXERY_PKGS_PATH: "",
    NIXERY_CHANNEL: channel,
    NIXERY_CHANNELS_URL: channels.url,
    NIXERY_ARCHIVE_URL: `${channels.url}/archive`,
    NIX_CONFIG: OFFLINE_NIX_CONFIG,
  };
}

beforeAll(async () => {
  await buildBuilder();
  scratch = await mkdtemp(join(tmpdir(), "nixpkgs-set-test-"));
  channels = await ChannelService.start(join(scratch, "channel-service"));
  await channels.addFolderArchive(
    commits.tooNew,
    TEST_NIXPKGS,
    hostMeetsNixpkgs ? { "lib/minver.nix": `"${tooNewNeeds}"` } : {},
  );
  await channels.addFolderArchive(
    commits.usable,
    TEST_NIXPKGS,
    hostMeetsNixpkgs ? {} : { "lib/minver.nix": `"${hostNix}"` },
  );
  channels.channels.set("nixos-toonew", commits.tooNew);
  channels.channels.set("nixos-usable", commits.usable);
  [tooNew, usable] = await Promise.all([
    startTestStack({ builderEnv: channelEnv("nixos-toonew") }),
    startTestStack({ builderEnv: channelEnv("nixos-usable") }),
  ]);
}, 120_000);

afterAll(async () => {
  await Promise.all([tooNew?.stop(), usable?.stop()]);
  await channels?.close();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

describe(`a package set that needs a newer Nix than this one (${hostNix} < ${tooNewNeeds})`, () => {
  const named = (text: string) => {
    expect(text).toContain(`needs Nix >= ${tooNewNeeds}`);
    expect(text).toContain(`this builder has Nix ${hostNix}`);
    expect(text).toContain("https://nixos.org/nix/install");
  };

  it("builder-service --check names both versions and how to get a newer Nix, and exits 1", async () => {
    const env = {
      PATH: process.env.PATH,
      BUILDER_SECRET: "a-secret-of-enough-length",
      BUILDER_DATA_DIR: join(scratch, "check"),
      // The stack's bucket: --check proves the bucket takes writes before it looks at Nix and the package set.
      ...tooNew.s3Env,
      ...channelEnv("nixos-toonew"),
    };
    const result = await execFileAsync(WRAPPER, ["--check"], { env, timeout: 120_000 }).then(
      (r) => ({ code: 0, ...r }),
      (e: { code: number; stdout: string; stderr: string }) => e,
    );
    expect(result.code).toBe(1);
    named(result.stderr);
    expect(result.stderr).not.toContain("This version of Nixpkgs requires"); // our message, not nixpkgs' abort
  });

  it("/ready is 503, before any pull; the signed /status and the builder's log (once) have the same problem", async () => {
    expect(tooNew.jobsStarted()).toBe(0);
    for (let i = 0; i < 3; i++) {
      const response = await fetch(`${tooNew.builder.url}/ready`);
      expect(response.status).toBe(503);
      // Unsigned: ready or not, and nothing more.
      expect(await response.json()).toEqual({ ready: false });
    }
    const status = await builderStatus(tooNew.builder.url, tooNew.secret);
    expect(status.ready).toBe(false);
    named(status.problem!);
    const logged = tooNew.logEvents("not-ready");
    expect(logged).toHaveLength(1);
    named(String(logged[0].problem));
  });

  it("a pull gets 500 NIX_TOO_OLD with the same message, and nothing is built or stored", async () => {
    const answer = await getManifest(tooNew.registryUrl, "hello", "latest");
    expect(answer.status).toBe(500);
    expect(answer.error?.code).toBe("NIX_TOO_OLD");
    named(answer.error!.message);
    expect(answer.error?.detail).toEqual({ needed: tooNewNeeds, have: hostNix });
    expect(tooNew.builds()).toBe(0);
    expect(await tooNew.r2Keys("blobs/")).toEqual([]);
    expect(await tooNew.r2Keys("manifests/")).toEqual([]);
    expect(await tooNew.r2Keys("images/")).toEqual([]);
  });

  it("npm start stops before serving, with the same message", async () => {
    const child = spawn("node", [join(PROJECT_ROOT, "scripts/start.mjs")], {
      cwd: PROJECT_ROOT,
      env: {
        ...process.env,
        ...channelEnv("nixos-toonew"),
        PORT: "0",
        BUILDER_PORT: "0",
        BUILDER_DATA_DIR: join(scratch, "npm-start"),
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    expect(code).toBe(1);
    expect(output).toContain("The registry cannot build images");
    named(output);
    expect(output).not.toContain("Registry ready at");
  }, 120_000);
});

describe("a package set shaped like nixpkgs", () => {
  it("answers the alias of a removed package with a 404 that says what to use instead, building nothing", async () => {
    const before = usable.builds();
    const renamed = await getManifest(usable.registryUrl, "hello-old", "latest");
    expect(renamed.status).toBe(404);
    expect(renamed.error?.code).toBe("MANIFEST_UNKNOWN");
    expect(renamed.error?.message).toContain(
      "hello-old is no longer in the package set: 'hello-old' has been renamed to/replaced by 'hello'",
    );
    const removed = await getManifest(usable.registryUrl, "curl-minimal-old/hello", "latest");
    expect(removed.status).toBe(404);
    expect(removed.error?.message).toContain("'curl-minimal-old' has been removed: use 'curl' instead");
    expect(removed.error?.detail).toMatchObject({ removed: [{ name: "curl-minimal-old" }], unknown: [], refused: [] });
    expect(usable.builds()).toBe(before);
  });

  it.each([
    ["legacy-tool", "is marked as broken", "NIXPKGS_ALLOW_BROKEN=1", "broken"],
    ["vendor-tool", "has an unfree license", "NIXPKGS_ALLOW_UNFREE=1", "unfree"],
    ["leaky-tool", "is marked as insecure", "NIXPKGS_ALLOW_INSECURE=1", "insecure"],
  ])(
    "refuses %s with 403 DENIED naming the reason (%s) and the setting that allows it, building nothing",
    async (name, reason, knob, code) => {
      const before = usable.builds();
      const answer = await getManifest(usable.registryUrl, name, "latest");
      expect(answer.status).toBe(403);
      expect(answer.error?.code).toBe("DENIED");
      expect(answer.error?.message).toContain(`${name} ${reason}`);
      expect(answer.error?.message).toContain(knob);
      expect(answer.error?.detail).toMatchObject({ refused: [{ name, reason: code }] });
      expect(usable.builds()).toBe(before);
    },
  );

  it("gives a multi-output package the outputs nix-env installs: curl's program and manual, not its headers", async () => {
    const rootfs = await pullAndUnpack(
      usable.registryHost,
      "curl:latest",
      await mkdtemp(join(usable.scratch, "curl-")),
    );
    expect((await runInRootfs(rootfs, ["curl"])).stdout).toBe("libcurl 8.9.1 (test fixture)\n");
    expect(existsSync(join(rootfs, "share/man/man1/curl.1"))).toBe(true);
    expect(existsSync(join(rootfs, "include"))).toBe(false);
  });

  it("runs the one package's meta.mainProgram by default: podman run of hello with no command", async () => {
    const answer = await getManifest(usable.registryUrl, "hello", "latest");
    expect((await getConfig(usable.registryUrl, "hello", answer.manifest)).config.Cmd).toEqual(["/bin/hello"]);
    const { stdout } = await podmanRun(await mkdtemp(join(usable.scratch, "podman-")), `${usable.registryHost}/hello`);
    expect(stdout).toBe("Hello, world!\n");
    // With bash in the image, bash stays the default command.
    const shell = await getManifest(usable.registryUrl, "shell/hello", "latest");
    expect((await getConfig(usable.registryUrl, "shell/hello", shell.manifest)).config.Cmd).toEqual(["bash"]);
  });

  it("finds a package in a nested set case-insensitively: python3packages.requests", async () => {
    const rootfs = await pullAndUnpack(
      usable.registryHost,
      "shell/python3packages.requests:latest",
      await mkdtemp(join(usable.scratch, "requests-")),
    );
    const { stdout } = await runInRootfs(rootfs, [
      "bash",
      "-c",
      "cat /lib/python3.12/site-packages/requests/__version__.py",
    ]);
    expect(stdout).toBe('__version__ = "2.32.3"\n');
  });
});
