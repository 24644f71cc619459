// Starts the whole registry on one machine: the worker in workerd (Cloudflare's runtime, through Miniflare as
// wrangler dev runs it) with a local R2 kept on disk and its build coordinators (Durable Objects, kept beside it), a
// local S3 endpoint onto that same R2 (scripts/local-s3-endpoint/), and the builder (or several) as child processes
// writing into the bucket through it, as builders write into R2 in production. Used by `npm start` and the tests.
//
// Longer than most files here: the whole local topology (worker, endpoint, builders, front) in one place.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { copyFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { Miniflare, type MiniflareOptions } from "miniflare";
import { unstable_getMiniflareWorkerOptions } from "wrangler";
import { createServer, type AddressInfo } from "node:net";
import type { Readable } from "node:stream";
import {
  builderS3Environment,
  localS3EndpointWorker,
  randomS3Credentials,
  s3EndpointUrl,
} from "./local-s3-endpoint/options.ts";
import { startPlainHttpFront } from "./plain-http-front.ts";
import { forwardWorkerdOutput, startWorkerdDyingWithParent } from "./workerd-process.ts";

export const PROJECT_ROOT = fileURLToPath(new URL("../", import.meta.url));
const execFileAsync = promisify(execFile);

export interface StackOptions {
  /** A local package set (NIXERY_PKGS_PATH); without it the builder follows a nixpkgs channel. */
  pkgsPath?: string;
  /** Worker port; 0 picks a free one. */
  port: number;
  /** Builder port; 0 picks a free one. With several builders, the first one's (the others pick free ports). */
  builderPort: number;
  /** The builder's spool and job journal; with several builders, each gets a folder 1/, 2/, ... in it. */
  builderDataDir: string;
  /** How many builders to run (default 1); the worker spreads jobs over them by image key. */
  builders?: number;
  /**
   * Puts something between the worker and each builder (e.g. a stand-in for Cloudflare's proxy): given a builder's
   * URL, returns the URL the worker is to use instead.
   */
  builderFront?: (builderUrl: string) => Promise<string>;
  /** Extra variables for the worker (BUILDER_STALE_SECONDS, TAG_CACHE_SECONDS, ...). */
  workerVars?: Record<string, string>;
  /**
   * A second instance of the worker (its own isolate and memory, as in another edge location) sharing the bucket and
   * the build coordinators, served plain http at Stack.secondRegistryUrl.
   */
  secondWorker?: boolean;
  /**
   * For tests and the benchmark: run the worker wrapped by scripts/instrumented-worker.js, which counts its R2 reads
   * (GET /.instrument/r2-reads) and can delay them, and add worker instances that model other Cloudflare locations:
   * each with its own isolate and its own cache, R2 reads delayed by r2DelayMs, sharing the bucket and the build
   * coordinators, served plain http at Stack.locationUrls[name].
   */
  instrument?: { locations?: { name: string; r2DelayMs: number; vars?: Record<string, string> }[] };
  /** Replaces wrangler.toml's COLD_BUILDS limit (cold builds per client per minute), e.g. a small one for tests. */
  coldBuildsPerMinute?: number;
  /** The worker's local R2, its coordinators' storage (and other local state). */
  workerStateDir: string;
  secret?: string;
  /** Extra environment for the builder (NIX_CONFIG, NIXERY_LAYER_BUDGET, ...). */
  builderEnv?: Record<string, string>;
  /**
   * argv the builder is started under, e.g. one giving it another Nix (test/support/modern-nix.ts). It must exec
   * the builder in the end, so that stdin (--exit-with-stdin) and signals still reach it.
   */
  builderCommandPrefix?: string[];
  /** Where the builder's log lines go besides the stack's own record of them. */
  onBuilderLog?: (line: string) => void;
  /** Gets every line workerd writes (the worker's and its coordinators' console output), besides this process's output. */
  onWorkerLog?: (line: string) => void;
  /**
   * Serve https straight from workerd (Miniflare's self-signed certificate for localhost and 127.0.0.1), as the
   * edge serves it, instead of plain http through the TCP front. Container clients then talk to workerd directly.
   */
  tls?: boolean;
}

export interface Builder {
  url: string;
  process: ChildProcess;
  /** Every line the builder has logged so far. */
  logLines: string[];
  stop(): Promise<void>;
}

export interface Stack {
  /** e.g. http://127.0.0.1:8787, or https://127.0.0.1:8787 with tls */
  registryUrl: string;
  /** e.g. 127.0.0.1:8787, as image references need it. */
  registryHost: string;
  /** The first builder. */
  builder: Builder;
  builders: Builder[];
  secret: string;
  /** The builders' S3 settings for the local bucket (S3_ENDPOINT and the rest), to start another builder on it. */
  s3Env: Record<string, string>;
  /** With secondWorker: the second worker instance's URL (http://127.0.0.1:PORT). */
  secondRegistryUrl?: string;
  /** With instrument.locations: each location's worker URL (http://127.0.0.1:PORT). */
  locationUrls: Record<string, string>;
  /** Starts builder i again (after it was stopped) with the same port, folder and settings. */
  restartBuilder(index: number): Promise<Builder>;
  stop(): Promise<void>;
}

/** The R2 bucket's name, as wrangler.toml's bucket_name says. */
const BUCKET_NAME = "nix-edge-registry";

/** A free TCP port on 127.0.0.1, to hand to a process that starts later. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => server.listen(0, "127.0.0.1", resolve).once("error", reject));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/**
 * Root with a single-user Nix (Debian's nix-bin without nix-setup-systemd, as on a fresh machine) has no `nixbld`
 * group, and Nix as root builds as that group's users by default: every build would fail. The local stack then
 * builds as root, as a single-user install does.
 */
const SINGLE_USER_ROOT =
  process.getuid?.() === 0 &&
  !process.env.NIX_REMOTE &&
  !/^nixbld:/m.test(existsSync("/etc/group") ? readFileSync("/etc/group", "utf8") : "");
const LOCAL_NIX_CONFIG = SINGLE_USER_ROOT ? "build-users-group =" : "";

/** Nix without substituters: offline, every build would otherwise wait on DNS for the binary cache. */
export const OFFLINE_NIX_CONFIG = ["substituters =", "experimental-features = nix-command", LOCAL_NIX_CONFIG]
  .filter(Boolean)
  .join("\n");

export interface BuilderOptions {
  pkgsPath?: string;
  builderPort: number;
  builderDataDir: string;
  secret: string;
  /** The S3 settings of the bucket it writes into (S3_ENDPOINT, S3_BUCKET, keys). */
  s3Env: Record<string, string>;
  builderEnv?: Record<string, string>;
  builderCommandPrefix?: string[];
  onBuilderLog?: (line: string) => void;
}

export async function startBuilder(options: BuilderOptions): Promise<Builder> {
  const tsx = fileURLToPath(new URL("../node_modules/.bin/tsx", import.meta.url));
  // --exit-with-stdin: the builder stops when this process's end of its stdin closes, which happens however this
  // process ends, SIGKILL included.
  const [command, ...args] = [
    ...(options.builderCommandPrefix ?? []),
    tsx,
    "builder-service/main.ts",
    "--exit-with-stdin",
  ];
  const child = spawn(command, args, {
    cwd: PROJECT_ROOT,
    env: {
      ...process.env,
      BUILDER_SECRET: options.secret,
      BUILDER_HOST: "127.0.0.1",
      BUILDER_PORT: String(options.builderPort),
      BUILDER_DATA_DIR: options.builderDataDir,
      ...options.s3Env,
      ...(options.pkgsPath ? { NIXERY_PKGS_PATH: options.pkgsPath } : {}),
      NIX_CONFIG:
        options.pkgsPath && !process.env.NIX_CONFIG
          ? OFFLINE_NIX_CONFIG
          : [process.env.NIX_CONFIG, LOCAL_NIX_CONFIG].filter(Boolean).join("\n"),
      ...options.builderEnv,
    },
    stdio: ["pipe", "pipe", "pipe"],
  });
  // However this process ends (Ctrl-C, an error, a test runner's exit), the builder must not outlive it.
  const killOnExit = () => child.kill("SIGTERM");
  process.once("exit", killOnExit);
  child.once("exit", () => process.off("exit", killOnExit));
  const logLines: string[] = [];
  const url = await new Promise<string>((resolve, reject) => {
    let buffered = "";
    const onLine = (line: string) => {
      logLines.push(line);
      options.onBuilderLog?.(line);
      try {
        const entry = JSON.parse(line) as { event?: string; url?: string };
        if (entry.event === "listening" && entry.url) resolve(entry.url);
      } catch {
        // Not a log line of ours (e.g. a startup error): kept in logLines for the failure message.
      }
    };
    const onData = (chunk: Buffer) => {
      buffered += chunk.toString("utf8");
      const lines = buffered.split("\n");
      buffered = lines.pop() ?? "";
      lines.forEach(onLine);
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => reject(new Error(`the builder exited with code ${code}:\n${logLines.join("\n")}`)));
  });
  return {
    url,
    process: child,
    logLines,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
      }),
  };
}

/** Where Miniflare keeps local state, in the layout wrangler dev and getPlatformProxy use. */
const persistence = (stateDir: string) => ({
  r2Persist: join(stateDir, "v3", "r2"),
  durableObjectsPersist: join(stateDir, "v3", "do"),
});

/**
 * The worker, bundled as `wrangler deploy` bundles it, in workerd through Miniflare (what `wrangler dev` runs it
 * with), minus wrangler dev's proxy in front (one hop less on every blob, and no file watcher that would reload the
 * worker mid-test), next to the local S3 endpoint onto its bucket.
 */
async function startWorker(options: {
  stateDir: string;
  builderUrls: string[];
  secret: string;
  vars: Record<string, string>;
  /** Where workerd listens: a free port for the front to forward to, or the registry's own port with tls. */
  port: number;
  tls: boolean;
  secondWorker: boolean;
  coldBuildsPerMinute?: number;
  onLog?: (line: string) => void;
  instrument?: StackOptions["instrument"];
}): Promise<{
  url: URL;
  secondUrl?: string;
  locationUrls: Record<string, string>;
  s3Env: Record<string, string>;
  dispose(): Promise<void>;
}> {
  const bundleDir = await mkdtemp(join(tmpdir(), "worker-bundle-"));
  try {
    await execFileAsync(
      fileURLToPath(new URL("../node_modules/.bin/wrangler", import.meta.url)),
      ["deploy", "--dry-run", "--outdir", bundleDir, "--config", join(PROJECT_ROOT, "wrangler.toml")],
      { cwd: PROJECT_ROOT, env: process.env },
    );
    const { workerOptions } = unstable_getMiniflareWorkerOptions(join(PROJECT_ROOT, "wrangler.toml"));
    await startWorkerdDyingWithParent(join(PROJECT_ROOT, "node_modules/.cache/nix-edge-registry"));
    const credentials = randomS3Credentials();
    const s3 = await localS3EndpointWorker({ port: 0, bucket: BUCKET_NAME, credentials });
    let entry = "index.js";
    if (options.instrument) {
      entry = "instrumented-entry.js";
      await copyFile(join(PROJECT_ROOT, "scripts/instrumented-worker.js"), join(bundleDir, entry));
    }
    const registry = {
      ...(workerOptions as Record<string, unknown>),
      name: "registry",
      modules: true,
      modulesRoot: bundleDir,
      scriptPath: join(bundleDir, entry),
      // The bundle's modules are ES modules whatever their extension (the instrumented entry imports index.js).
      modulesRules: [{ type: "ESModule", include: ["**/*.js"] }],
      bindings: {
        ...(workerOptions.bindings as Record<string, unknown> | undefined),
        BUILDER_URL: options.builderUrls.join(","),
        BUILDER_SECRET: options.secret,
        ...options.vars,
      },
      ...(options.coldBuildsPerMinute === undefined
        ? {}
        : { ratelimits: { COLD_BUILDS: { simple: { limit: options.coldBuildsPerMinute, period: 60 } } } }),
    };
    const second = options.secondWorker
      ? [
          {
            ...registry,
            name: "registry-2",
            // The coordinators of the first instance: one per image key across both, as across the edge.
            durableObjects: { BUILD_COORDINATOR: { className: "BuildCoordinator", scriptName: "registry" } },
            unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }],
          },
        ]
      : [];
    const locations = (options.instrument?.locations ?? []).map(({ name, r2DelayMs, vars }) => ({
      ...registry,
      name: `location-${name}`,
      bindings: { ...registry.bindings, ...vars, LOCATION: name, R2_DELAY_MS: String(r2DelayMs) },
      durableObjects: { BUILD_COORDINATOR: { className: "BuildCoordinator", scriptName: "registry" } },
      unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }],
    }));
    const miniflare = new Miniflare({
      workers: [registry, ...second, ...locations, s3.options],
      ...persistence(options.stateDir),
      host: "127.0.0.1",
      port: options.port,
      https: options.tls,
      handleRuntimeStdio: (stdout: Readable, stderr: Readable) => forwardWorkerdOutput(stdout, stderr, options.onLog),
    } as MiniflareOptions);
    const url = await miniflare.ready.catch(async (error: unknown) => {
      await miniflare.dispose().catch(() => undefined);
      throw portTaken(error, options.port) ?? error;
    });
    const endpoint = await s3EndpointUrl(miniflare);
    const secondUrl = options.secondWorker ? (await miniflare.unsafeGetDirectURL("registry-2")).origin : undefined;
    const locationUrls: Record<string, string> = {};
    for (const { name } of options.instrument?.locations ?? []) {
      locationUrls[name] = (await miniflare.unsafeGetDirectURL(`location-${name}`)).origin;
    }
    return {
      url,
      secondUrl,
      locationUrls,
      s3Env: builderS3Environment({ endpoint, bucket: BUCKET_NAME, credentials }),
      dispose: async () => {
        await miniflare.dispose();
        await s3.dispose();
        await rm(bundleDir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    await rm(bundleDir, { recursive: true, force: true });
    throw error;
  }
}

/**
 * Only the local bucket and its S3 endpoint, for running builders without a worker (the builder's own tests, the
 * benchmark's build figures). stateDir is a worker state folder: a stack started on it later serves what was built.
 */
export async function startLocalBucket(
  stateDir: string,
): Promise<{ s3Env: Record<string, string>; dispose(): Promise<void> }> {
  await startWorkerdDyingWithParent(join(PROJECT_ROOT, "node_modules/.cache/nix-edge-registry"));
  const credentials = randomS3Credentials();
  const s3 = await localS3EndpointWorker({ port: 0, bucket: BUCKET_NAME, credentials });
  const miniflare = new Miniflare({
    workers: [s3.options],
    ...persistence(stateDir),
    handleRuntimeStdio: forwardWorkerdOutput,
  } as MiniflareOptions);
  await miniflare.ready;
  const endpoint = await s3EndpointUrl(miniflare);
  return {
    s3Env: builderS3Environment({ endpoint, bucket: BUCKET_NAME, credentials }),
    dispose: async () => {
      await miniflare.dispose();
      await s3.dispose();
    },
  };
}

/** A clearer error for a port someone else holds, or undefined when that isn't what went wrong. */
function portTaken(error: unknown, port: number): Error | undefined {
  const text = String((error as Error)?.message ?? error);
  return /EADDRINUSE|Address already in use/i.test(text)
    ? new Error(`port ${port} is already in use; set PORT to a free port`)
    : undefined;
}

export async function startStack(options: StackOptions): Promise<Stack> {
  // Wrangler must not try to reach Cloudflare: there may be no network at all.
  process.env.WRANGLER_SEND_METRICS ??= "false";
  process.env.WRANGLER_SEND_ERROR_REPORTS ??= "false";
  process.env.CLOUDFLARE_CF_FETCH_ENABLED ??= "false";
  const secret = options.secret ?? randomBytes(32).toString("hex");
  const count = options.builders ?? 1;
  // The worker is told where the builders will listen before they start: they need its bucket to start.
  const ports: number[] = [];
  for (let i = 0; i < count; i++)
    ports.push(i === 0 && options.builderPort !== 0 ? options.builderPort : await freePort());
  const builderUrls = ports.map((port) => `http://127.0.0.1:${port}`);
  const workerUrls = options.builderFront ? await Promise.all(builderUrls.map(options.builderFront)) : builderUrls;
  const tls = options.tls ?? false;
  const worker = await startWorker({
    stateDir: options.workerStateDir,
    builderUrls: workerUrls,
    secret,
    vars: options.workerVars ?? {},
    port: tls ? options.port : 0,
    tls,
    secondWorker: options.secondWorker ?? false,
    coldBuildsPerMinute: options.coldBuildsPerMinute,
    onLog: options.onWorkerLog,
    instrument: options.instrument,
  });
  const builderOptions = (index: number): BuilderOptions => ({
    ...options,
    secret,
    s3Env: worker.s3Env,
    builderPort: ports[index],
    builderDataDir: count === 1 ? options.builderDataDir : join(options.builderDataDir, String(index + 1)),
  });
  const builders: Builder[] = [];
  const stopAll = async () => {
    await Promise.all(builders.map((builder) => builder.stop()));
  };
  try {
    for (let i = 0; i < count; i++) builders.push(await startBuilder(builderOptions(i)));
    const common = {
      builders,
      secret,
      s3Env: worker.s3Env,
      secondRegistryUrl: worker.secondUrl,
      locationUrls: worker.locationUrls,
      async restartBuilder(index: number) {
        await builders[index].stop();
        builders[index] = await startBuilder(builderOptions(index));
        return builders[index];
      },
    };
    if (tls) {
      return {
        ...common,
        // A getter, not a spread value: restartBuilder(0) replaces the first builder.
        get builder() {
          return builders[0];
        },
        registryUrl: `https://127.0.0.1:${worker.url.port}`,
        registryHost: `127.0.0.1:${worker.url.port}`,
        stop: async () => {
          await worker.dispose();
          await stopAll();
        },
      };
    }
    const front = await startPlainHttpFront(
      { host: worker.url.hostname, port: Number(worker.url.port) },
      { host: "127.0.0.1", port: options.port },
    ).catch((error: unknown) => {
      throw portTaken(error, options.port) ?? error;
    });
    return {
      ...common,
      get builder() {
        return builders[0];
      },
      registryUrl: `http://127.0.0.1:${front.port}`,
      registryHost: `127.0.0.1:${front.port}`,
      stop: async () => {
        await front.close();
        await worker.dispose();
        await stopAll();
      },
    };
  } catch (error) {
    await stopAll();
    await worker.dispose();
    throw error;
  }
}
