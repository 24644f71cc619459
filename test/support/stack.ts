// Starts a real stack for one test file: the builder (real Nix, offline package set; or several) writing through
// the local S3 endpoint into the worker's own local R2, and the worker in workerd; plus the real clients the tests
// pull with.
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import type { BuilderStatus } from "../../common/builder-api.ts";
import { builderStatus } from "../../scripts/builder-calls.ts";
import { PROJECT_ROOT, startStack, type Stack, type StackOptions } from "../../scripts/local-stack.ts";
import { withWorkerR2 } from "./local-r2.ts";

const execFileAsync = promisify(execFile);

export const TEST_PKGS = join(PROJECT_ROOT, "package-sets/test-pkgs");

export interface TestStackOptions {
  builderEnv?: Record<string, string>;
  builderCommandPrefix?: string[];
  pkgsPath?: string;
  tls?: boolean;
  /** How many builders (default 1); see StackOptions. */
  builders?: number;
  /** Something between the worker and each builder; see StackOptions. */
  builderFront?: (builderUrl: string) => Promise<string>;
  /** Extra variables for the worker (BUILDER_STALE_SECONDS, TAG_CACHE_SECONDS, ...). */
  workerVars?: Record<string, string>;
  /** The COLD_BUILDS limit per client per minute instead of wrangler.toml's. */
  coldBuildsPerMinute?: number;
  /** R2 reads counted, and more locations; see StackOptions. */
  instrument?: StackOptions["instrument"];
}

/** The builder's counters, from its signed GET /status. */
export type BuilderCounters = BuilderStatus;

/** One structured log line of a builder. */
export type LogEntry = Record<string, unknown> & { event?: string };

export interface TestStack extends Stack {
  scratch: string;
  workerStateDir: string;
  /** Every line workerd has written: the worker's and its coordinators' log. */
  workerLogLines: string[];
  /** The first builder's counters, from its signed GET /status. */
  builderCounters(): Promise<BuilderCounters>;
  /**
   * The log entries of this event from every builder of the stack, in the order they arrived (a restarted
   * builder's earlier runs included).
   */
  logEvents(event: string): LogEntry[];
  /** How many build jobs the builders started (`job-started`): one per image build the worker asked for. */
  jobsStarted(): number;
  /** How many images the builders built with Nix (`build`). */
  builds(): number;
  /**
   * How many requests to paths starting with `path` the builders logged (/resolve, ...). Answers 200 to POST /jobs
   * (submissions and polls) are not logged: count jobs with jobsStarted().
   */
  builderRequests(path: string): number;
  /** Keys in the worker's local R2 bucket (read after the worker has stopped, or live: R2 is on disk). */
  r2Keys(prefix?: string): Promise<string[]>;
}

export async function startTestStack(options: TestStackOptions = {}): Promise<TestStack> {
  const scratch = await mkdtemp(join(tmpdir(), "registry-test-"));
  const workerStateDir = join(scratch, "worker-state");
  // Every builder's log, kept here so that it outlives a builder that is restarted.
  const entries: LogEntry[] = [];
  const workerLogLines: string[] = [];
  const onBuilderLog = (line: string) => {
    try {
      const entry = JSON.parse(line) as unknown;
      if (typeof entry === "object" && entry !== null) entries.push(entry as LogEntry);
    } catch {
      // Not a log line of ours (a startup error): the stack's error message carries it.
    }
  };
  let stack: Stack;
  try {
    stack = await startStack({
      pkgsPath: options.pkgsPath ?? TEST_PKGS,
      port: 0,
      builderPort: 0,
      builderDataDir: join(scratch, "builder"),
      workerStateDir,
      builderEnv: options.builderEnv,
      builderCommandPrefix: options.builderCommandPrefix,
      tls: options.tls,
      builders: options.builders,
      builderFront: options.builderFront,
      workerVars: options.workerVars,
      instrument: options.instrument,
      // Every test request comes from 127.0.0.1 (Miniflare's CF-Connecting-IP), and a test file may build more images
      // a minute than wrangler.toml lets one client start: only test/client-quota.test.ts tests the quota.
      coldBuildsPerMinute: options.coldBuildsPerMinute ?? 100_000,
      onBuilderLog,
      onWorkerLog: (line) => workerLogLines.push(line),
    });
  } catch (error) {
    await rm(scratch, { recursive: true, force: true });
    throw error;
  }
  const logEvents = (event: string) => entries.filter((entry) => entry.event === event);
  return {
    ...stack,
    // The first builder as it is now, also after restartBuilder(0).
    get builder() {
      return stack.builders[0];
    },
    scratch,
    workerStateDir,
    workerLogLines,
    async builderCounters() {
      return builderStatus(stack.builder.url, stack.secret);
    },
    logEvents,
    jobsStarted: () => logEvents("job-started").length,
    builds: () => logEvents("build").length,
    builderRequests(path: string) {
      return logEvents("request").filter((entry) => typeof entry.path === "string" && entry.path.startsWith(path))
        .length;
    },
    r2Keys(prefix = "") {
      return withWorkerR2(workerStateDir, async (bucket) => {
        const keys: string[] = [];
        let cursor: string | undefined;
        do {
          const page = await bucket.list({ prefix, cursor });
          keys.push(...page.objects.map((o) => o.key));
          cursor = page.truncated ? page.cursor : undefined;
        } while (cursor);
        return keys.sort();
      });
    },
    async stop() {
      await stack.stop();
      await rm(scratch, { recursive: true, force: true });
    },
  };
}

export interface CommandOutput {
  stdout: string;
  stderr: string;
}

export async function run(command: string, args: string[], timeoutMs = 120_000): Promise<CommandOutput> {
  try {
    const { stdout, stderr } = await execFileAsync(command, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
    return { stdout, stderr };
  } catch (error) {
    const e = error as { stdout?: string; stderr?: string; message: string };
    throw new Error(`${command} ${args.join(" ")} failed: ${e.message}\n${e.stderr ?? ""}${e.stdout ?? ""}`, {
      cause: error,
    });
  }
}

/** Runs a command and returns its output whether it fails or not (for error-path assertions). */
export async function runAllowingFailure(
  command: string,
  args: string[],
  timeoutMs = 120_000,
): Promise<CommandOutput & { code: number }> {
  try {
    const { stdout, stderr } = await execFileAsync(command, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
    return { stdout, stderr, code: 0 };
  } catch (error) {
    const e = error as { stdout?: string; stderr?: string; code?: number };
    return { stdout: e.stdout ?? "", stderr: e.stderr ?? "", code: typeof e.code === "number" ? e.code : 1 };
  }
}

/** Pulls an image with skopeo into an OCI layout and unpacks it with umoci; returns the rootfs folder. */
export async function pullAndUnpack(registryHost: string, image: string, into: string): Promise<string> {
  const layout = join(into, "oci");
  const bundle = join(into, "bundle");
  await run("skopeo", ["copy", "--src-tls-verify=false", `docker://${registryHost}/${image}`, `oci:${layout}:img`]);
  await run("umoci", ["unpack", "--image", `${layout}:img`, bundle]);
  return join(bundle, "rootfs");
}

/**
 * Runs a command inside an unpacked root filesystem as a container runtime would: with /dev and /proc
 * mounted and only the image's PATH (bubblewrap; git, for one, needs /dev/null).
 */
export async function runInRootfs(rootfs: string, command: string[]): Promise<CommandOutput> {
  return run("bwrap", [
    "--bind",
    rootfs,
    "/",
    "--dev",
    "/dev",
    "--proc",
    "/proc",
    "--clearenv",
    "--setenv",
    "PATH",
    "/bin:/usr/bin:/sbin:/usr/sbin",
    "--chdir",
    "/",
    "--",
    ...command,
  ]);
}

/**
 * podman's options for storage of its own under `dir` (vfs: no overlay mounts to leave behind). podman refuses a
 * runroot longer than 50 characters: keep `dir` short.
 */
export function podmanStorage(dir: string): string[] {
  return [
    "--root",
    join(dir, "root"),
    "--runroot",
    join(dir, "runroot"),
    "--tmpdir",
    join(dir, "tmp"),
    "--storage-driver",
    "vfs",
  ];
}

/** `podman run` of an image with runc, storage under `dir`, no network; `command` empty runs the image's Cmd. */
export async function podmanRun(dir: string, image: string, command: string[] = []): Promise<CommandOutput> {
  return run("podman", [
    ...podmanStorage(dir),
    "--runtime",
    "runc",
    "run",
    "--rm",
    "--tls-verify=false",
    // Without a network podman leaves no state behind outside its own folders.
    "--network=none",
    // See ENVIRONMENT.md: root here lacks CAP_SYS_RESOURCE, so the default ulimits can't be set.
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
    image,
    ...command,
  ]);
}
