// Starts a real stack for one test file: the builder (real Nix, offline package set) and the worker in
// workerd with its own local R2; plus the real clients the tests pull with.
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { PROJECT_ROOT, startStack, type Stack } from "../../scripts/local-stack.ts";
import { withWorkerR2 } from "./local-r2.ts";

const execFileAsync = promisify(execFile);

export const TEST_PKGS = join(PROJECT_ROOT, "nix/test-pkgs");

export interface TestStack extends Stack {
  scratch: string;
  workerStateDir: string;
  /** The builder's counters from /health. */
  builderCounters(): Promise<{ builds: number; layersWritten: number; layersReused: number }>;
  /** How many requests of this kind reached the builder, from its structured log. */
  builderRequests(path: string): number;
  /** Keys in the worker's local R2 bucket (read after the worker has stopped, or live: R2 is on disk). */
  r2Keys(prefix?: string): Promise<string[]>;
}

export async function startTestStack(
  options: { builderEnv?: Record<string, string>; builderCommandPrefix?: string[]; pkgsPath?: string; tls?: boolean } = {},
): Promise<TestStack> {
  const scratch = await mkdtemp(join(tmpdir(), "registry-test-"));
  const workerStateDir = join(scratch, "worker-state");
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
    });
  } catch (error) {
    await rm(scratch, { recursive: true, force: true });
    throw error;
  }
  return {
    ...stack,
    scratch,
    workerStateDir,
    async builderCounters() {
      const response = await fetch(`${stack.builder.url}/health`);
      return (await response.json()) as { builds: number; layersWritten: number; layersReused: number };
    },
    builderRequests(path: string) {
      return stack.builder.logLines.filter((line) => {
        try {
          const entry = JSON.parse(line) as { event?: string; path?: string };
          return entry.event === "request" && entry.path?.startsWith(path);
        } catch {
          return false;
        }
      }).length;
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
    throw new Error(`${command} ${args.join(" ")} failed: ${e.message}\n${e.stderr ?? ""}${e.stdout ?? ""}`);
  }
}

/** Runs a command and returns its output whether it fails or not (for error-path assertions). */
export async function runAllowingFailure(command: string, args: string[], timeoutMs = 120_000): Promise<CommandOutput & { code: number }> {
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
    "--bind", rootfs, "/",
    "--dev", "/dev",
    "--proc", "/proc",
    "--clearenv",
    "--setenv", "PATH", "/bin:/usr/bin:/sbin:/usr/sbin",
    "--chdir", "/",
    "--",
    ...command,
  ]);
}

/**
 * podman's options for storage of its own under `dir` (vfs: no overlay mounts to leave behind). podman refuses a
 * runroot longer than 50 characters: keep `dir` short.
 */
export function podmanStorage(dir: string): string[] {
  return ["--root", join(dir, "root"), "--runroot", join(dir, "runroot"), "--tmpdir", join(dir, "tmp"), "--storage-driver", "vfs"];
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
