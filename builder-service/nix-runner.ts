// Runs Nix: the package check (nix-instantiate --eval) and the image build (nix-build), with a time limit.
// Package names reach Nix only as JSON through --argstr, never as Nix code.
//
// Longer than most files here: every Nix command the builder runs, beside the one runner that bounds and kills them.
import { spawn } from "node:child_process";
import { mkdtemp, readFile, readlink, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { NixSystem } from "../common/image-name.ts";
import { parseImageClosure, type ImageClosure } from "./closure.ts";
import { derivationBuilder, NixJsonLogDecoder, type NixFinished } from "./nix-log.ts";
import { NixBuildPlanReader, type BuildPlan } from "./nix-progress.ts";
import { MISSING_BUILD_USERS_GROUP, missingBuildUsersGroupMessage } from "./nix-settings.ts";

/** How a package set is given to nix/build-image.nix (its `source` argument). */
export type NixSource = { kind: "path"; path: string } | { kind: "tarball"; url: string; sha256?: string };

/** Why the package set refuses to evaluate a package (nixpkgs' check-meta), as nix/build-image.nix reports it. */
export type Refusal = "broken" | "insecure" | "unfree" | "unsupported-system" | "refused";

/** What the builder's operator can set to let the package set evaluate such packages. */
const REFUSALS: Record<Refusal, string> = {
  broken:
    "is marked as broken in the package set; the builder's operator can allow broken packages with NIXPKGS_ALLOW_BROKEN=1",
  insecure:
    "is marked as insecure (it has known vulnerabilities); the builder's operator can allow insecure packages with NIXPKGS_ALLOW_INSECURE=1",
  unfree: "has an unfree license; the builder's operator can allow unfree packages with NIXPKGS_ALLOW_UNFREE=1",
  "unsupported-system":
    "is not available for this image's system (its meta.platforms); the builder's operator can allow it with NIXPKGS_ALLOW_UNSUPPORTED_SYSTEM=1",
  refused: "is refused by the package set when evaluated",
};

/**
 * Requested names the image cannot have: names the package set lacks, names that were removed from it (its alias
 * says what to use instead), and packages it refuses to evaluate. Nothing is built.
 */
export class UnknownPackagesError extends Error {
  constructor(
    readonly unknown: string[],
    /** A removed name and the package set's own message about it ("'x' has been renamed to 'y'"). */
    readonly removed: { name: string; message: string }[] = [],
    readonly refused: { name: string; reason: Refusal }[] = [],
  ) {
    const parts: string[] = [];
    if (unknown.length > 0) parts.push(`unknown package${unknown.length > 1 ? "s" : ""}: ${unknown.join(", ")}`);
    for (const { name, message } of removed) parts.push(`${name} is no longer in the package set: ${message}`);
    for (const { name, reason } of refused) parts.push(`${name} ${REFUSALS[reason]}`);
    super(parts.join("; "));
  }

  /** Only refusals: the names exist, so "denied" fits better than "unknown". */
  get onlyRefused(): boolean {
    return this.refused.length > 0 && this.unknown.length === 0 && this.removed.length === 0;
  }
}

/** The package set needs a newer Nix than the builder's (nixpkgs' lib/minver.nix). */
export class NixTooOldError extends Error {
  constructor(
    readonly needed: string,
    readonly have: string,
    revision?: string,
  ) {
    super(
      `the package set${revision ? ` at revision ${revision}` : ""} needs Nix >= ${needed}, and this builder has Nix ${have}. ` +
        `Install a newer Nix on the builder: on Debian 13 or Ubuntu 24.04 and later, apt-get install nix-bin; elsewhere ` +
        `remove the distribution's Nix (apt-get remove nix-bin) and run the upstream installer: ` +
        `curl -fsSL https://nixos.org/nix/install | sh -s -- --daemon (deploy/install-builder.sh picks the right way on a VM)`,
    );
  }
}

export interface NixRequirements {
  /** The package set's lib/minver.nix, or null when it names none. */
  minNixVersion: string | null;
  /** The builder's Nix, as Nix itself says (builtins.nixVersion). */
  nixVersion: string;
  /** Whether nixVersion is at least minNixVersion (compared by Nix's own builtins.compareVersions). */
  satisfied: boolean;
}

const REFUSAL_NAMES = new Set<string>(Object.keys(REFUSALS));

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
  /**
   * Where running builds keep their GC roots (default: the system's temporary folder). Under systemd with
   * PrivateTmp, nix-daemon can't see the service's /tmp and would take such roots for stale: the builder passes
   * BUILDER_DATA_DIR/gcroots.
   */
  rootsDir?: string;
}

interface CommandResult {
  stdout: string;
  stderrTail: string;
  code: number | null;
  timedOut: boolean;
}

/**
 * The image's derivation, evaluated once and kept from the garbage collector until release(); so is its build's
 * output (and with it the image's closure), which buildClosure roots at outLink, until the image is published.
 */
export interface ImageDerivation {
  drvPath: string;
  /** Where buildClosure puts the output's GC root (an indirect one, beside the derivation's). */
  outLink: string;
  release: () => Promise<void>;
}

/** What a build may do, judged on Nix's plan as it announces it. */
export interface BuildGuard {
  /** Replaces max-jobs for this build (the image's own derivation must be built even where NIX_MAX_JOBS=0). */
  maxJobs?: number;
  /** Called as the plan comes in; what it throws stops the build at once and is the build's error. */
  check(plan: BuildPlan): void;
}

/** Keep the end of Nix's log: the failing builder's last lines are what explains a failure. */
const STDERR_TAIL_BYTES = 16 * 1024;
const LOG_TAIL_LINES = 25;

/**
 * Runs a Nix command within the time limit. `decode` turns each line Nix prints on stderr into the lines it stands
 * for (nix-log.ts's JSON log): those are what onLogLine hears and what the result's stderrTail holds.
 */
function run(
  command: string,
  args: string[],
  options: NixRunnerOptions,
  onLogLine?: (line: string) => void,
  signal?: AbortSignal,
  decode?: (line: string) => string[],
): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      env: { ...process.env, ...options.env },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    let stdout = "";
    let stderr = "";
    let timedOut = false;
    let partialLine = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
    const take = (raw: string) => {
      const lines = decode ? decode(raw) : [raw];
      if (decode && lines.length > 0) stderr = (stderr + lines.join("\n") + "\n").slice(-STDERR_TAIL_BYTES);
      if (onLogLine) for (const line of lines) onLogLine(line);
    };
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      if (!decode) stderr = (stderr + chunk).slice(-STDERR_TAIL_BYTES);
      if (!onLogLine && !decode) return;
      const lines = (partialLine + chunk).split("\n");
      partialLine = lines.pop() ?? "";
      for (const line of lines) take(line);
    });
    // The whole process group: nix-build's builders are its children.
    const kill = () => {
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch {
        child.kill("SIGKILL");
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      kill();
    }, options.timeoutSeconds * 1000);
    signal?.addEventListener("abort", kill, { once: true });
    child.on("error", (error) => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", kill);
      reject(
        (error as NodeJS.ErrnoException).code === "ENOENT"
          ? new Error(`${command} is not installed or not on PATH; install Nix (Debian: apt-get install nix-bin)`)
          : error,
      );
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", kill);
      if (partialLine) take(partialLine);
      resolve({ stdout, stderrTail: stderr, code, timedOut });
    });
  });
}

// Images for another system than the builder's (`arm64/...` on an x86_64 builder): Nix builds them only with
// a remote builder for that system, or emulation (qemu-user through binfmt) announced with `extra-platforms`.
// Most nixpkgs packages need neither (cache.nixos.org has them built); when a derivation must be built here
// and nothing can, Nix's "a 'aarch64-linux' with features {} is required" becomes a message saying what to do.
const REQUIRED_SYSTEM =
  /a '([A-Za-z0-9_-]+)' with features \{[^}]*\} is required to build '\/nix\/store\/[0-9a-z]{32}-([^']+)\.drv', but I am a '([A-Za-z0-9_-]+)'/;

/** The message for Nix's "a 'SYSTEM' ... is required to build" failure, or null for any other failure. */
function unsupportedSystemMessage(logTail: string): string | null {
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

/**
 * The message of the error a Nix evaluation stopped on: after the last "error:" (Nix 2.8 prints one line,
 * newer Nix a trace of "… while evaluating" lines and then the error), without Nix's --show-trace hint.
 */
export function thrownMessage(stderr: string): string | null {
  const at = stderr.lastIndexOf("error: ");
  if (at < 0) return null;
  const text = stderr
    .slice(at + "error: ".length)
    .split("\n")
    .filter((line) => !/^\s*\(use '--show-trace'/.test(line))
    .map((line) => line.trim())
    .join(" ")
    .replace(/\s+/g, " ")
    .trim();
  return text ? text.slice(0, 500) : null;
}

function tail(text: string, lines: number): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

export class NixRunner {
  private readonly compatibility = new Map<string, Promise<void>>();

  constructor(private readonly options: NixRunnerOptions) {}

  private args(packages: readonly string[], source: NixSource, system: NixSystem | null, attribute: string): string[] {
    const args = [
      join(this.options.nixDir, "build-image.nix"),
      "-A",
      attribute,
      "--argstr",
      "packages",
      JSON.stringify(packages),
      "--argstr",
      "source",
      JSON.stringify(source),
    ];
    return system ? [...args, "--argstr", "system", system] : args;
  }

  /** An attribute of build-image.nix evaluated strictly, as JSON (`index`, `renamed`: see package-index.ts). */
  async evaluate(
    attribute: "index" | "renamed" | "roots",
    packages: readonly string[],
    source: NixSource,
    system: NixSystem,
  ): Promise<unknown> {
    const result = await run(
      "nix-instantiate",
      ["--eval", "--strict", "--json", ...this.args(packages, source, system, attribute)],
      this.options,
    );
    this.throwOnFailure(result, `reading the package set's ${attribute}`);
    return JSON.parse(result.stdout) as unknown;
  }

  /**
   * The unpacked size of the closure of `paths` when they are all in this builder's store, else null (nothing is
   * built or fetched to find out).
   */
  async closureBytes(paths: readonly string[]): Promise<number | null> {
    if (paths.length === 0) return null;
    const invalid = await run("nix-store", ["--check-validity", "--print-invalid", ...paths], this.options);
    if (invalid.code !== 0 || invalid.stdout.trim() !== "") return null;
    const requisites = await run("nix-store", ["--query", "--requisites", ...paths], this.options);
    if (requisites.code !== 0) return null;
    const closure = requisites.stdout.split("\n").filter(Boolean);
    const sizes = await run("nix-store", ["--query", "--size", ...closure], this.options);
    if (sizes.code !== 0) return null;
    return sizes.stdout
      .split("\n")
      .filter(Boolean)
      .reduce((sum, size) => sum + Number(size), 0);
  }

  /** The Nix the package set needs and the one here; evaluates lib/minver.nix only (the set is not imported). */
  async requirements(source: NixSource): Promise<NixRequirements> {
    const result = await run(
      "nix-instantiate",
      ["--eval", "--strict", "--json", ...this.args([], source, null, "requirements")],
      this.options,
    );
    this.throwOnFailure(result, "reading the package set's Nix requirement");
    const parsed = JSON.parse(result.stdout) as { minNixVersion?: unknown; nixVersion?: unknown; satisfied?: unknown };
    return {
      minNixVersion: typeof parsed.minNixVersion === "string" ? parsed.minNixVersion : null,
      nixVersion: typeof parsed.nixVersion === "string" ? parsed.nixVersion : "unknown",
      satisfied: parsed.satisfied !== false,
    };
  }

  /**
   * Throws NixTooOldError when the package set at this revision needs a newer Nix. Asked of Nix once per source
   * (a revision never changes); a failure to ask (the archive unreachable) is not remembered.
   */
  ensureNewEnough(source: NixSource, revision: string): Promise<void> {
    const key = JSON.stringify(source);
    let check = this.compatibility.get(key);
    if (!check) {
      check = this.requirements(source).then((found) => {
        if (!found.satisfied) throw new NixTooOldError(found.minNixVersion ?? "?", found.nixVersion, revision);
      });
      check.catch((error: unknown) => {
        if (!(error instanceof NixTooOldError)) this.compatibility.delete(key);
      });
      this.compatibility.set(key, check);
    }
    return check;
  }

  /**
   * Checks every name against the package set without building; throws UnknownPackagesError naming every name
   * that is unknown, removed (with the package set's message) or refused (with the setting that would allow it).
   * Returns the attribute path each name was found at (a case-insensitive match, `2048` as `_2048`).
   */
  async checkPackages(
    packages: readonly string[],
    source: NixSource,
    system: NixSystem,
  ): Promise<Record<string, string>> {
    const result = await run(
      "nix-instantiate",
      ["--eval", "--strict", "--json", ...this.args(packages, source, system, "resolve")],
      this.options,
    );
    this.throwOnFailure(result, "checking package names");
    const parsed = JSON.parse(result.stdout) as {
      resolved?: unknown;
      unknown?: unknown;
      throws?: unknown;
      refused?: unknown;
    };
    const strings = (value: unknown) =>
      Array.isArray(value) ? value.filter((x): x is string => typeof x === "string") : [];
    const unknown = strings(parsed.unknown);
    const refusedMap =
      typeof parsed.refused === "object" && parsed.refused !== null ? (parsed.refused as Record<string, unknown>) : {};
    const refused = Object.entries(refusedMap).map(([name, reason]) => ({
      name,
      reason: (typeof reason === "string" && REFUSAL_NAMES.has(reason) ? reason : "refused") as Refusal,
    }));
    const removed = await Promise.all(
      strings(parsed.throws).map(async (name) => ({ name, message: await this.explain(name, source, system) })),
    );
    if (unknown.length > 0 || removed.length > 0 || refused.length > 0)
      throw new UnknownPackagesError(unknown, removed, refused);
    const resolved =
      typeof parsed.resolved === "object" && parsed.resolved !== null
        ? (parsed.resolved as Record<string, unknown>)
        : {};
    return Object.fromEntries(
      Object.entries(resolved).filter((entry): entry is [string, string] => typeof entry[1] === "string"),
    );
  }

  /** The message the package set throws for a name (an alias of a removed package says what replaced it). */
  private async explain(name: string, source: NixSource, system: NixSystem): Promise<string> {
    const result = await run(
      "nix-instantiate",
      ["--eval", "--strict", "--json", ...this.args([name], source, system, "explain")],
      this.options,
    );
    return thrownMessage(result.stderrTail) ?? "it fails to evaluate";
  }

  /**
   * Evaluates the image's derivation without building anything. It is evaluated once: the plan and the build then
   * start from the .drv, which a GC root (an indirect one, in a temporary folder) keeps until release().
   */
  async instantiateImage(packages: readonly string[], source: NixSource, system: NixSystem): Promise<ImageDerivation> {
    const rootDir = await mkdtemp(join(this.options.rootsDir ?? tmpdir(), "image-drv-"));
    const release = () => rm(rootDir, { recursive: true, force: true });
    try {
      const root = join(rootDir, "image.drv");
      const result = await run(
        "nix-instantiate",
        ["--add-root", root, "--indirect", ...this.args(packages, source, system, "image")],
        this.options,
      );
      this.throwOnFailure(result, "evaluating the image");
      return { drvPath: await readlink(root), outLink: join(rootDir, "image"), release };
    } catch (error) {
      await release();
      throw error;
    }
  }

  /**
   * The closure of store paths Nix has just fetched, leaving out those that are not valid (a download that failed
   * may leave nothing behind). One Nix command when all are valid, as they nearly always are: each costs about 50 ms
   * of CPU beside the build.
   */
  async validClosure(fetched: readonly string[]): Promise<string[]> {
    const paths = new Set(fetched);
    if (paths.size === 0) return [];
    const closure = await run("nix-store", ["--query", "--requisites", ...paths], this.options);
    if (closure.code === 0) return closure.stdout.split("\n").filter(Boolean);
    const checked = await run("nix-store", ["--check-validity", "--print-invalid", ...paths], this.options);
    if (checked.code !== 0) return [];
    const invalid = new Set(checked.stdout.split("\n").filter(Boolean));
    const valid = [...paths].filter((path) => !invalid.has(path));
    if (valid.length === 0) return [];
    const validClosure = await run("nix-store", ["--query", "--requisites", ...valid], this.options);
    return validClosure.code === 0 ? validClosure.stdout.split("\n").filter(Boolean) : [];
  }

  /** The store path of the derivation's builder (the package set's busybox for the image's), if it has one. */
  async derivationBuilder(drvPath: string): Promise<string | null> {
    return derivationBuilder(await readFile(drvPath, "utf8"));
  }

  /** What building the derivation takes, as Nix plans it (a dry run: nothing is fetched or built). */
  async planBuild(drvPath: string): Promise<BuildPlan> {
    const reader = new NixBuildPlanReader();
    const result = await run("nix-store", ["--realise", "--dry-run", drvPath], this.options, (line) =>
      reader.line(line),
    );
    this.throwOnFailure(result, "planning the build");
    return reader.plan;
  }

  /**
   * Builds the image's derivation and returns its closure and metadata; Nix's log lines go to
   * onLogLine. With a guard, the build stops as soon as Nix announces a plan the guard refuses. With onFinished,
   * Nix writes its JSON log (nix-log.ts), turned back into the same lines, and onFinished hears of each of its
   * builds and downloads as it ends; without, Nix's text log is read as it is.
   */
  async buildClosure(
    derivation: Pick<ImageDerivation, "drvPath" | "outLink">,
    onLogLine?: (line: string) => void,
    guard?: BuildGuard,
    onFinished?: (finished: NixFinished) => void,
  ): Promise<ImageClosure> {
    const { drvPath, outLink } = derivation;
    const reader = new NixBuildPlanReader();
    const stop = new AbortController();
    let refused: unknown = null;
    const maxJobs = guard?.maxJobs === undefined ? [] : ["--max-jobs", String(guard.maxJobs)];
    const log = onFinished ? new NixJsonLogDecoder(onFinished) : null;
    const logFormat = log ? ["--log-format", "internal-json"] : [];
    const result = await run(
      "nix-build",
      // Rooted: a collection of the store (nix-store-limit.ts) between the build and the upload would take the closure.
      [...logFormat, "--out-link", outLink, ...maxJobs, drvPath],
      this.options,
      (line) => {
        onLogLine?.(line);
        if (!guard || refused !== null) return;
        reader.line(line);
        try {
          guard.check(reader.plan);
        } catch (error) {
          refused = error;
          stop.abort();
        }
      },
      stop.signal,
      log ? (line) => log.decode(line) : undefined,
    );
    if (refused !== null)
      throw refused instanceof Error ? refused : new Error("the build was refused", { cause: refused });
    this.throwOnFailure(result, "building the image");
    const outPath = result.stdout.trim().split("\n").pop() ?? "";
    if (!outPath.startsWith("/nix/store/")) {
      throw new NixBuildError(`nix-build printed no output path`, [], tail(result.stderrTail, LOG_TAIL_LINES));
    }
    return parseImageClosure(await readFile(join(outPath, "image.json"), "utf8"));
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
    const tooOld = /build-image\.nix: nix-too-old: the package set needs Nix >= (\S+), and this is Nix (\S+)/.exec(
      result.stderrTail,
    );
    if (tooOld) throw new NixTooOldError(tooOld[1], tooOld[2]);
    const group = MISSING_BUILD_USERS_GROUP.exec(result.stderrTail);
    // Only when it is what stopped Nix: the warning alone comes with every command, failing or not.
    if (group && result.stderrTail.includes(`error: the group '${group[2]}' specified in 'build-users-group'`)) {
      throw new NixBuildError(missingBuildUsersGroupMessage(group[2]), [], log);
    }
    const unsupported = unsupportedSystemMessage(result.stderrTail);
    if (unsupported) throw new NixBuildError(unsupported, [], log);
    // Nix 2.8 says it on one line, later ones over several: "Unable to start any build; either increase '--max-jobs' ...".
    if (/unable to start any build/i.test(result.stderrTail)) {
      throw new NixBuildError(
        "Nix would have to build something, and this builder's Nix builds nothing itself (NIX_MAX_JOBS=0, or max-jobs = 0 in its NIX_CONFIG): it only downloads from binary caches, which lack it",
        [],
        log,
      );
    }
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
