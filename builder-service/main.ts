// The builder-service command: `builder-service [--help | --check | --collect-garbage [--dry-run] | --exit-with-stdin]`,
// configured by environment (see config.ts).
//
// Longer than most files here: the startup, in the order it happens.
import { access, constants, mkdir, rm } from "node:fs/promises";
import { parseArgs, type ParseArgsConfig } from "node:util";
import { BuildAdmission } from "./admission.ts";
import { collectGarbage, type GcReport } from "./gc/collect.ts";
import { ConfigError, ENVIRONMENT_HELP, loadConfig, type BuilderConfig } from "./config.ts";
import { serveFetch } from "./http-adapter.ts";
import { ImageBuilder } from "./image-builder.ts";
import { BuildJobs } from "./jobs.ts";
import { jsonLogger, type Logger } from "./log.ts";
import { LatestCompatibility } from "./nix-compatibility.ts";
import { NixRunner } from "./nix-runner.ts";
import { NixStoreLimit } from "./nix-store-limit.ts";
import { PackageIndex } from "./package-index.ts";
import { nixConfig, NixSettingsError, probeNix, probeNixSandbox, sandboxReport } from "./nix-settings.ts";
import { loadPopularity, PopularityError, type LoadedPopularity } from "./popularity.ts";
import { cachedReadiness } from "./readiness.ts";
import { S3Error } from "./s3/errors.ts";
import { S3BlobStore } from "./s3/store.ts";
import { createBuilderHandler } from "./server.ts";
import { ChannelSource } from "./sources/channel.ts";
import { GitRepoSource } from "./sources/git-repo.ts";
import { LocalPathSource } from "./sources/local-path.ts";
import { withResolutionLog, type PackageSource } from "./sources/package-source.ts";

/** How long startup waits for the first check of `latest` (a channel's tarball may be downloading) before serving. */
const STARTUP_CHECK_MS = 60_000;
/** How often a running job's record in the bucket is rewritten when nothing else moved. */
const JOB_HEARTBEAT_SECONDS = 5;

/** The command's options: `node:util` parseArgs refuses any other (a misspelt --check must not start serving). */
const OPTIONS = {
  help: { type: "boolean", short: "h" },
  check: { type: "boolean" },
  "exit-with-stdin": { type: "boolean" },
  "collect-garbage": { type: "boolean" },
  "dry-run": { type: "boolean" },
} as const satisfies ParseArgsConfig["options"];

type Options = { [K in keyof typeof OPTIONS]?: boolean };

/** The options given, or an exit with status 2 (a usage error, like a setting to fix) listing the valid ones. */
function parseOptions(args: string[]): Options {
  try {
    return parseArgs({ args, options: OPTIONS, strict: true, allowPositionals: false }).values;
  } catch (error) {
    const valid = Object.entries(OPTIONS).map(([name, option]) =>
      "short" in option ? `--${name} (-${option.short})` : `--${name}`,
    );
    console.error(
      `builder-service: ${(error as Error).message}\nValid options: ${valid.join(", ")}; builder-service --help says more.`,
    );
    process.exit(2);
  }
}

function usage(): string {
  const width = Math.max(...ENVIRONMENT_HELP.map(([name]) => name.length));
  return [
    "builder-service: builds container images with Nix for the nix-edge-registry worker.",
    "",
    "Usage: builder-service [--help | --check | --collect-garbage [--dry-run] | --exit-with-stdin]",
    "",
    "  -h, --help         print this help and exit",
    "  --check            check the settings, the package source, Nix (and that it is new enough for the package",
    "                     set `latest` serves) and that the bucket takes writes, then exit:",
    "                     0 when all is well, 2 for a setting to fix, 1 otherwise",
    "  --collect-garbage  remove from the bucket the images the GC_* settings expire and every blob, manifest,",
    "                     record and marker no kept image needs, then exit (a systemd timer runs it daily);",
    "                     running builders wait while it deletes. Reports counts and bytes removed and kept",
    "  --dry-run          with --collect-garbage: list what it would remove, and why, removing nothing",
    "  --exit-with-stdin  stop when standard input closes: for a process that runs the builder as its child",
    "                     (npm start), so that the builder never outlives it, even when it is killed",
    "",
    "Reads its settings from the environment (under systemd: EnvironmentFile=/etc/nix-edge-registry/builder.env),",
    "checks them and that the bucket takes writes, then serves the worker until stopped.",
    "Logs are JSON lines on stdout: one per request and one per build, with timings.",
    "",
    "Configuration (environment variables, with their defaults):",
    ...ENVIRONMENT_HELP.map(([name, meaning]) => `  ${name.padEnd(width)}  ${meaning}`),
    "",
    "Endpoints: GET /health and GET /ready (unsigned, and saying no more than up and ready or not), and signed:",
    "GET /status (why not ready, the bucket, counters) and, for the worker, POST /resolve and POST /jobs.",
  ].join("\n");
}

/**
 * The package source the configuration names, ready to serve. With `checkOnly` (--check) nothing is set up
 * that takes long: a git repository is asked for its HEAD instead of being cloned.
 */
async function createSource(config: BuilderConfig, log: Logger, checkOnly: boolean): Promise<PackageSource> {
  if (config.source.kind === "path") {
    const source = new LocalPathSource(config.source.path, config.tagTtlSeconds, config.nix.timeoutSeconds);
    await source.check();
    return source;
  }
  if (config.source.kind === "git") {
    const source = new GitRepoSource({
      url: config.source.url,
      branch: config.source.branch,
      dataDir: config.dataDir,
      ttlSeconds: config.tagTtlSeconds,
      nixTimeoutSeconds: config.nix.timeoutSeconds,
      log,
    });
    if (checkOnly) await source.check();
    else await source.init();
    return source;
  }
  return new ChannelSource({
    defaultChannel: config.source.channel,
    channelsUrl: config.source.channelsUrl,
    archiveUrl: config.source.archiveUrl,
    ttlSeconds: config.tagTtlSeconds,
  });
}

/** The bucket, ready to use; S3 problems at startup are reported like config errors. */
async function createStore(config: BuilderConfig, log: Logger, spooling = true): Promise<S3BlobStore> {
  const { kind: _kind, ...s3 } = config.store;
  const store = new S3BlobStore({ ...s3, spoolDir: `${config.dataDir}/spool`, log });
  // Not for --collect-garbage: init() empties the spool, which a builder running on this machine may be using.
  if (spooling) await store.init();
  try {
    await store.check();
  } catch (error) {
    store.close();
    if (error instanceof S3Error) {
      const what = error.isConfiguration ? "the S3 store refused the builder" : "the S3 store cannot be reached";
      console.error(
        `builder-service: cannot start: ${what}:\n${error.message}\n\nRun builder-service --help for every setting.`,
      );
      process.exit(error.isConfiguration ? 2 : 1);
    }
    throw error;
  }
  return store;
}

/**
 * The popularity data the configuration names, if any. Data that cannot be loaded stops the builder, saying what
 * to do: building without it would lay out images past the layer budget differently, under other digests.
 */
async function configuredPopularity(config: BuilderConfig, log: Logger): Promise<LoadedPopularity | undefined> {
  if (!config.popularity) return undefined;
  const { source, setting } = config.popularity;
  if (setting === "NIXERY_POPULARITY_PATH") {
    log.warn("setting-deprecated", {
      setting,
      use: "NIX_POPULARITY_URL",
      detail:
        "NIXERY_POPULARITY_PATH is the older name of NIX_POPULARITY_URL, which also takes an http(s) URL: rename it",
    });
  }
  try {
    const popularity = await loadPopularity(source);
    log.info("popularity-loaded", { source, entries: popularity.entries });
    return popularity;
  } catch (error) {
    if (!(error instanceof PopularityError)) throw error;
    const fix =
      setting === "NIXERY_PKGS_PATH"
        ? `Fix or remove ${source}, which the package set at NIXERY_PKGS_PATH provides.`
        : `Fix ${setting} (Nixery's format, {"name-version": count}), or unset it to build without popularity data ` +
          "(images with more store paths than NIXERY_LAYER_BUDGET are then laid out differently).";
    const later = error.permanent
      ? ""
      : "\nThe download may work later (under systemd the builder is started again); or point it at a copy on disk.";
    console.error(
      `builder-service: cannot start: ${error.message}\n${fix}${later}\n\nRun builder-service --help for every setting.`,
    );
    process.exit(error.permanent ? 2 : 1);
  }
}

/** A line a person reads at the end of a collection (the JSON report is in the log line gc-report). */
function gcSummary(report: GcReport): string {
  const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;
  const kinds = (tally: GcReport["removed"]) =>
    Object.entries(tally.byKind)
      .map(([kind, { count }]) => `${count} ${kind}`)
      .join(", ") || "nothing";
  const verb = report.dryRun ? "would remove" : "removed";
  const lines = [
    `builder-service: garbage collection ${report.dryRun ? "dry run " : ""}${verb} ${report.removed.count} objects, ` +
      `${mb(report.removed.bytes)} (${kinds(report.removed)}); kept ${report.kept.count}, ${mb(report.kept.bytes)}`,
  ];
  if (report.leftForNextRun > 0) lines.push(`  ${report.leftForNextRun} removals left for the next run (time limit)`);
  for (const { key, why } of report.removals ?? []) lines.push(`  ${key}  (${why})`);
  return lines.join("\n");
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  if (options.help) {
    console.log(usage());
    return;
  }
  if (options["dry-run"] && !options["collect-garbage"]) {
    console.error("builder-service: --dry-run goes with --collect-garbage; builder-service --help says more.");
    process.exit(2);
  }
  let config: BuilderConfig;
  try {
    config = loadConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(
        `builder-service: cannot start:\n${error.message}\n\nRun builder-service --help for every setting.`,
      );
      process.exit(2);
    }
    throw error;
  }
  const log = jsonLogger;
  if (options["collect-garbage"]) {
    const store = await createStore(config, log, false);
    try {
      const report = await collectGarbage(store, config.gc, { dryRun: options["dry-run"] === true, log });
      console.error(gcSummary(report));
    } catch (error) {
      console.error(`builder-service: garbage collection failed: ${(error as Error).message}`);
      process.exit(1);
    } finally {
      store.close();
    }
    return;
  }
  // Before anything slow: a wrong URL or file is a setting to fix.
  const popularity = await configuredPopularity(config, log);
  // Every Nix command gets the named settings as NIX_CONFIG; Nix reads them once here, so a value it refuses
  // stops the builder now, naming the variable.
  const nixEnv = { ...process.env, NIX_CONFIG: nixConfig(config.nix, process.env.NIX_CONFIG) };
  let nixVersion: string;
  try {
    nixVersion = (await probeNix(nixEnv)).version;
  } catch (error) {
    if (error instanceof NixSettingsError) {
      console.error(
        `builder-service: cannot start: Nix refuses the builder's settings:\n${error.message}\n\nRun builder-service --help for every setting.`,
      );
      process.exit(2);
    }
    throw error;
  }
  const store = await createStore(config, log);
  const checkOnly = options.check === true;
  let source: PackageSource;
  try {
    source = await createSource(config, log, checkOnly);
  } catch (error) {
    console.error(`builder-service: cannot start: ${(error as Error).message}`);
    process.exit(1);
  }
  // Builds for a system Nix can't build here (arm64/... on x86_64) fail with a message saying what to configure.
  // GC roots of running builds, where nix-daemon sees them (not a private /tmp); left over from a previous run:
  // nothing holds them any more.
  const rootsDir = `${config.dataDir}/gcroots`;
  if (!checkOnly) {
    await rm(rootsDir, { recursive: true, force: true });
    await mkdir(rootsDir, { recursive: true });
  }
  const nix = new NixRunner({
    nixDir: config.nixDir,
    timeoutSeconds: config.nix.timeoutSeconds,
    env: nixEnv,
    rootsDir: checkOnly ? undefined : rootsDir,
  });
  // Not a reason to refuse to start (some hosts cannot sandbox), but something the operator must see.
  const sandbox = sandboxReport(await probeNixSandbox(nixEnv));
  const compatibility = new LatestCompatibility(source, nix, log);
  if (checkOnly) {
    let requirement: string;
    try {
      const problem = await compatibility.check();
      if (problem) {
        console.error(
          `builder-service: Nix ${nixVersion} cannot evaluate the package set \`latest\` serves: ${problem}`,
        );
        process.exit(1);
      }
      requirement = "new enough for the package set `latest` serves";
    } catch (error) {
      // The source may be out of reach for a while (a channel service down); that is not a setting to fix.
      requirement = `not checked against the package set: ${(error as Error).message}`;
    }
    console.log(
      `builder-service: configuration OK\n  store:  ${store.description}\n  source: ${source.description}\n  nix:    ${nixVersion}, ${requirement}; ${sandbox.text}` +
        (popularity ? `\n  popularity: ${config.popularity!.source}, ${popularity.entries} store path names` : ""),
    );
    if (!sandbox.ok) console.error(`builder-service: warning: Nix's ${sandbox.text}`);
    process.exit(0);
  }
  // The first check of `latest` before serving, so /ready is right from the start; a slow one goes on meanwhile.
  const firstCheck = compatibility.check().catch((error: unknown) => {
    log.warn("nix-requirement-unknown", { tag: "latest", error: (error as Error).message });
    return null;
  });
  await Promise.race([firstCheck, new Promise((resolve) => setTimeout(resolve, STARTUP_CHECK_MS).unref())]);
  if (!sandbox.ok) log.warn("nix-sandbox-off", { problem: sandbox.text });
  const admission = new BuildAdmission(config.admission, config.nix.maxJobs === 0);
  const storeLimit = new NixStoreLimit({
    maxBytes: config.nixStoreMaxBytes,
    env: nixEnv,
    log,
    timeoutSeconds: config.nix.timeoutSeconds,
  });
  const builder = new ImageBuilder({
    store,
    source,
    nix,
    log,
    admission,
    layerBudget: config.layerBudget,
    compressionThreads: config.compressionThreads,
    earlyLayers: config.earlyLayers,
    popularity,
    storeHold: storeLimit,
  });
  const jobs = new BuildJobs({
    store,
    sweeps: store,
    afterBuild: () => storeLimit.check(),
    builder,
    log,
    journalDir: `${config.dataDir}/jobs`,
    heartbeatSeconds: JOB_HEARTBEAT_SECONDS,
    sourceDescription: source.description,
    admission,
  });
  const resumed = await jobs.resumeUnfinished();
  if (resumed > 0) log.info("jobs-resumed", { count: resumed });
  const readiness = cachedReadiness(async () => {
    if (compatibility.problem) return compatibility.problem;
    try {
      await access(config.dataDir, constants.W_OK);
    } catch {
      return `the data folder ${config.dataDir} is not writable`;
    }
    return store.probe();
  }, log);
  const handler = createBuilderHandler({
    secret: config.secret,
    store,
    source: compatibility.watch(withResolutionLog(source, log)),
    builder,
    jobs,
    packages: new PackageIndex(nix, source),
    log,
    readiness,
  });
  const server = serveFetch(handler, (error) => log.error("response-failed", { error: String(error) }));
  // Every answer is quick now (builds are jobs); this only bounds a client that sends its request slowly.
  server.requestTimeout = 60_000;
  server.headersTimeout = 60_000;
  server.on("error", (error: NodeJS.ErrnoException) => {
    const reason =
      error.code === "EADDRINUSE"
        ? `port ${config.port} on ${config.host} is already in use; set BUILDER_PORT to a free port`
        : error.message;
    console.error(`builder-service: cannot listen: ${reason}`);
    process.exit(1);
  });
  server.listen(config.port, config.host, () => {
    const address = server.address();
    const port = typeof address === "object" && address ? address.port : config.port;
    log.info("listening", {
      url: `http://${config.host}:${port}`,
      store: store.description,
      source: source.description,
      nix: nixVersion,
    });
  });
  const stop = () => server.close(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  if (options["exit-with-stdin"]) {
    // The parent is gone (its end of the pipe closed with it): nobody is left to send requests or to stop us.
    process.stdin.on("end", () => {
      log.info("stopping", { reason: "standard input closed: the process that started the builder has gone" });
      server.closeAllConnections();
      stop();
    });
    process.stdin.resume();
  }
}

main().catch((error) => {
  console.error(`builder-service: ${(error as Error).message}`);
  process.exit(1);
});
