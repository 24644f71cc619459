// Child processes with a time limit: every command the builder runs outside nix-runner.ts (git, tar, nix-store).
//
// Node's own `timeout` option (execFile, spawn) is not enough here: it signals only the process it started, while
// `git fetch` runs git-remote-https or ssh below it, and a pipeline is two processes. A grandchild that survives
// keeps the stdout pipe open, so the caller waits on for as long as it lives. Each process here is started in a
// process group of its own (detached), and at the limit the whole group is killed, and the caller is answered at
// once with an error naming the command and the limit.
import { spawn, type ChildProcess } from "node:child_process";

export class CommandTimeoutError extends Error {
  constructor(
    /** The command as a person would write it: "git fetch", "git archive | tar". */
    readonly command: string,
    readonly limitMs: number,
    /** The setting the limit comes from, if any. */
    setting?: string,
  ) {
    super(
      `${command} took longer than its time limit of ${formatSeconds(limitMs)}${setting ? ` (${setting})` : ""} and was stopped`,
    );
  }
}

export class CommandNotFoundError extends Error {
  constructor(readonly command: string) {
    super(`${command} is not installed or not on PATH`);
  }
}

export interface CommandOptions {
  timeoutMs: number;
  env?: NodeJS.ProcessEnv;
  /** stdout beyond this is an error (the command is stopped): default 16 MiB. */
  maxStdoutBytes?: number;
  /** The command as errors name it, e.g. "git fetch". */
  label: string;
  /** The setting the limit comes from, for the error (e.g. NIX_TIMEOUT). */
  setting?: string;
}

export interface CommandResult {
  code: number | null;
  stdout: string;
  /** The last 16 KiB of stderr. */
  stderr: string;
}

const STDERR_TAIL_BYTES = 16 * 1024;

function formatSeconds(ms: number): string {
  return `${ms % 1000 === 0 ? ms / 1000 : (ms / 1000).toFixed(1)} s`;
}

/**
 * Kills the process's whole group, which lives on after its leader exits while a child of it runs. Called only
 * before the process's 'close' (its pipes are still held), so the group still exists and its id is not reused.
 */
function killGroup(child: ChildProcess): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, "SIGKILL");
  } catch {
    child.kill("SIGKILL");
  }
}

function notInstalled(command: string, error: Error): Error {
  return (error as NodeJS.ErrnoException).code === "ENOENT" ? new CommandNotFoundError(command) : error;
}

/**
 * Runs one command and answers with its exit code and output (a non-zero exit is the caller's to judge). Throws
 * CommandTimeoutError at the limit, and when the command can't be started.
 */
export function runCommand(command: string, args: readonly string[], options: CommandOptions): Promise<CommandResult> {
  const { label } = options;
  const maxStdout = options.maxStdoutBytes ?? 16 * 1024 * 1024;
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      env: options.env ?? process.env,
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    const stdout: Buffer[] = [];
    let stdoutBytes = 0;
    let stderr = "";
    let settled = false;
    const finish = (outcome: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      outcome();
    };
    const timer = setTimeout(() => {
      killGroup(child);
      finish(() => reject(new CommandTimeoutError(label, options.timeoutMs, options.setting)));
    }, options.timeoutMs);
    child.stdout.on("data", (chunk: Buffer) => {
      if (settled) return;
      stdoutBytes += chunk.byteLength;
      if (stdoutBytes > maxStdout) {
        killGroup(child);
        finish(() => reject(new Error(`${label} printed more than ${maxStdout} bytes and was stopped`)));
        return;
      }
      stdout.push(chunk);
    });
    child.stderr
      .setEncoding("utf8")
      .on("data", (chunk: string) => (stderr = (stderr + chunk).slice(-STDERR_TAIL_BYTES)));
    child.on("error", (error) => finish(() => reject(notInstalled(command, error))));
    child.on("close", (code) =>
      finish(() => resolve({ code, stdout: Buffer.concat(stdout).toString("utf8"), stderr })),
    );
  });
}

/**
 * Runs `a | b` (stdout of the first into stdin of the second); fails when either fails, naming it and the end of
 * both stderrs. Both processes' groups are killed at the limit.
 */
export function runPipeline(
  a: readonly [command: string, args: readonly string[]],
  b: readonly [command: string, args: readonly string[]],
  options: Omit<CommandOptions, "maxStdoutBytes">,
): Promise<void> {
  const { label } = options;
  return new Promise((resolve, reject) => {
    const env = options.env ?? process.env;
    const first = spawn(a[0], a[1], { stdio: ["ignore", "pipe", "pipe"], env, detached: true });
    const second = spawn(b[0], b[1], { stdio: ["pipe", "ignore", "pipe"], env, detached: true });
    first.stdout.pipe(second.stdin);
    let errors = "";
    const collect = (chunk: Buffer) => (errors = (errors + chunk.toString()).slice(-STDERR_TAIL_BYTES));
    first.stderr.on("data", collect);
    second.stderr.on("data", collect);
    second.stdin.on("error", () => undefined); // EPIPE when the second stops early; its exit code says why
    let settled = false;
    const finish = (outcome: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      outcome();
    };
    const closed = new Set<ChildProcess>();
    const stop = (...children: ChildProcess[]) => children.filter((child) => !closed.has(child)).forEach(killGroup);
    const timer = setTimeout(() => {
      stop(first, second);
      finish(() => reject(new CommandTimeoutError(label, options.timeoutMs, options.setting)));
    }, options.timeoutMs);
    const done = (child: ChildProcess, name: string, other: ChildProcess) => (code: number | null) => {
      closed.add(child);
      if (code !== 0) {
        // The other side would wait for input, or for a reader, that never comes.
        stop(other);
        finish(() => reject(new Error(`${name} exited with ${code}: ${errors.trim().slice(-2000)}`)));
      }
      if (closed.size === 2) finish(resolve);
    };
    first.on("error", (error) => {
      stop(second);
      finish(() => reject(notInstalled(a[0], error)));
    });
    second.on("error", (error) => {
      stop(first);
      finish(() => reject(notInstalled(b[0], error)));
    });
    first.on("close", done(first, a[0], second));
    second.on("close", done(second, b[0], first));
  });
}
