// Build admission: how many builds a builder takes, and which.
//
// One stack for the file: two builders, each running one build at a time with one more queued
// (BUILDER_MAX_BUILDS=1, BUILDER_MAX_QUEUE=1) and a closure limit of 3 MiB, serving a package set with slow fixtures
// (SLOW_SECONDS of sleep, a fresh nonce per run so Nix builds them every time), big ones, and stand-ins for nixpkgs'
// other package sets under their names (pkgsCross, pkgsStatic, buildPackages). A local binary cache (file://) holds
// two fixtures that are not in the store, so that what Nix would download can be judged. A third builder on the same
// bucket, called directly, has an allow-list and NIX_MAX_JOBS=0.
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { signRequest } from "../common/builder-api.ts";
import type { JobPhase, JobRecord } from "../common/bucket-layout.ts";
import { rankBuilders } from "../common/builder-ranking.ts";
import { imageKey } from "../common/image-key.ts";
import { parseImageName } from "../common/image-name.ts";
import { OCI_MANIFEST } from "../common/media-types.ts";
import type { RegistryErrorBody } from "../common/registry-errors.ts";
import { OFFLINE_NIX_CONFIG, PROJECT_ROOT, startBuilder, type Builder } from "../scripts/local-stack.ts";
import { startTestStack, TEST_PKGS, type TestStack } from "./support/stack.ts";
import { slowProgram } from "./support/slow-fixtures.ts";

const execFileAsync = promisify(execFile);
const SLOW_SECONDS = 5;
/** Slow fixtures to choose from: the test picks some by the builder each is ranked to first. */
const SLOW = Array.from({ length: 12 }, (_, i) => `slow${i}`);
const CLOSURE_LIMIT = 3 * 1024 * 1024;

/** package-sets/test-pkgs plus the fixtures above. */
function packageSet(nonce: string): string {
  const program = (name: string, sleep: number) => slowProgram(name, sleep, nonce);
  // 4 MiB that do not compress: over the closure limit on its own.
  const big = (name: string) => `
  ${name} = derivation {
    name = "${name}-1.0";
    inherit system;
    builder = "\${base.busybox}/bin/sh";
    nonce = "${nonce}";
    args = [ "-ec" "\${base.busybox}/bin/mkdir -p $out/share && \${base.busybox}/bin/head -c 4194304 /dev/urandom > $out/share/data" ];
  };`;
  return `{ system ? builtins.currentSystem, ... }@args:
let
  base = import ${TEST_PKGS} args;
  self = base // {${SLOW.map((name) => program(name, SLOW_SECONDS)).join("")}${program("freshtool", 0)}${program("cachedtool", 0)}${big("bigdata")}${big("bigfetch")}
    # Stand-ins for nixpkgs' other package sets, as stage.nix names them: more of the same packages.
    pkgsCross = { riscv64 = base; };
    pkgsStatic = base;
    buildPackages = self;
  };
in self
`;
}

const nixEnv = { ...process.env, NIX_CONFIG: OFFLINE_NIX_CONFIG };

describe("build admission", () => {
  let scratch: string;
  let pkgsPath: string;
  let stack: TestStack;
  let revision: string;
  let builderNixConfig: string;
  /** Store paths of the fixtures only the binary cache has. */
  const cached: Record<string, string> = {};
  const nonce = randomUUID().slice(0, 8);

  const keyOf = async (name: string) => {
    const parsed = parseImageName(name);
    if (!parsed.ok) throw new Error(parsed.reason);
    return imageKey(revision, parsed.image.system, parsed.image.packages, parsed.image.compression);
  };
  const pull = (name: string) =>
    fetch(`${stack.registryUrl}/v2/${name}/manifests/latest`, { headers: { Accept: OCI_MANIFEST } });
  const errorOf = async (response: Response) => ((await response.json()) as RegistryErrorBody).errors[0];
  const record = async (name: string) =>
    (await (await fetch(`${stack.registryUrl}/api/builds/${await keyOf(name)}`)).json()) as JobRecord;
  const events = (builder: Builder, event: string) =>
    builder.logLines.flatMap((line) => {
      try {
        const entry = JSON.parse(line) as { event?: string; imageKey?: string };
        return entry.event === event ? [entry] : [];
      } catch {
        return [];
      }
    });
  const isValidPath = (path: string) =>
    execFileAsync("nix-store", ["--check-validity", path], { env: nixEnv }).then(
      () => true,
      () => false,
    );

  /** Signed POST /jobs to one builder, as the worker sends it. */
  const postJob = async (url: string, packages: string[], jobId: string, waitSeconds = 0) => {
    const body = JSON.stringify({
      packages,
      system: "x86_64-linux",
      tag: "latest",
      revision,
      jobId,
      ...(waitSeconds ? { waitSeconds } : {}),
    });
    return fetch(`${url}/jobs`, {
      method: "POST",
      headers: { "content-type": "application/json", ...(await signRequest(stack.secret, "POST", "/jobs", body)) },
      body,
    });
  };
  /** Submits a job and asks after it until it ends. */
  const runJob = async (url: string, packages: string[]): Promise<JobRecord> => {
    const jobId = randomUUID();
    for (;;) {
      const response = await postJob(url, packages, jobId, 5);
      expect(response.status).toBe(200);
      const job = (await response.json()) as JobRecord;
      if (job.phase === "done" || job.phase === "failed") return job;
    }
  };

  beforeAll(async () => {
    scratch = await mkdtemp(join(tmpdir(), "admission-"));
    pkgsPath = join(scratch, "pkgs");
    await mkdir(pkgsPath);
    await writeFile(join(pkgsPath, "default.nix"), packageSet(nonce));
    // The binary cache: two fixtures built, copied into it, and removed from the store.
    const cache = `file://${join(scratch, "cache")}`;
    for (const name of ["bigfetch", "cachedtool"]) {
      const { stdout } = await execFileAsync("nix-build", ["--no-out-link", pkgsPath, "-A", name], { env: nixEnv });
      cached[name] = stdout.trim();
      await execFileAsync("nix", ["copy", "--to", `${cache}?compression=none`, cached[name]], { env: nixEnv });
      await execFileAsync("nix-store", ["--delete", cached[name]], { env: nixEnv });
      expect(await isValidPath(cached[name])).toBe(false);
    }
    builderNixConfig = `${OFFLINE_NIX_CONFIG}\nsubstituters = ${cache}\nrequire-sigs = false`;
    stack = await startTestStack({
      pkgsPath,
      builders: 2,
      builderEnv: {
        NIX_CONFIG: builderNixConfig,
        BUILDER_MAX_BUILDS: "1",
        BUILDER_MAX_QUEUE: "1",
        BUILDER_MAX_CLOSURE_BYTES: String(CLOSURE_LIMIT),
      },
    });
    expect((await pull("hello")).status).toBe(200);
    const list = (await (await fetch(`${stack.registryUrl}/api/builds`)).json()) as { builds: { revision: string }[] };
    revision = list.builds[0].revision;
  }, 180_000);

  afterAll(async () => {
    await stack?.stop();
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  it("past the running build and the queue of every builder, a pull gets 503 BUILDER_BUSY with Retry-After; a busy builder's job goes to the other", async () => {
    // Five images: four ranked first to one builder (a), one to the other (b). Each builder takes two (one running,
    // one queued), so a takes two of its four, b takes one or two of a's others, and one image finds no room.
    const urls = stack.builders.map((builder) => builder.url);
    const firstOf = async (name: string) => urls.indexOf((await rankBuilders(urls, await keyOf(name)))[0]);
    const ranked = await Promise.all(SLOW.map(async (name) => ({ name, first: await firstOf(name) })));
    const a = ranked.filter(({ first }) => first === 0).length >= 6 ? 0 : 1;
    const chosen = [
      ...ranked.filter(({ first }) => first === a).slice(0, 4),
      ...ranked.filter(({ first }) => first !== a).slice(0, 1),
    ];
    expect(chosen).toHaveLength(5);
    const names = chosen.map(({ name }) => name);

    const responses = await Promise.all(names.map(async (name) => ({ name, response: await pull(name) })));
    const ok = responses.filter(({ response }) => response.status === 200);
    const busy = responses.filter(({ response }) => response.status === 503);
    expect(ok).toHaveLength(4);
    expect(busy).toHaveLength(1);
    for (const { response } of busy) {
      expect(response.headers.get("retry-after")).toMatch(/^[1-9]\d*$/);
      const error = await errorOf(response);
      expect(error.code).toBe("BUILDER_BUSY");
      expect(error.message).toContain("BUILDER_MAX_BUILDS=1");
      expect(error.message).toContain("BUILDER_MAX_QUEUE=1");
    }

    // Each builder took two: one ran, one waited in phase "queued" while it did.
    const started = stack.builders.map((builder) => events(builder, "job-started").map((entry) => entry.imageKey));
    const keys = await Promise.all(names.map(keyOf));
    expect(started.map((onBuilder) => onBuilder.filter((key) => keys.includes(key!)).length)).toEqual([2, 2]);
    // At least one of a's images ran on b, the builder ranked second for it: a was busy.
    const spilled = chosen.filter(({ first }, i) => first === a && started[1 - a].includes(keys[i]));
    expect(spilled.length).toBeGreaterThanOrEqual(1);
    const waited = [];
    for (const { name } of ok) {
      const job = await record(name);
      const at = (phase: JobPhase) => Date.parse(job.phases.find((p) => p.phase === phase)!.at);
      expect(job.phase).toBe("done");
      if (at("evaluating") - at("queued") > (SLOW_SECONDS - 1) * 1000) waited.push(name);
    }
    expect(waited).toHaveLength(2);

    // With the queues empty again, the refused images build.
    for (const { name } of busy) expect((await pull(name)).status).toBe(200);
  }, 180_000);

  it("names that reach a denied package set, in any case and at any depth, are refused with 403 DENIED and start no job", async () => {
    const names = ["pkgscross.riscv64.hello", "pkgsstatic.hello", "buildpackages.pkgscross.riscv64.hello"];
    // They do reach those sets: Nix resolves each of them (case-insensitively) to a package.
    const { stdout } = await execFileAsync(
      "nix-instantiate",
      [
        "--eval",
        "--strict",
        "--json",
        join(PROJECT_ROOT, "nix/build-image.nix"),
        "-A",
        "resolve",
        "--argstr",
        "packages",
        JSON.stringify(names),
        "--argstr",
        "source",
        JSON.stringify({ kind: "path", path: pkgsPath }),
      ],
      { env: nixEnv },
    );
    expect((JSON.parse(stdout) as { resolved: Record<string, string> }).resolved).toEqual({
      "pkgscross.riscv64.hello": "pkgsCross.riscv64.hello",
      "pkgsstatic.hello": "pkgsStatic.hello",
      "buildpackages.pkgscross.riscv64.hello": "buildPackages.pkgsCross.riscv64.hello",
    });

    const jobsBefore = stack.jobsStarted();
    for (const [name, denied] of [
      ["pkgscross.riscv64.hello", "pkgsCross"],
      ["pkgsstatic.hello", "pkgsStatic"],
      ["buildpackages.pkgscross.riscv64.hello", "pkgsCross"],
    ]) {
      const response = await pull(name);
      expect(response.status).toBe(403);
      const error = await errorOf(response);
      expect(error.code).toBe("DENIED");
      expect(error.message).toContain(name);
      expect(error.message).toContain(`reaches ${denied}`);
      expect(error.message).toContain("NIXERY_DENY_ATTRIBUTES");
      expect(await stack.r2Keys(`jobs/${await keyOf(name)}`)).toEqual([]);
    }
    // Spellings the registry's name grammar can't carry, sent to a builder as the worker would.
    for (const packages of [["PKGSSTATIC.hello"], ["hello", "PkgsCross.riscv64.hello"]]) {
      const response = await postJob(stack.builders[0].url, packages, randomUUID());
      expect(response.status).toBe(403);
      expect((await errorOf(response)).message).toMatch(
        /reaches (pkgsStatic|pkgsCross), which the builder's attribute policy denies \(NIXERY_DENY_ATTRIBUTES\)/,
      );
    }
    expect(stack.jobsStarted()).toBe(jobsBefore);
  }, 60_000);

  it("a closure past BUILDER_MAX_CLOSURE_BYTES is refused with both sizes: before layering, or before downloading when the downloads alone are larger", async () => {
    const built = await pull("bigdata");
    expect(built.status).toBe(403);
    const error = await errorOf(built);
    expect(error.code).toBe("DENIED");
    expect(error.message).toMatch(
      /closure is 4\.\d MiB \(\d+ bytes\) in \d+ store paths, larger than this builder's limit of 3\.0 MiB \(3145728 bytes\) \(BUILDER_MAX_CLOSURE_BYTES\)/,
    );
    const phases = (await record("bigdata")).phases.map((p) => p.phase);
    expect(phases).toEqual(["queued", "evaluating", "building", "failed"]);

    const fetched = await pull("bigfetch");
    expect(fetched.status).toBe(403);
    const before = await errorOf(fetched);
    expect(before.code).toBe("DENIED");
    expect(before.message).toMatch(
      /larger than this builder's limit of 3\.0 MiB \(3145728 bytes\) \(BUILDER_MAX_CLOSURE_BYTES\): what Nix would download for it \(1 store path\) unpacks to 4\.0 MiB \(\d+ bytes\) on its own; nothing was downloaded/,
    );
    expect((await record("bigfetch")).phases.map((p) => p.phase)).toEqual(["queued", "evaluating", "failed"]);
    expect(await isValidPath(cached.bigfetch)).toBe(false);
  }, 60_000);

  describe("a builder with an allow-list and NIX_MAX_JOBS=0", () => {
    let builder: Builder;

    beforeAll(async () => {
      builder = await startBuilder({
        pkgsPath,
        builderPort: 0,
        builderDataDir: join(scratch, "builder-3"),
        secret: stack.secret,
        s3Env: stack.s3Env,
        builderEnv: {
          NIX_CONFIG: builderNixConfig,
          NIX_MAX_JOBS: "0",
          NIXERY_ALLOW_ATTRIBUTES: "hello, coreutils, tools, freshtool, cachedtool, pkgsStatic",
        },
      });
    }, 60_000);

    afterAll(async () => {
      await builder?.stop();
    });

    it("builds only what the allow-list holds, and the deny-list still applies within it", async () => {
      for (const packages of [["nano"], ["hello", "nano"], ["tools2"]]) {
        const response = await postJob(builder.url, packages, randomUUID());
        expect(response.status).toBe(403);
        const error = await errorOf(response);
        expect(error.code).toBe("DENIED");
        expect(error.message).toContain(
          "outside the builder's attribute policy, which builds only hello, coreutils, tools, freshtool, cachedtool, pkgsStatic (NIXERY_ALLOW_ATTRIBUTES)",
        );
      }
      const denied = await postJob(builder.url, ["pkgsStatic.hello"], randomUUID());
      expect(denied.status).toBe(403);
      expect((await errorOf(denied)).message).toContain("NIXERY_DENY_ATTRIBUTES");
      expect(events(builder, "job-started")).toEqual([]);
      // `tools.greet` is under `tools`, and names compare case-insensitively.
      const job = await runJob(builder.url, ["HELLO", "tools.greet"]);
      expect(job.phase).toBe("done");
    }, 60_000);

    it("with NIX_MAX_JOBS=0 an image is made of what the store and the binary cache have; a package that must be built is refused naming the setting", async () => {
      // In the cache only: downloaded, and the image's own metadata built.
      expect(await isValidPath(cached.cachedtool)).toBe(false);
      const fetched = await runJob(builder.url, ["cachedtool", "coreutils"]);
      expect(fetched.error).toBeUndefined();
      expect(fetched.phase).toBe("done");
      expect(await isValidPath(cached.cachedtool)).toBe(true);

      const fresh = await runJob(builder.url, ["freshtool", "hello"]);
      expect(fresh.phase).toBe("failed");
      expect(fresh.error?.status).toBe(403);
      expect(fresh.error?.code).toBe("DENIED");
      expect(fresh.error?.message).toMatch(
        /needs 1 derivation built that no binary cache has \(freshtool-1\.0\), and this builder only downloads from binary caches: it builds nothing itself \(NIX_MAX_JOBS=0\)/,
      );
      expect(fresh.phases.map((p) => p.phase)).toEqual(["queued", "evaluating", "failed"]);
      // Nothing of it was built.
      const { stdout } = await execFileAsync("nix-instantiate", [pkgsPath, "-A", "freshtool"], { env: nixEnv });
      const out = await execFileAsync("nix-store", ["--query", "--outputs", stdout.trim()], { env: nixEnv });
      expect(await isValidPath(out.stdout.trim())).toBe(false);
    }, 60_000);
  });
});
