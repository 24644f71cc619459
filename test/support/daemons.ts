// The Docker daemon and containerd, each started with folders of its own under a test's scratch folder (nothing of
// the machine's daemons is touched), and stopped by its pid.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { run, runAllowingFailure, type CommandOutput } from "./stack.ts";

/** Whether a program is on PATH. */
export async function has(program: string): Promise<boolean> {
  return (await runAllowingFailure("sh", ["-c", `command -v ${program}`])).code === 0;
}

export async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what} did not come up within ${timeoutMs / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

/** Stops a daemon started here, by its pid: SIGTERM, then SIGKILL after 20 s. */
export async function stopDaemon(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  await exited;
  clearTimeout(timer);
}

/** A daemon's output, kept for the error message when it does not come up. */
export function captureOutput(child: ChildProcess): () => string {
  let output = "";
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-8000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  return () => output;
}

export interface Daemon {
  /** The daemon's client (docker, or ctr), and the global options that point it at this daemon. */
  clientCommand: string;
  clientArgs: string[];
  /** Runs the daemon's client (docker, or ctr) against it. */
  client(args: string[], timeoutMs?: number): Promise<CommandOutput>;
  clientAllowingFailure(args: string[], timeoutMs?: number): Promise<CommandOutput & { code: number | null }>;
  stop(): Promise<void>;
}

async function started(
  name: string,
  daemon: ChildProcess,
  clientCommand: string,
  clientArgs: string[],
  versionArgs: string[],
): Promise<Daemon> {
  const output = captureOutput(daemon);
  const daemonHandle: Daemon = {
    clientCommand,
    clientArgs,
    client: (args, timeoutMs = 120_000) => run(clientCommand, [...clientArgs, ...args], timeoutMs),
    clientAllowingFailure: (args, timeoutMs = 120_000) =>
      runAllowingFailure(clientCommand, [...clientArgs, ...args], timeoutMs),
    stop: () => stopDaemon(daemon),
  };
  try {
    await waitFor(
      name,
      async () => {
        if (daemon.exitCode !== null) throw new Error(`${name} exited with ${daemon.exitCode}`);
        return (await daemonHandle.clientAllowingFailure(versionArgs, 10_000)).code === 0;
      },
      60_000,
    );
  } catch (error) {
    await stopDaemon(daemon);
    throw new Error(`${(error as Error).message}:\n${output()}`, { cause: error });
  }
  return daemonHandle;
}

/** dockerd (Debian's docker.io, 20.10) with its data, exec root, pid file and socket under `dir`; vfs, no network. */
export function startDockerd(dir: string): Promise<Daemon> {
  const socket = `unix://${dir}/sock`;
  const daemon = spawn(
    "dockerd",
    [
      "--host",
      socket,
      "--data-root",
      join(dir, "root"),
      "--exec-root",
      join(dir, "exec"),
      "--pidfile",
      join(dir, "pid"),
      "--iptables=false",
      "--ip-forward=false",
      "--bridge=none",
      "--storage-driver=vfs",
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  // The 20.10 client that comes with the daemon, where it is installed; any docker CLI speaks to it.
  const docker = existsSync("/usr/bin/docker") ? "/usr/bin/docker" : "docker";
  return started("dockerd", daemon, docker, ["-H", socket], ["version"]);
}

/** containerd with its root, state and sockets under `dir`, without the CRI plugin (a pull needs nothing of it). */
export async function startContainerd(dir: string): Promise<Daemon> {
  const address = join(dir, "c.sock");
  const config = join(dir, "config.toml");
  await writeFile(
    config,
    [
      "version = 2",
      `root = "${join(dir, "root")}"`,
      `state = "${join(dir, "state")}"`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      "[grpc]",
      `  address = "${address}"`,
      "[ttrpc]",
      `  address = "${address}.ttrpc"`,
      "",
    ].join("\n"),
  );
  const daemon = spawn("containerd", ["--config", config], { stdio: ["ignore", "pipe", "pipe"] });
  return started("containerd", daemon, "ctr", ["--address", address], ["version"]);
}
