// Issue "Package sources, tags and meta-packages": the tag picks the package-set revision, moving names
// resolve to a commit (cached for NIXERY_TAG_TTL_SECONDS, then resolved again), images are keyed by that
// commit, names follow Nixery's rules, and shell/arm64 are meta-packages.
//
// Two real stacks (builder with real Nix + worker in workerd), both offline:
// - a git source: a package-set repository this test makes (file:// URL), commits made as the test goes;
// - a channel source: a local HTTP server stands in for the internet here, answering like
//   channels.nixos.org (/<channel>/git-revision) and GitHub's nixpkgs archives (/archive/<commit>.tar.gz).
// Both serve copies of package-sets/test-pkgs whose hello prints a different line per commit (with a per-run id, so
// every run builds fresh derivations: the arm64 error below needs something left to build).
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, readlink, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../builder-service/config.ts";
import { OFFLINE_NIX_CONFIG } from "../scripts/local-stack.ts";
import {
  ChannelService,
  getConfig,
  getManifest,
  PackageSetRepo,
  type FetchedManifest,
} from "./support/package-sets.ts";
import { pullAndUnpack, runInRootfs, startTestStack, type TestStack } from "./support/stack.ts";

const TTL_SECONDS = 2;
const RUN = randomBytes(4).toString("hex");
const REVISION = "org.opencontainers.image.revision";
const SOURCE = "org.opencontainers.image.source";
/** Where package-sets/test-pkgs/fetch-foreign-busybox.sh installs Debian's busybox-static:arm64. */
const ARM64_BUSYBOX = "/usr/local/lib/nix-test-pkgs/aarch64-linux/busybox";

const fakeCommit = () => randomBytes(20).toString("hex");
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

let gitStack: TestStack;
let channelStack: TestStack;
let repo: PackageSetRepo;
let channels: ChannelService;
let scratch: string | undefined;
const commits: Record<"one" | "two" | "three", string> = { one: "", two: "", three: "" };
const channelCommits = { test: fakeCommit(), other: fakeCommit(), pinned: fakeCommit() };

/** Stack options for a builder that serves no local folder (startTestStack passes package-sets/test-pkgs otherwise). */
function sourceEnv(vars: Record<string, string>, nixConfig = OFFLINE_NIX_CONFIG): Record<string, string> {
  return { NIXERY_PKGS_PATH: "", NIXERY_TAG_TTL_SECONDS: String(TTL_SECONDS), NIX_CONFIG: nixConfig, ...vars };
}

/**
 * GET name:tag with a resolution the builder made just now (not one the worker cached a while ago, which could
 * expire during the test): asks again after the ttl when the worker answered from its cache.
 */
async function getFreshlyResolved(stack: TestStack, name: string, tag: string): Promise<FetchedManifest> {
  for (;;) {
    const resolves = stack.builderRequests("/resolve");
    const answer = await getManifest(stack.registryUrl, name, tag);
    if (stack.builderRequests("/resolve") > resolves) return answer;
    await sleep(TTL_SECONDS * 500);
  }
}

async function pullAndRun(stack: TestStack, image: string, command: string[]): Promise<string> {
  const rootfs = await pullAndUnpack(stack.registryHost, image, await mkdtemp(join(stack.scratch, "pull-")));
  return (await runInRootfs(rootfs, command)).stdout;
}

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "sources-test-"));
  repo = await PackageSetRepo.create(join(scratch, "pkgs-repo"));
  commits.one = await repo.commitHello(`Hello from commit one (${RUN})`);
  commits.two = await repo.commitHello(`Hello from commit two (${RUN})`);
  await repo.git("tag", "v1", commits.one);

  channels = await ChannelService.start(join(scratch, "channel-service"));
  await channels.addArchive(channelCommits.test, `Hello from nixos-test (${RUN})`);
  await channels.addArchive(channelCommits.other, `Hello from nixos-other (${RUN})`);
  await channels.addArchive(channelCommits.pinned, `Hello from a pinned commit (${RUN})`);
  channels.channels.set("nixos-test", channelCommits.test);
  channels.channels.set("nixos-other", channelCommits.other);

  // One stack after the other, each with its own builder, worker and local R2.
  gitStack = await startTestStack({ builderEnv: sourceEnv({ NIXERY_PKGS_REPO: repo.url }) });
  channelStack = await startTestStack({
    builderEnv: sourceEnv(
      {
        NIXERY_CHANNEL: "nixos-test",
        NIXERY_CHANNELS_URL: channels.url,
        NIXERY_ARCHIVE_URL: `${channels.url}/archive`,
      },
      // This builder may build aarch64-linux derivations: the test set's builders are x86 busybox either way.
      `${OFFLINE_NIX_CONFIG}\nextra-platforms = aarch64-linux`,
    ),
  });
});

afterAll(async () => {
  await Promise.all([gitStack?.stop(), channelStack?.stop()]);
  await channels?.close();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

describe("a git repository of a package set (NIXERY_PKGS_REPO)", () => {
  it("builds each commit given as the tag from that commit, and says so in labels, annotations and logs", async () => {
    const jobs = gitStack.jobsStarted();
    const one = await getManifest(gitStack.registryUrl, "hello", commits.one);
    const two = await getManifest(gitStack.registryUrl, "hello", commits.two);
    expect([one.status, two.status]).toEqual([200, 200]);
    expect(gitStack.jobsStarted()).toBe(jobs + 2); // one build job per commit
    expect(one.digest).not.toBe(two.digest);
    expect(one.manifest.annotations?.[REVISION]).toBe(commits.one);
    expect(one.manifest.annotations?.[SOURCE]).toBe(repo.url);
    const config = await getConfig(gitStack.registryUrl, "hello", two.manifest);
    expect(config.config.Labels?.[REVISION]).toBe(commits.two);
    expect(config.config.Labels?.[SOURCE]).toBe(repo.url);

    expect(await pullAndRun(gitStack, `hello:${commits.one}`, ["hello"])).toBe(`Hello from commit one (${RUN})\n`);
    expect(await pullAndRun(gitStack, `hello:${commits.two}`, ["hello"])).toBe(`Hello from commit two (${RUN})\n`);

    const builds = gitStack.logEvents("build");
    expect(builds.map((b) => b.revision)).toEqual(expect.arrayContaining([commits.one, commits.two]));
    expect(gitStack.logEvents("resolve")).toContainEqual(
      expect.objectContaining({ tag: commits.one, revision: commits.one, ttlSeconds: 0, source: repo.url }),
    );
  });

  it("resolves a branch name and a git tag to their commits, sharing the commit's image", async () => {
    const two = await getManifest(gitStack.registryUrl, "hello", commits.two);
    const one = await getManifest(gitStack.registryUrl, "hello", commits.one);
    const jobs = gitStack.jobsStarted();
    const main = await getManifest(gitStack.registryUrl, "hello", "main");
    const v1 = await getManifest(gitStack.registryUrl, "hello", "v1");
    expect(main.manifest.annotations?.[REVISION]).toBe(commits.two);
    expect(main.digest).toBe(two.digest);
    expect(v1.digest).toBe(one.digest);
    expect(gitStack.jobsStarted()).toBe(jobs);
  });

  it("answers 404 MANIFEST_UNKNOWN for an unknown branch or commit, and builds nothing", async () => {
    const jobs = gitStack.jobsStarted();
    for (const tag of ["nosuchbranch", fakeCommit(), "v2"]) {
      const answer = await getManifest(gitStack.registryUrl, "hello", tag);
      expect(answer.status, tag).toBe(404);
      expect(answer.error?.code).toBe("MANIFEST_UNKNOWN");
      expect(answer.error?.message).toContain(tag);
    }
    expect(gitStack.jobsStarted()).toBe(jobs);
  });

  it("follows the branch with latest: a new commit shows once the resolution expires, not before", async () => {
    await getManifest(gitStack.registryUrl, "hello", commits.two); // built, so that pulling latest is quick
    const before = await getFreshlyResolved(gitStack, "hello", "latest");
    expect(before.manifest.annotations?.[REVISION]).toBe(commits.two);
    const resolvedAt = Date.now();
    commits.three = await repo.commitHello(`Hello from commit three (${RUN})`);

    const resolves = gitStack.builderRequests("/resolve");
    const cached = await getManifest(gitStack.registryUrl, "hello", "latest");
    expect(Date.now() - resolvedAt).toBeLessThan(TTL_SECONDS * 1000); // else this check proves nothing
    expect(cached.digest).toBe(before.digest);
    expect(gitStack.builderRequests("/resolve")).toBe(resolves);

    await sleep(TTL_SECONDS * 1000 + 200 - (Date.now() - resolvedAt));
    const after = await getManifest(gitStack.registryUrl, "hello", "latest");
    expect(after.manifest.annotations?.[REVISION]).toBe(commits.three);
    expect(after.digest).not.toBe(before.digest);
    expect(await pullAndRun(gitStack, "hello:latest", ["hello"])).toBe(`Hello from commit three (${RUN})\n`);
    // The image is keyed by the commit: the commit as a tag is the same image, not built again.
    const jobs = gitStack.jobsStarted();
    expect((await getManifest(gitStack.registryUrl, "hello", commits.three)).digest).toBe(after.digest);
    expect(gitStack.jobsStarted()).toBe(jobs);
  });
});

describe("package names", () => {
  it("ignores order and duplicates: hello/tools.greet is tools.greet/hello, hello/hello is hello", async () => {
    const tag = commits.one;
    const pair = await getManifest(gitStack.registryUrl, "hello/tools.greet", tag);
    const jobs = gitStack.jobsStarted();
    expect((await getManifest(gitStack.registryUrl, "tools.greet/hello", tag)).digest).toBe(pair.digest);
    expect((await getManifest(gitStack.registryUrl, "hello/hello", tag)).digest).toBe(
      (await getManifest(gitStack.registryUrl, "hello", tag)).digest,
    );
    expect(gitStack.jobsStarted()).toBe(jobs);
  });

  it("matches a lower-case name case-insensitively (bashinteractive is bashInteractive)", async () => {
    const answer = await getManifest(gitStack.registryUrl, "bashinteractive", commits.one);
    expect(answer.status).toBe(200);
    const config = await getConfig(gitStack.registryUrl, "bashinteractive", answer.manifest);
    expect(config.config.Cmd).toEqual(["bash"]); // bin/bash is in the image
  });

  it("gives a name that starts with a digit nixpkgs' _ prefix (2048 is _2048)", async () => {
    expect(await pullAndRun(gitStack, `2048:${commits.one}`, ["2048"])).toMatch(/join the numbers/);
  });
});

describe("meta-packages", () => {
  it("shell/hello has bash, coreutils, moreutils and nano from the package set, and bash -c hello runs", async () => {
    const rootfs = await pullAndUnpack(
      gitStack.registryHost,
      `shell/hello:${commits.one}`,
      await mkdtemp(join(gitStack.scratch, "shell-")),
    );
    expect((await runInRootfs(rootfs, ["bash", "-c", "hello"])).stdout).toBe(`Hello from commit one (${RUN})\n`);
    expect((await runInRootfs(rootfs, ["bash", "-c", "ls /bin | sort | tr '\\n' ' '"])).stdout).toMatch(
      /\bbash\b.*\bls\b.*\bnano\b.*\bsponge\b/,
    );
    expect((await runInRootfs(rootfs, ["/usr/bin/env", "echo", "env works"])).stdout).toBe("env works\n");
    expect(await readlink(join(rootfs, "bin/bash"))).toMatch(
      /^\/nix\/store\/[0-9a-z]{32}-bash-interactive-1\.0\/bin\/bash$/,
    );
    expect(await readlink(join(rootfs, "bin/ls"))).toMatch(/^\/nix\/store\/[0-9a-z]{32}-coreutils-1\.0\/bin\/ls$/);
    // cacert and iana-etc come with every image of a set that has them.
    expect(existsSync(join(rootfs, "etc/ssl/certs/ca-bundle.crt"))).toBe(true);
    expect(existsSync(join(rootfs, "etc/services"))).toBe(true);
    const answer = await getManifest(gitStack.registryUrl, "shell/hello", commits.one);
    const config = await getConfig(gitStack.registryUrl, "shell/hello", answer.manifest);
    expect(config.config.Env).toContain("SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt");
    expect(config.config.Cmd).toEqual(["bash"]);
    expect(config.architecture).toBe("amd64");
  });

  it("arm64/hello on a builder that can't build aarch64-linux: a registry error that says what to configure", async () => {
    const imagesBefore = await gitStack.r2Keys("images/");
    const answer = await getManifest(gitStack.registryUrl, "arm64/hello", commits.one);
    expect(answer.status).toBe(500);
    expect(answer.error?.code).toBe("BUILD_FAILED");
    expect(answer.error?.message).toContain("this builder cannot build packages for aarch64-linux");
    expect(answer.error?.message).toContain("builders = ssh://");
    expect(answer.error?.message).toContain("extra-platforms = aarch64-linux");
    expect(await gitStack.r2Keys("images/")).toEqual(imagesBefore);
  });

  it.skipIf(!existsSync(ARM64_BUSYBOX))(
    `arm64/hello on a builder with extra-platforms = aarch64-linux: an arm64 image with aarch64 binaries (needs ${ARM64_BUSYBOX}: package-sets/test-pkgs/fetch-foreign-busybox.sh)`,
    async () => {
      const answer = await getManifest(channelStack.registryUrl, "arm64/hello", "latest");
      expect(answer.status, JSON.stringify(answer.error)).toBe(200);
      const config = await getConfig(channelStack.registryUrl, "arm64/hello", answer.manifest);
      expect(config.architecture).toBe("arm64");
      expect(config.os).toBe("linux");
      const amd64 = await getManifest(channelStack.registryUrl, "hello", "latest");
      expect(amd64.digest).not.toBe(answer.digest);

      // The image holds the arm64 busybox that hello's script runs (it can't run here without qemu).
      const rootfs = await pullAndUnpack(
        channelStack.registryHost,
        "arm64/hello:latest",
        await mkdtemp(join(channelStack.scratch, "arm64-")),
      );
      const script = await readFile(join(rootfs, await readlink(join(rootfs, "bin/hello"))), "utf8");
      const shell = /^#!(\/nix\/store\/[^\s]+)\/sh\n/.exec(script)?.[1];
      expect(shell).toMatch(/-busybox-static\/bin$/);
      const elf = await readFile(join(rootfs, shell!, "busybox"));
      expect(elf.subarray(0, 4).toString("latin1")).toBe("\x7fELF");
      expect(elf.readUInt16LE(18)).toBe(183); // e_machine EM_AARCH64
    },
  );
});

describe("a nixpkgs channel (the default source)", () => {
  it("resolves latest to the configured channel's commit and builds from that commit's archive", async () => {
    const answer = await getManifest(channelStack.registryUrl, "hello", "latest");
    expect(answer.status).toBe(200);
    expect(answer.manifest.annotations?.[REVISION]).toBe(channelCommits.test);
    expect(answer.manifest.annotations?.[SOURCE]).toBe(channels.url);
    expect(await pullAndRun(channelStack, "hello:latest", ["hello"])).toBe(`Hello from nixos-test (${RUN})\n`);
    expect(channels.requests).toContain("GET /nixos-test/git-revision");
    expect(channels.requests).toContain(`GET /archive/${channelCommits.test}.tar.gz`);
  });

  it("resolves a channel name given as the tag to that channel's commit", async () => {
    const answer = await getManifest(channelStack.registryUrl, "hello", "nixos-other");
    expect(answer.manifest.annotations?.[REVISION]).toBe(channelCommits.other);
    expect(await pullAndRun(channelStack, "hello:nixos-other", ["hello"])).toBe(`Hello from nixos-other (${RUN})\n`);
  });

  it("answers 404 for an unknown channel, a tag that is no channel name and an unknown commit, building nothing", async () => {
    const jobs = channelStack.jobsStarted();
    const unknownCommit = fakeCommit();
    for (const tag of ["nixos-nope", "nosuchtag", unknownCommit]) {
      const answer = await getManifest(channelStack.registryUrl, "hello", tag);
      expect(answer.status, tag).toBe(404);
      expect(answer.error?.code).toBe("MANIFEST_UNKNOWN");
    }
    expect(channelStack.jobsStarted()).toBe(jobs);
    expect(channels.requests).toContain("GET /nixos-nope/git-revision");
    expect(channels.requests.some((r) => r.includes("nosuchtag"))).toBe(false); // not a channel name: not even asked
    expect(channels.requests).toContain(`HEAD /archive/${unknownCommit}.tar.gz`);
  });

  it("builds a 40-hex commit from that commit's archive, pinned", async () => {
    const tag = channelCommits.pinned;
    const answer = await getManifest(channelStack.registryUrl, "hello", tag);
    expect(answer.manifest.annotations?.[REVISION]).toBe(tag);
    expect(await pullAndRun(channelStack, `hello:${tag}`, ["hello"])).toBe(`Hello from a pinned commit (${RUN})\n`);
    expect(channelStack.logEvents("resolve")).toContainEqual(
      expect.objectContaining({ tag, revision: tag, ttlSeconds: 0 }),
    );
  });

  it("moves latest to the channel's new commit once the resolution expires; the commit's image is reused", async () => {
    const before = await getFreshlyResolved(channelStack, "hello", "latest");
    const resolvedAt = Date.now();
    expect(before.manifest.annotations?.[REVISION]).toBe(channelCommits.test);
    channels.channels.set("nixos-test", channelCommits.pinned); // the channel advances
    expect((await getManifest(channelStack.registryUrl, "hello", "latest")).digest).toBe(before.digest);
    expect(Date.now() - resolvedAt).toBeLessThan(TTL_SECONDS * 1000); // else the check above proves nothing
    await sleep(TTL_SECONDS * 1000 + 200 - (Date.now() - resolvedAt));
    const jobs = channelStack.jobsStarted();
    const after = await getManifest(channelStack.registryUrl, "hello", "latest");
    expect(after.manifest.annotations?.[REVISION]).toBe(channelCommits.pinned);
    expect(after.digest).toBe((await getManifest(channelStack.registryUrl, "hello", channelCommits.pinned)).digest);
    expect(after.digest).not.toBe(before.digest);
    expect(channelStack.jobsStarted()).toBe(jobs); // built already, under the commit's key
  });
});

describe("choosing the source (builder configuration)", () => {
  // The bucket's settings are required whatever the source; only the source settings vary below.
  const base = {
    BUILDER_SECRET: "a-secret-of-enough-length",
    S3_ENDPOINT: "https://account.r2.cloudflarestorage.com",
    S3_BUCKET: "nix-edge-registry",
    S3_ACCESS_KEY_ID: "key-id",
    S3_SECRET_ACCESS_KEY: "secret",
  };

  it("serves a git repository with NIXERY_PKGS_REPO, a folder with NIXERY_PKGS_PATH, else a channel", () => {
    expect(
      loadConfig({ ...base, NIXERY_PKGS_REPO: "https://example.org/pkgs.git", NIXERY_PKGS_BRANCH: "release-1" }).source,
    ).toEqual({
      kind: "git",
      url: "https://example.org/pkgs.git",
      branch: "release-1",
    });
    expect(loadConfig({ ...base, NIXERY_PKGS_REPO: "file:///srv/pkgs.git" }).source).toMatchObject({
      kind: "git",
      branch: null,
    });
    expect(loadConfig({ ...base, NIXERY_PKGS_PATH: "package-sets/test-pkgs" }).source.kind).toBe("path");
    expect(loadConfig(base).source).toMatchObject({ kind: "channel", channel: "nixos-unstable" });
  });

  it("names every conflicting or malformed source setting at once", () => {
    const problems = () =>
      loadConfig({ ...base, NIXERY_PKGS_PATH: "x", NIXERY_PKGS_REPO: "--upload-pack=evil", NIXERY_PKGS_BRANCH: "-b" });
    expect(problems).toThrow(ConfigError);
    expect(problems).toThrow(/NIXERY_PKGS_PATH and NIXERY_PKGS_REPO are both set/);
    expect(problems).toThrow(/NIXERY_PKGS_REPO=--upload-pack=evil is not a git URL/);
    expect(problems).toThrow(/NIXERY_PKGS_BRANCH=-b is not a branch name/);
    expect(() => loadConfig({ ...base, NIXERY_PKGS_BRANCH: "main" })).toThrow(/NIXERY_PKGS_REPO is not/);
    expect(() => loadConfig({ ...base, NIXERY_CHANNEL: "unstable" })).toThrow(
      /NIXERY_CHANNEL=unstable is not a channel name/,
    );
  });
});
