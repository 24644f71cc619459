// The parts of build jobs that need no stack: reading Nix's progress from its log, and which builder a job goes to.
import { describe, expect, it, vi } from "vitest";
import { imageKeyOfRecentJob, recentJobKey } from "../common/bucket-layout.ts";
import { sha256Hex } from "../common/digest.ts";
import { assertBuilderWritable } from "../builder-service/blob-store.ts";
import { NixBuildProgress } from "../builder-service/nix-progress.ts";
import { rankBuilders } from "../common/builder-ranking.ts";
import { builderUrls } from "../worker/builder-pool.ts";
import { editDistance, suggestions } from "../builder-service/package-index.ts";
import { attributeRefusal, DEFAULT_ATTRIBUTE_POLICY, type AttributePolicy } from "../common/attribute-policy.ts";
import { AdmissionError, BuildAdmission, BuildSlots, describeBytes } from "../builder-service/admission.ts";
import { ConfigError, loadConfig } from "../builder-service/config.ts";
import { NixBuildPlanReader, type BuildPlan } from "../builder-service/nix-progress.ts";
import { EarlyLayers, onlyDownloads } from "../builder-service/early-layers.ts";
import { derivationBuilder, NixJsonLogDecoder, type NixFinished } from "../builder-service/nix-log.ts";

describe("Nix build progress", () => {
  it("counts derivations and fetched paths as nix-build announces and runs them", () => {
    const progress = new NixBuildProgress();
    const log = [
      "these 3 derivations will be built:",
      "  /nix/store/4b5v6c7d8e9f0g1h2i3j4k5l6m7n8p9q-hello-2.12.1.drv",
      "these 2 paths will be fetched (1.50 MiB download, 6.25 MiB unpacked):",
      "  /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-glibc-2.40",
      "copying path '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-glibc-2.40' from 'https://cache.nixos.org'...",
      "building '/nix/store/4b5v6c7d8e9f0g1h2i3j4k5l6m7n8p9q-hello-2.12.1.drv'...",
      "hello> unpacking sources",
      "building '/nix/store/5b5v6c7d8e9f0g1h2i3j4k5l6m7n8p9q-image.drv'...",
    ];
    const changed = log.map((line) => progress.line(line));
    expect(changed).toEqual([true, false, true, false, true, true, false, true]);
    expect(progress.progress).toEqual({
      derivations: { done: 1, total: 3 },
      fetched: { done: 1, total: 2, downloadBytes: Math.round(1.5 * 1024 * 1024) },
    });
    progress.finish();
    expect(progress.progress.derivations).toEqual({ done: 3, total: 3 });
    expect(progress.progress.fetched?.done).toBe(2);
  });

  it("reads the singular forms too", () => {
    const progress = new NixBuildProgress();
    progress.line("this derivation will be built:");
    progress.line("this path will be fetched (0.02 MiB download, 0.10 MiB unpacked):");
    expect(progress.progress).toEqual({
      derivations: { done: 0, total: 1 },
      fetched: { done: 0, total: 1, downloadBytes: Math.round(0.02 * 1024 * 1024) },
    });
  });
});

describe("Nix's JSON log", () => {
  // Lines as Nix 2.8's nix-build --log-format internal-json printed them (ids shortened), a build and a download.
  const DRV = "/nix/store/7savrdzv5gs9kkjs1n6ajizkxwcmqmd3-jq-1.6-2.1+deb12u1.drv";
  const FETCHED = "/nix/store/lrqgdv7c74a5pc8vcy905ky7nk7xvy6g-jq-1.6-2.1+deb12u1";
  const log = [
    '@nix {"action":"start","id":1,"level":6,"text":"querying info about missing paths","type":0}',
    '@nix {"action":"stop","id":1}',
    '@nix {"action":"msg","level":3,"msg":"these 2 derivations will be built:"}',
    `@nix {"action":"msg","level":3,"msg":"  ${DRV}"}`,
    '@nix {"action":"msg","level":5,"msg":"a detail printed only with -vv"}',
    '@nix {"action":"start","id":2,"level":0,"text":"","type":104}',
    `@nix {"action":"start","fields":["${DRV}","",1,1],"id":3,"level":3,"text":"building '${DRV}'","type":105}`,
    '@nix {"action":"result","fields":[0,1,0,0],"id":2,"type":105}',
    '@nix {"action":"result","fields":["build-package.sh: jq 1.6-2.1+deb12u1: 1 ELF files patched"],"id":4,"type":101}',
    '@nix {"action":"stop","id":3}',
    `@nix {"action":"start","fields":["${FETCHED}","file:///tmp/cache"],"id":5,"level":0,"text":"","type":108}`,
    `@nix {"action":"start","fields":["${FETCHED}","file:///tmp/cache","local"],"id":6,"level":3,"text":"copying path '${FETCHED}' from 'file:///tmp/cache'","type":100}`,
    '@nix {"action":"stop","id":6}',
    '@nix {"action":"stop","id":5}',
    '@nix {"action":"msg","level":0,"msg":"\\u001b[31;1merror:\\u001b[0m builder for \'\\u001b[35;1m/nix/store/x.drv\\u001b[0m\' failed\\n       last 1 log lines:"}',
    "warning: a line Nix printed as text",
    "@nix {not json",
    '@nix {"action":"stop","id":99}',
    '@nix {"action":"stop","id":2}',
  ];

  it("gives back the lines the human-readable log has, and each build and download as it ends", () => {
    const finished: { after: number; item: NixFinished }[] = [];
    let at = 0;
    const decoder = new NixJsonLogDecoder((item) => finished.push({ after: at, item }));
    const text: string[] = [];
    for (const [index, line] of log.entries()) {
      at = index;
      text.push(...decoder.decode(line));
    }
    expect(text).toEqual([
      "these 2 derivations will be built:",
      `  ${DRV}`,
      `building '${DRV}'...`,
      "build-package.sh: jq 1.6-2.1+deb12u1: 1 ELF files patched",
      `copying path '${FETCHED}' from 'file:///tmp/cache'...`,
      "error: builder for '/nix/store/x.drv' failed",
      "       last 1 log lines:",
      "warning: a line Nix printed as text",
      "@nix {not json",
    ]);
    // At the stop events of the build (line 9) and of the substitution (line 13), not of the copy within it.
    expect(finished).toEqual([
      { after: 9, item: { kind: "built", derivation: DRV } },
      { after: 13, item: { kind: "fetched", path: FETCHED } },
    ]);
  });

  it("feeds the progress and the plan the same lines as before", () => {
    const decoder = new NixJsonLogDecoder(() => undefined);
    const progress = new NixBuildProgress();
    const plan = new NixBuildPlanReader();
    for (const line of log.flatMap((raw) => decoder.decode(raw))) {
      progress.line(line);
      plan.line(line);
    }
    expect(plan.plan.build).toEqual([DRV]);
    expect(progress.progress.derivations).toEqual({ done: 0, total: 2 });
    expect(progress.progress.fetched?.done).toBe(1);
  });

  it("reads a derivation's builder from its file, as the store path it is in", () => {
    const busybox = "/nix/store/dh8vac6156q4fxfxfvf5x1fxa17j9xsn-busybox-static";
    const text =
      `Derive([("out","/nix/store/1d1by9j8671a6h508z1q0bvlpbsgwsiv-image-metadata","","")],` +
      `[("/nix/store/2g6hykwjm01yg8jw10zyjfm7rs7v28n5-busybox-static.drv",["out"]),` +
      `("/nix/store/fdhsrqq1fygl38bk093dvcn1z9xxycmd-cacert-1.0.drv",["out","doc"])],` +
      `["/nix/store/4w9acjk9lhpj86iwvgdvla04lai8f4k6-build.sh"],"x86_64-linux","${busybox}/bin/busybox",` +
      `["sh","-ec","echo \\"$0\\""],[("builder","${busybox}/bin/busybox")])`;
    expect(derivationBuilder(text)).toBe(busybox);
    // A builder outside the store (a fetcher's "builtin:fetchurl") has no path to leave out.
    expect(
      derivationBuilder(`Derive([("out","/nix/store/x","","")],[],[],"x86_64-linux","builtin:fetchurl",[],[])`),
    ).toBe(null);
    expect(derivationBuilder("not a derivation")).toBe(null);
  });
});

describe("early layers' choice of store paths", () => {
  const IMAGE_DRV = "/nix/store/1d1by9j8671a6h508z1q0bvlpbsgwsiv-image-metadata.drv";
  const BUSYBOX = "/nix/store/dh8vac6156q4fxfxfvf5x1fxa17j9xsn-busybox-1.35.0";
  const CURL = "/nix/store/x55dic9z4lq0n7h26zc6mp5flcy8jpp0-curl-7.88.1";
  const LIBC = "/nix/store/0rqgdv7c74a5pc8vcy905ky7nk7xvy6g-libc6-2.36";
  const plan = (build: string[], paths: number): BuildPlan => ({
    build,
    fetch: { paths, downloadBytes: 0, unpackedBytes: 0 },
  });

  it("are written only where Nix's plan downloads and builds nothing but the image's derivation", () => {
    expect(onlyDownloads(plan([IMAGE_DRV], 3), IMAGE_DRV)).toBe(true);
    expect(onlyDownloads(plan([], 3), IMAGE_DRV)).toBe(true);
    expect(onlyDownloads(plan([IMAGE_DRV, "/nix/store/2g6hykwjm01yg8jw10zyjfm7rs7v28n5-curl.drv"], 3), IMAGE_DRV)).toBe(
      false,
    );
    expect(onlyDownloads(plan([IMAGE_DRV], 0), IMAGE_DRV)).toBe(false);
  });

  it("are the closures of fetched paths, without the image derivation's builder, until Nix builds more than planned", async () => {
    // Nix's answers stand in for the store: the closure of curl once it is fetched.
    const asked: string[][] = [];
    const written: string[] = [];
    const reasons: string[] = [];
    const early = new EarlyLayers({
      storeLayers: 99,
      imageDerivation: IMAGE_DRV,
      leaveOut: [BUSYBOX],
      nix: {
        validClosure: async (fetched) => {
          asked.push([...fetched]);
          return [CURL, LIBC, BUSYBOX];
        },
      },
      write: async (path) => void written.push(path),
      onGiveUp: (reason) => reasons.push(reason),
    });
    early.setPlan(plan([IMAGE_DRV], 3));
    early.finished({ kind: "built", derivation: IMAGE_DRV });
    early.finished({ kind: "fetched", path: BUSYBOX });
    early.finished({ kind: "fetched", path: CURL });
    await vi.waitFor(() => expect(written).toHaveLength(2));
    expect(asked).toEqual([[CURL]]);
    expect(written).toEqual([LIBC, CURL]);
    expect([...early.written].sort()).toEqual([LIBC, CURL].sort());
    // The binary cache lost a path since the dry run: Nix announces a build, and nothing more is written early.
    early.setPlan(plan([IMAGE_DRV, "/nix/store/2g6hykwjm01yg8jw10zyjfm7rs7v28n5-jq.drv"], 3));
    expect(reasons).toEqual(["Nix builds 1 derivation(s) the dry run meant to download"]);
    early.finished({ kind: "fetched", path: "/nix/store/lrqgdv7c74a5pc8vcy905ky7nk7xvy6g-jq-1.6" });
    early.stop();
    expect(asked).toHaveLength(1);
    expect(written).toHaveLength(2);
  });
});

describe("builder ranking", () => {
  const builders = ["https://b1.example.com", "https://b2.example.com", "https://b3.example.com"];
  const keys = Promise.all(Array.from({ length: 600 }, (_, i) => sha256Hex(`image ${i}`)));

  it("ranks every builder once, the same way every time", async () => {
    for (const key of (await keys).slice(0, 20)) {
      const ranked = await rankBuilders(builders, key);
      expect([...ranked].sort()).toEqual(builders);
      expect(await rankBuilders([...builders].reverse(), key)).toEqual(ranked);
    }
  });

  it("spreads keys evenly, and removing a builder moves only that builder's keys", async () => {
    const first = new Map<string, string>();
    for (const key of await keys) first.set(key, (await rankBuilders(builders, key))[0]);
    const counts = builders.map((b) => [...first.values()].filter((x) => x === b).length);
    for (const count of counts) expect(count).toBeGreaterThan(150); // 200 each on average
    for (const key of await keys) {
      const without = (await rankBuilders(builders.slice(0, 2), key))[0];
      if (first.get(key) !== builders[2]) expect(without).toBe(first.get(key));
    }
  });

  it("takes BUILDER_URL's builders as origins, and refuses one with a path, which the builder could not serve", () => {
    expect(builderUrls("https://b1.example.com/, https://b2.example.com:8443 https://b1.example.com")).toEqual([
      "https://b1.example.com",
      "https://b2.example.com:8443",
    ]);
    expect(() => builderUrls("https://example.com/builder")).toThrow(
      'BUILDER_URL holds "https://example.com/builder", which has a path: give the builder\'s origin only (https://example.com)',
    );
    expect(() => builderUrls("builder.example.com")).toThrow(
      'BUILDER_URL holds "builder.example.com", which is not a URL',
    );
    expect(() => builderUrls(" ")).toThrow("BUILDER_URL is not configured for the worker");
  });
});

describe("bucket layout", () => {
  it("lists recent jobs newest first", () => {
    const key = "a".repeat(64);
    const older = recentJobKey(key, Date.parse("2026-01-01T00:00:00Z"));
    const newer = recentJobKey(key, Date.parse("2026-06-01T00:00:00Z"));
    expect([older, newer].sort()).toEqual([newer, older]);
    expect(imageKeyOfRecentJob(newer)).toBe(key);
    expect(imageKeyOfRecentJob("recent-jobs/x")).toBeNull();
  });

  it("the builder writes only its own keys, never the worker's", () => {
    const key = "b".repeat(64);
    for (const ok of [
      `images/${key}.json`,
      `jobs/${key}.json`,
      recentJobKey(key, 0),
      "builder-cache/layers/abc.json",
    ]) {
      expect(() => assertBuilderWritable(ok)).not.toThrow();
    }
    for (const refused of [
      "resolutions/latest.json",
      "tags/hello/latest",
      `images/${key}.json/../x`,
      "builder-cache/../images/x",
    ]) {
      expect(() => assertBuilderWritable(refused)).toThrow(/does not write/);
    }
  });
});

describe("attribute policy", () => {
  const denied = (path: string, policy: AttributePolicy = DEFAULT_ATTRIBUTE_POLICY) => attributeRefusal(policy, path);

  it("denies nixpkgs' other package sets however a name reaches them: any case, any depth", () => {
    for (const [path, entry] of [
      ["pkgsCross.riscv64.hello", "pkgsCross"],
      ["pkgscross.riscv64.hello", "pkgsCross"],
      ["PKGSSTATIC.hello", "pkgsStatic"],
      ["pkgsi686linux.wine", "pkgsi686Linux"],
      ["buildPackages.pkgsCross.aarch64-multiplatform.hello", "pkgsCross"],
      ["pkgsbuildhost.pkgsmusl.curl", "pkgsMusl"],
      ["nixostests.nginx", "nixosTests"],
      ["nginx.passthru.tests.nginx", "tests"],
      ["pkgsLLVM", "pkgsLLVM"],
    ]) {
      expect(denied(path), path).toEqual({ path, list: "deny", entry });
    }
    for (const path of [
      "hello",
      "pkgsite",
      "python3Packages.numpy",
      "pkgsLinux.hello",
      "testssl",
      "buildPackages.hello",
    ]) {
      expect(denied(path), path).toBeNull();
    }
  });

  it("takes `2048` and `_2048` for one attribute, as build-image.nix does", () => {
    expect(denied("2048", { deny: ["_2048"], allow: null })).toMatchObject({ list: "deny", entry: "_2048" });
    expect(denied("_2048", { deny: ["2048"], allow: null })).toMatchObject({ list: "deny" });
    expect(denied("tools._2048", { deny: [], allow: ["tools.2048"] })).toBeNull();
  });

  it("a deny entry of several components matches them in a row, anywhere", () => {
    const policy = { deny: ["python3Packages.tensorflow"], allow: null };
    expect(denied("buildpackages.python3packages.tensorflow", policy)).toMatchObject({ list: "deny" });
    expect(denied("python3Packages.numpy", policy)).toBeNull();
    expect(denied("tensorflow", policy)).toBeNull();
  });

  it("an allow-list admits its entries and what is under them, from the root, and the deny-list still applies", () => {
    const policy = { deny: ["pkgsStatic"], allow: ["hello", "python3Packages", "pkgsStatic"] };
    for (const path of ["hello", "HELLO", "python3packages.numpy"]) expect(denied(path, policy), path).toBeNull();
    for (const path of ["curl", "hello2", "buildPackages.hello", "python3"])
      expect(denied(path, policy), path).toEqual({ path, list: "allow" });
    expect(denied("pkgsStatic.hello", policy)).toMatchObject({ list: "deny", entry: "pkgsStatic" });
  });
});

describe("build admission", () => {
  const config = { maxBuilds: 1, maxQueue: 1, maxClosureBytes: 3 * 1024 * 1024, attributes: DEFAULT_ATTRIBUTE_POLICY };
  const refusal = (work: () => void): AdmissionError => {
    try {
      work();
    } catch (error) {
      if (error instanceof AdmissionError) return error;
      throw error;
    }
    throw new Error("not refused");
  };

  it("runs `limit` jobs, queues `queueLimit` more in arrival order, and then has no room", async () => {
    const slots = new BuildSlots(1, 1);
    const order: string[] = [];
    const first = slots.acquire();
    expect(slots.hasRoom).toBe(true);
    const second = slots.acquire();
    expect(slots.hasRoom).toBe(false);
    // A resumed job queues anyway.
    const third = slots.acquire();
    expect([slots.running, slots.queued]).toEqual([1, 2]);
    void second.then(() => order.push("second"));
    void third.then(() => order.push("third"));
    (await first)();
    (await second)();
    await third;
    expect(order).toEqual(["second", "third"]);
    expect(slots.hasRoom).toBe(true);
    (await third)();
    expect([slots.running, slots.queued]).toEqual([0, 0]);
  });

  it("a busy builder's refusal is 503 BUILDER_BUSY naming both limits, with a Retry-After", async () => {
    const admission = new BuildAdmission(config, false);
    void admission.slots.acquire();
    void admission.slots.acquire();
    const busy = refusal(() => admission.checkRoom());
    expect(busy.refusal).toMatchObject({ status: 503, code: "BUILDER_BUSY" });
    expect(busy.message).toContain("BUILDER_MAX_BUILDS=1, BUILDER_MAX_QUEUE=1");
    expect(busy.retryAfterSeconds).toBe(30);
  });

  it("names refused by the policy are 403 DENIED naming the variable and what they reach; resolved paths too", () => {
    const admission = new BuildAdmission(config, false);
    expect(() => admission.checkNames(["hello", "tools.greet"])).not.toThrow();
    const denied = refusal(() => admission.checkNames(["hello", "pkgscross.riscv64.hello"]));
    expect(denied.refusal).toMatchObject({
      status: 403,
      code: "DENIED",
      detail: { refused: [{ name: "pkgscross.riscv64.hello", denied: "pkgsCross" }] },
    });
    expect(denied.message).toBe(
      "not built here: pkgscross.riscv64.hello reaches pkgsCross, which the builder's attribute policy denies (NIXERY_DENY_ATTRIBUTES)",
    );
    const resolved = refusal(() => admission.checkResolved({ hello: "hello", x: "pkgsStatic.hello" }));
    expect(resolved.message).toContain("x (the attribute pkgsStatic.hello) reaches pkgsStatic");
  });

  it("judges Nix's plan: with NIX_MAX_JOBS=0 only the image's own derivation is built; downloads past the closure limit are refused", () => {
    const image = "/nix/store/7b869lfg6gwnhwb4gcazddr3ms48s3iy-image-metadata.drv";
    const reader = new NixBuildPlanReader();
    for (const line of [
      "warning: the group 'nixbld' specified in 'build-users-group' does not exist",
      "these 2 derivations will be built:",
      "  /nix/store/4b5v6c7d8e9f0g1h2i3j4k5l6m7n8p9q-hello-2.12.1.drv",
      `  ${image}`,
      "these 2 paths will be fetched (1.50 MiB download, 6.25 MiB unpacked):",
      "  /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-glibc-2.40",
      "  /nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-libidn2-2.3.7",
    ]) {
      reader.line(line);
    }
    expect(reader.plan).toEqual({
      build: ["/nix/store/4b5v6c7d8e9f0g1h2i3j4k5l6m7n8p9q-hello-2.12.1.drv", image],
      fetch: { paths: 2, downloadBytes: Math.round(1.5 * 1024 ** 2), unpackedBytes: Math.round(6.25 * 1024 ** 2) },
    });
    const substituteOnly = new BuildAdmission({ ...config, maxClosureBytes: 0 }, true);
    const mustBuild = refusal(() => substituteOnly.checkPlan(reader.plan, image));
    expect(mustBuild.refusal).toMatchObject({ status: 403, code: "DENIED", detail: { mustBuild: ["hello-2.12.1"] } });
    expect(mustBuild.message).toContain(
      "(hello-2.12.1), and this builder only downloads from binary caches: it builds nothing itself (NIX_MAX_JOBS=0)",
    );
    expect(() => substituteOnly.checkPlan({ ...reader.plan, build: [image] }, image)).not.toThrow();
    expect(() =>
      new BuildAdmission({ ...config, maxClosureBytes: 0 }, false).checkPlan(reader.plan, image),
    ).not.toThrow();

    const tooBig = refusal(() => new BuildAdmission(config, false).checkPlan(reader.plan, image));
    expect(tooBig.message).toBe(
      "this image's closure is larger than this builder's limit of 3.0 MiB (3145728 bytes) (BUILDER_MAX_CLOSURE_BYTES): " +
        "what Nix would download for it (2 store paths) unpacks to 6.3 MiB (6553600 bytes) on its own; nothing was downloaded",
    );
    const node = (narSize: number) => ({ path: "/nix/store/x", references: [], narSize, closureSize: narSize });
    expect(() => new BuildAdmission(config, false).checkClosure([node(2 * 1024 ** 2), node(1024 ** 2)])).not.toThrow();
    expect(
      refusal(() => new BuildAdmission(config, false).checkClosure([node(2 * 1024 ** 2), node(1024 ** 2 + 1)])).refusal
        .detail,
    ).toEqual({
      limitBytes: 3 * 1024 ** 2,
      closureBytes: 3 * 1024 ** 2 + 1,
    });
    expect(describeBytes(8 * 1024 ** 3)).toBe("8.0 GiB (8589934592 bytes)");
    expect(describeBytes(512)).toBe("512 bytes");
  });

  it("reads its settings from the environment, naming a bad one", () => {
    const base = {
      BUILDER_SECRET: "0123456789abcdef0123",
      S3_ENDPOINT: "https://account.r2.cloudflarestorage.com",
      S3_BUCKET: "registry",
      S3_ACCESS_KEY_ID: "id",
      S3_SECRET_ACCESS_KEY: "secret",
    };
    const defaults = loadConfig(base).admission;
    expect(defaults.maxBuilds).toBeGreaterThanOrEqual(1);
    expect(defaults).toMatchObject({ maxQueue: 32, maxClosureBytes: 8 * 1024 ** 3, attributes: { allow: null } });
    expect(defaults.attributes.deny).toContain("pkgsCross");
    const set = loadConfig({
      ...base,
      BUILDER_MAX_BUILDS: "3",
      BUILDER_MAX_QUEUE: "0",
      BUILDER_MAX_CLOSURE_BYTES: "0",
      NIXERY_DENY_ATTRIBUTES: "none",
      NIXERY_ALLOW_ATTRIBUTES: "hello, python3Packages.numpy tools",
    }).admission;
    expect(set).toEqual({
      maxBuilds: 3,
      maxQueue: 0,
      maxClosureBytes: 0,
      attributes: { deny: [], allow: ["hello", "python3Packages.numpy", "tools"] },
    });
    expect(() => loadConfig({ ...base, BUILDER_MAX_BUILDS: "0", NIXERY_DENY_ATTRIBUTES: "pkgsCross, a..b" })).toThrow(
      ConfigError,
    );
    try {
      loadConfig({ ...base, BUILDER_MAX_BUILDS: "0", NIXERY_DENY_ATTRIBUTES: "pkgsCross, a..b" });
    } catch (error) {
      expect((error as Error).message).toContain("BUILDER_MAX_BUILDS=0 is not a whole number from 1 to 1024");
      expect((error as Error).message).toContain('NIXERY_DENY_ATTRIBUTES: "a..b" is not an attribute path');
    }
  });
});

describe("the package index's suggestions for a name the set lacks", () => {
  const names = ["hello", "help2man", "jq", "python3", "python312", "python3Packages", "ripgrep", "curl", "curlie"];

  it("gives the closest names by edit distance, then names that start with it", () => {
    expect(suggestions("helo", names)).toEqual(["hello"]);
    expect(suggestions("Python3", names)).toEqual(["python3", "python312", "python3Packages"]);
    expect(suggestions("curl", names)).toEqual(["curl", "curlie"]);
    expect(suggestions("rpgrep", names)).toEqual(["ripgrep"]);
    expect(suggestions("pyth", names)).toEqual(["python3", "python312", "python3Packages"]);
  });

  it("gives nothing close for a name like no other, and stops early on long distances", () => {
    expect(suggestions("zzzzzz", names)).toEqual([]);
    expect(editDistance("kitten", "sitting", 3)).toBe(3);
    expect(editDistance("kitten", "sitting", 1)).toBe(2);
  });
});
