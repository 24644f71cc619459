// How workerd runs under the local stack (Miniflare starts it):
// - its output is passed on to this process's, minus the one report that is routine for a registry: a client
//   hanging up while a blob is still being written to it ("disconnected: ::write(...): Broken pipe", with its
//   stack line; skopeo does that whenever the destination already has a layer);
// - where util-linux's setpriv is available, it is started with a parent-death signal, so it stops with this
//   process however that ends, SIGKILL included (Miniflare stops it only on an orderly exit).
import { execFile } from "node:child_process";
import { chmod, mkdir, rename, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import type { Readable } from "node:stream";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);

const CLIENT_WENT_AWAY = /disconnected: ::write\(.*\): (Broken pipe|Connection reset by peer)/;

/** Passes workerd's output on to this process's; `onLine`, when given, also gets each line (the worker's log). */
export function forwardWorkerdOutput(stdout: Readable, stderr: Readable, onLine?: (line: string) => void): void {
  // Not pipe(): each pipe into process.stdout adds listeners to it until workerd's output ends, and a benchmark that
  // starts ten local buckets one after another went past Node's warning threshold.
  stdout.on("data", (chunk: Buffer) => process.stdout.write(chunk));
  if (onLine) createInterface({ input: stdout, crlfDelay: Infinity }).on("line", onLine);
  let skipStack = false;
  createInterface({ input: stderr, crlfDelay: Infinity }).on("line", (line) => {
    onLine?.(line);
    if (CLIENT_WENT_AWAY.test(line)) {
      skipStack = true;
      return;
    }
    const isStack = line.startsWith("stack: ");
    if (skipStack && isStack) {
      skipStack = false;
      return;
    }
    skipStack = false;
    process.stderr.write(`${line}\n`);
  });
}

/**
 * The workerd binary Miniflare would start: MINIFLARE_WORKERD_PATH when set, unless it is our own launcher (a child
 * process inherits it), else the one the workerd package installed.
 */
function workerdBinary(launcher: string): string {
  const fromEnvironment = process.env.MINIFLARE_WORKERD_PATH;
  if (fromEnvironment && resolve(fromEnvironment) !== resolve(launcher)) return fromEnvironment;
  const fromMiniflare = createRequire(createRequire(import.meta.url).resolve("miniflare"));
  const exported = fromMiniflare("workerd") as string | { default: string };
  return typeof exported === "string" ? exported : exported.default;
}

let launcherInstalled: Promise<void> | undefined;

/**
 * Points Miniflare (MINIFLARE_WORKERD_PATH) at a launcher in `dir` that runs workerd with SIGTERM as its
 * parent-death signal. Once per process; nothing changes where setpriv (or its --pdeathsig) is missing.
 */
export function startWorkerdDyingWithParent(dir: string): Promise<void> {
  launcherInstalled ??= (async () => {
    try {
      const { stdout } = await execFileAsync("setpriv", ["--help"]);
      if (!stdout.includes("--pdeathsig")) return;
    } catch {
      return;
    }
    const launcher = join(dir, "workerd-dying-with-parent");
    const binary = workerdBinary(launcher);
    await mkdir(dir, { recursive: true });
    // exec all the way: workerd keeps the pid (and the control pipe) Miniflare's spawn gave the shell. Written
    // under another name and renamed, so another stack starting workerd through it never reads half a file.
    const staged = `${launcher}.${process.pid}`;
    await writeFile(staged, `#!/bin/sh\nexec setpriv --pdeathsig TERM -- '${binary.replaceAll("'", `'\\''`)}' "$@"\n`);
    await chmod(staged, 0o755);
    await rename(staged, launcher);
    process.env.MINIFLARE_WORKERD_PATH = launcher;
  })();
  return launcherInstalled;
}
