// Starts the whole registry on one machine: the builder as a child process and the worker in workerd
// (Cloudflare's runtime, through Miniflare as wrangler dev runs it, with a local R2 kept on disk).
// Used by `npm start` and by the tests.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { Miniflare, type MiniflareOptions } from "miniflare";
import { unstable_getMiniflareWorkerOptions } from "wrangler";
import { startPlainHttpFront } from "./plain-http-front.ts";
import { forwardWorkerdOutput, startWorkerdDyingWithParent } from "./workerd-process.ts";

export const PROJECT_ROOT = fileURLToPath(new URL("../", import.meta.url));
const execFileAsync = promisify(execFile);

export interface StackOptions {
  /** A local package set (NIXERY_PKGS_PATH); without it the builder follows a nixpkgs channel. */
  pkgsPath?: string;
  /** Worker port; 0 picks a free one. */
  port: number;
  /** Builder port; 0 picks a free one. */
  builderPort: number;
  /** The builder's blobs and caches. */
  builderDataDir: string;
  /** The worker's local R2 (and other local state). */
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
  builder: Builder;
  secret: string;
  stop(): Promise<void>;
}

/**
 * Root with a single-user Nix (Debian's nix-bin without nix-setup-systemd, as on a fresh machine) has no `nixbld`
 * group, and Nix as root builds as that group's users by default: every build would fail. The local stack then
 * builds as root, as a single-user install does.
 */
const SINGLE_USER_ROOT =
  process.getuid?.() === 0 && !process.env.NIX_REMOTE && !/^nixbld:/m.test(existsSync("/etc/group") ? readFileSync("/etc/group", "utf8") : "");
export const LOCAL_NIX_CONFIG = SINGLE_USER_ROOT ? "build-users-group =" : "";

/** Nix without substituters: offline, every build would otherwise wait on DNS for the binary cache. */
export const OFFLINE_NIX_CONFIG = ["substituters =", "experimental-features = nix-command", LOCAL_NIX_CONFIG].filter(Boolean).join("\n");

export async function startBuilder(options: Omit<StackOptions, "port" | "workerStateDir"> & { secret: string }): Promise<Builder> {
  const tsx = fileURLToPath(new URL("../node_modules/.bin/tsx", import.meta.url));
  // --exit-with-stdin: the builder stops when this process's end of its stdin closes, which happens however this
  // process ends, SIGKILL included.
  const [command, ...args] = [...(options.builderCommandPrefix ?? []), tsx, "builder-service/main.ts", "--exit-with-stdin"];
  const child = spawn(command, args, {
    cwd: PROJECT_ROOT,
    env: {
      ...process.env,
      BUILDER_SECRET: options.secret,
      BUILDER_HOST: "127.0.0.1",
      BUILDER_PORT: String(options.builderPort),
      BUILDER_DATA_DIR: options.builderDataDir,
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
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.on("exit", (code) => reject(new Error(`the builder exited with code ${code}:\n${logLines.join("\n")}`)));
  });
  return {
    url,
    process: child,
    logLines,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
      }),
  };
}

/**
 * The worker, bundled as `wrangler deploy` bundles it, in workerd through Miniflare (what `wrangler dev` runs
 * it with), minus wrangler dev's proxy in front: one hop less on every blob, and no file watcher that would
 * reload the worker mid-test when a source file changes.
 */
async function startWorker(options: {
  stateDir: string;
  builderUrl: string;
  secret: string;
  /** Where workerd listens: a free port for the front to forward to, or the registry's own port with tls. */
  port: number;
  tls: boolean;
}): Promise<{ url: URL; dispose(): Promise<void> }> {
  const bundleDir = await mkdtemp(join(tmpdir(), "worker-bundle-"));
  try {
    await execFileAsync(
      fileURLToPath(new URL("../node_modules/.bin/wrangler", import.meta.url)),
      ["deploy", "--dry-run", "--outdir", bundleDir, "--config", join(PROJECT_ROOT, "wrangler.toml")],
      { cwd: PROJECT_ROOT, env: process.env },
    );
    const { workerOptions } = unstable_getMiniflareWorkerOptions(join(PROJECT_ROOT, "wrangler.toml"));
    await startWorkerdDyingWithParent(join(PROJECT_ROOT, "node_modules/.cache/nix-edge-registry"));
    const miniflare = new Miniflare({
      ...(workerOptions as Record<string, unknown>),
      modules: true,
      modulesRoot: bundleDir,
      scriptPath: join(bundleDir, "index.js"),
      bindings: {
        ...(workerOptions.bindings as Record<string, unknown> | undefined),
        BUILDER_URL: options.builderUrl,
        BUILDER_SECRET: options.secret,
      },
      // The same layout wrangler dev and getPlatformProxy use: <state>/v3/r2.
      r2Persist: join(options.stateDir, "v3", "r2"),
      host: "127.0.0.1",
      port: options.port,
      https: options.tls,
      handleRuntimeStdio: forwardWorkerdOutput,
    } as MiniflareOptions);
    const url = await miniflare.ready.catch(async (error: unknown) => {
      await miniflare.dispose().catch(() => undefined);
      throw portTaken(error, options.port) ?? error;
    });
    return {
      url,
      dispose: async () => {
        await miniflare.dispose();
        await rm(bundleDir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    await rm(bundleDir, { recursive: true, force: true });
    throw error;
  }
}

/** A clearer error for a port someone else holds, or undefined when that isn't what went wrong. */
function portTaken(error: unknown, port: number): Error | undefined {
  const text = String((error as Error)?.message ?? error);
  return /EADDRINUSE|Address already in use/i.test(text) ? new Error(`port ${port} is already in use; set PORT to a free port`) : undefined;
}

export async function startStack(options: StackOptions): Promise<Stack> {
  // Wrangler must not try to reach Cloudflare: there may be no network at all.
  process.env.WRANGLER_SEND_METRICS ??= "false";
  process.env.WRANGLER_SEND_ERROR_REPORTS ??= "false";
  process.env.CLOUDFLARE_CF_FETCH_ENABLED ??= "false";
  const secret = options.secret ?? randomBytes(32).toString("hex");
  const builder = await startBuilder({ ...options, secret });
  try {
    const tls = options.tls ?? false;
    const worker = await startWorker({ stateDir: options.workerStateDir, builderUrl: builder.url, secret, port: tls ? options.port : 0, tls });
    if (tls) {
      return {
        registryUrl: `https://127.0.0.1:${worker.url.port}`,
        registryHost: `127.0.0.1:${worker.url.port}`,
        builder,
        secret,
        stop: async () => {
          await worker.dispose();
          await builder.stop();
        },
      };
    }
    const front = await startPlainHttpFront(
      { host: worker.url.hostname, port: Number(worker.url.port) },
      { host: "127.0.0.1", port: options.port },
    ).catch(async (error: unknown) => {
      // A taken PORT must not leave workerd running behind it.
      await worker.dispose();
      throw portTaken(error, options.port) ?? error;
    });
    return {
      registryUrl: `http://127.0.0.1:${front.port}`,
      registryHost: `127.0.0.1:${front.port}`,
      builder,
      secret,
      stop: async () => {
        await front.close();
        await worker.dispose();
        await builder.stop();
      },
    };
  } catch (error) {
    await builder.stop();
    throw error;
  }
}
