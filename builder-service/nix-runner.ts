// Runs Nix: the package check (nix-instantiate --eval) and the image build (nix-build), with a time limit.
// Package names reach Nix only as JSON through --argstr, never as Nix code.
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { NixSystem } from "../common/image-name.ts";
import type { ImageClosure } from "./closure.ts";
import type { RootfsEntry } from "./tarball.ts";

/** How a package set is given to nix/build-image.nix (its `source` argument). */
export type NixSource =
  | { kind: "path"; path: string }
  | { kind: "tarball"; url: string; sha256?: string }
  | { kind: "git"; url: string; rev: string };

export class UnknownPackagesError extends Error {
  constructor(readonly unknown: string[]) {
    super(`unknown package${unknown.length > 1 ? "s" : ""}: ${unknown.join(", ")}`);
  }
}

export class NixBuildError extends Error {
  constructor(
    message: string,
    /** Names of the derivations whose builds failed, e.g. "broken-1.0". */
    readonly failed: string[],
    readonly logTail: string,
  ) {
    super(message);
  }
}

export interface NixRunnerOptions {
  /** The folder holding build-image.nix. */
  nixDir: string;
  timeoutSeconds: number;
  /** Extra environment for Nix (e.g. NIX_CONFIG). */
  env?: NodeJS.ProcessEnv;
}

interface CommandResult {
  stdout: string;
  stderrTail: string;
  code: number | null;
  timedOut: boolean;
}

/** Keep the end of Nix's log: the failing builder's last lines are what explains a failure. */
const STDERR_TAIL_BYTES = 16 * 1024;
const LOG_TAIL_LINES = 25;

function run(command: string, args: string[], options: NixRunnerOptions): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      env: { ...process.env, ...options.env },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    let stdout = "";
    let stderr = "";
    let timedOut = false;
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      stderr = (stderr + chunk).slice(-STDERR_TAIL_BYTES);
    });
    const timer = setTimeout(() => {
      timedOut = true;
      // The whole process group: nix-build's builders are its children.
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch {
        child.kill("SIGKILL");
      }
    }, options.timeoutSeconds * 1000);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(
        (error as NodeJS.ErrnoException).code === "ENOENT"
          ? new Error(`${command} is not installed or not on PATH; install Nix (Debian: apt-get install nix-bin)`)
          : error,
      );
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ stdout, stderrTail: stderr, code, timedOut });
    });
  });
}

// Images for another system than the builder's (`arm64/...` on an x86_64 builder): Nix builds them only with
// a remote builder for that system, or emulation (qemu-user through binfmt) announced with `extra-platforms`.
// Most nixpkgs packages need neither (cache.nixos.org has them built); when a derivation must be built here
// and nothing can, Nix's "a 'aarch64-linux' with features {} is required" becomes a message saying what to do.
const REQUIRED_SYSTEM = /a '([A-Za-z0-9_-]+)' with features \{[^}]*\} is required to build '\/nix\/store\/[0-9a-z]{32}-([^']+)\.drv', but I am a '([A-Za-z0-9_-]+)'/;

/** The message for Nix's "a 'SYSTEM' ... is required to build" failure, or null for any other failure. */
export function unsupportedSystemMessage(logTail: string): string | null {
  const match = REQUIRED_SYSTEM.exec(logTail);
  if (!match) return null;
  const [, wanted, derivation, host] = match;
  return (
    `this builder cannot build packages for ${wanted}: Nix here runs on ${host} and has no ${wanted} builder ` +
    `(needed for ${derivation}, which no binary cache had). ` +
    `To serve ${wanted} images, give the builder's Nix one of: a remote builder for ${wanted} ` +
    `(nix.conf: builders = ssh://user@host ${wanted}), or qemu-user emulation (Debian: apt-get install ` +
    `qemu-user-static binfmt-support) with nix.conf extra-platforms = ${wanted}; or run a builder on a ${wanted} machine`
  );
}

function tail(text: string, lines: number): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

export class NixRunner {
  constructor(private readonly options: NixRunnerOptions) {}

  private args(packages: readonly string[], source: NixSource, system: NixSystem, attribute: string): string[] {
    return [
      join(this.options.nixDir, "build-image.nix"),
      "-A",
      attribute,
      "--argstr",
      "packages",
      JSON.stringify(packages),
      "--argstr",
      "source",
      JSON.stringify(source),
      "--argstr",
      "system",
      system,
    ];
  }

  /** Checks every name against the package set without building; throws UnknownPackagesError naming all misses. */
  async checkPackages(packages: readonly string[], source: NixSource, system: NixSystem): Promise<void> {
    const result = await run(
      "nix-instantiate",
      ["--eval", "--strict", "--json", ...this.args(packages, source, system, "resolve")],
      this.options,
    );
    this.throwOnFailure(result, "checking package names");
    const parsed = JSON.parse(result.stdout) as { unknown?: unknown };
    const unknown = Array.isArray(parsed.unknown) ? parsed.unknown.filter((x): x is string => typeof x === "string") : [];
    if (unknown.length > 0) throw new UnknownPackagesError(unknown);
  }

  /** Builds the packages and returns their closure graph and root filesystem. */
  async buildClosure(packages: readonly string[], source: NixSource, system: NixSystem): Promise<ImageClosure> {
    const result = await run(
      "nix-build",
      ["--no-out-link", ...this.args(packages, source, system, "image")],
      this.options,
    );
    this.throwOnFailure(result, "building the image");
    const outPath = result.stdout.trim().split("\n").pop() ?? "";
    if (!outPath.startsWith("/nix/store/")) {
      throw new NixBuildError(`nix-build printed no output path`, [], tail(result.stderrTail, LOG_TAIL_LINES));
    }
    const image = JSON.parse(await readFile(join(outPath, "image.json"), "utf8")) as Omit<ImageClosure, "rootfs">;
    const rootfs = JSON.parse(await readFile(join(outPath, "rootfs.json"), "utf8")) as RootfsEntry[];
    return { packages: image.packages, topLevel: image.topLevel, graph: image.graph, rootfs };
  }

  private throwOnFailure(result: CommandResult, what: string): void {
    const log = tail(result.stderrTail, LOG_TAIL_LINES);
    if (result.timedOut) {
      throw new NixBuildError(
        `${what} took longer than the builder's Nix time limit of ${this.options.timeoutSeconds} s (NIX_TIMEOUT_SECONDS)`,
        [],
        log,
      );
    }
    if (result.code === 0) return;
    const unsupported = unsupportedSystemMessage(result.stderrTail);
    if (unsupported) throw new NixBuildError(unsupported, [], log);
    const failed = [...result.stderrTail.matchAll(/builder for '\/nix\/store\/[0-9a-z]{32}-([^']+)\.drv' failed/g)].map(
      (match) => match[1],
    );
    const unique = [...new Set(failed)];
    const message =
      unique.length > 0
        ? `the build of ${unique.join(", ")} failed`
        : `Nix failed while ${what} (exit code ${result.code})`;
    throw new NixBuildError(message, unique, log);
  }
}
