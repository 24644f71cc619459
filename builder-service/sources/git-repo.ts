// A git repository of a package set (NIXERY_PKGS_REPO): nixpkgs itself, a fork, or a private set.
// Tags: `latest` is the default branch (NIXERY_PKGS_BRANCH, else the remote's HEAD), a branch or git tag
// name is its current commit, a 40-hex commit pins. The builder keeps a bare mirror of the repository
// under BUILDER_DATA_DIR/git/ (cloned once, fetched on each resolution of a moving name) and builds from
// the commit's tree, exported with `git archive` into the Nix store.
//
// Why not Nix's fetchGit on the mirror: Nix 2.8 treats a bare repository as remote and clones it again into
// ~/.cache/nix/gitv3 (a second copy of all history, several GB for nixpkgs), and counts the commits of
// every revision it fetches (`git rev-list --count`, seconds on nixpkgs). Exporting the tree ourselves keeps
// one copy of the history and costs what fetchGit's own export costs.
//
// A user's tag never reaches git as an option: it is used only inside refs/heads/<tag> and refs/tags/<tag>
// (the tag grammar already refuses a leading '-'), after `--end-of-options` where git has it.
//
// Longer than most files here: the mirror's whole life (clone, fetch, export, resolve) in one place.
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { ResolveResult } from "../../common/builder-api.ts";
import { classifyTag } from "../../common/tag.ts";
import type { Logger } from "../log.ts";
import type { NixSource } from "../nix-runner.ts";
import { SingleFlight } from "../../common/single-flight.ts";
import { CommandTimeoutError, runCommand, runPipeline, type CommandResult } from "../time-limited-command.ts";
import { RevisionUnavailableError, type PackageSource } from "./package-source.ts";

const COMMIT = /^[0-9a-f]{40}$/;

export interface GitRepoSourceOptions {
  /** Anything `git clone` accepts: https://, ssh://, git@host:path, file:///path. */
  url: string;
  /** The branch `latest` follows; null for the remote's default branch (its HEAD). */
  branch: string | null;
  /** BUILDER_DATA_DIR: the mirror is kept in <dataDir>/git/. */
  dataDir: string;
  /** How long the resolution of a moving name (latest, a branch, a git tag) may be reused. */
  ttlSeconds: number;
  log: Logger;
  /** Time limit of one `git fetch` (the first clone gets ten times as long). Default 300. */
  fetchTimeoutSeconds?: number;
  /** Time limit of exporting a commit's tree (`git archive | tar`). Default 600. */
  exportTimeoutSeconds?: number;
  /** Time limit of `nix-store --add` of an exported tree: the builder's NIX_TIMEOUT. Default 600. */
  nixTimeoutSeconds?: number;
}

/** Commands that answer in well under this: local git (rev-parse, cat-file), ls-remote, nix-store --check-validity. */
const QUICK_COMMAND_TIMEOUT_MS = 60_000;

/** The URL without user name and password, for labels and logs. */
function redactUrl(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/@]*@/i, "$1");
}

class GitError extends Error {}

export class GitRepoSource implements PackageSource {
  readonly description: string;
  /** The bare mirror. */
  readonly mirror: string;
  private readonly exportsDir: string;
  private readonly fetchTimeoutMs: number;
  private readonly exportTimeoutMs: number;
  private readonly nixTimeoutMs: number;
  private ready: Promise<void> | null = null;
  private fetching: Promise<void> | null = null;
  /** When the last successful fetch started (ms since the epoch). */
  private lastFetchAt = 0;
  private readonly minFetchIntervalMs: number;
  private queuedFetch: Promise<void> | null = null;
  private readonly exports = new SingleFlight<string>();

  constructor(private readonly options: GitRepoSourceOptions) {
    this.description = redactUrl(options.url);
    const id = createHash("sha256").update(options.url).digest("hex").slice(0, 16);
    this.mirror = join(options.dataDir, "git", `${id}.git`);
    this.exportsDir = join(options.dataDir, "git", `${id}.exports`);
    this.fetchTimeoutMs = (options.fetchTimeoutSeconds ?? 300) * 1000;
    this.exportTimeoutMs = (options.exportTimeoutSeconds ?? 600) * 1000;
    this.nixTimeoutMs = (options.nixTimeoutSeconds ?? 600) * 1000;
    // Unknown names are not cached by the worker: without a floor, every request for a made-up branch would
    // make the builder fetch from the git host.
    this.minFetchIntervalMs = Math.min(options.ttlSeconds, 10) * 500;
  }

  /** For `builder-service --check`: git is installed and the repository answers (nothing is cloned). */
  async check(): Promise<void> {
    await this.git(["--version"], { outside: true }).catch(() => {
      throw new Error("git is not installed or not on PATH; NIXERY_PKGS_REPO needs it (Debian: apt-get install git)");
    });
    await this.git(["ls-remote", "--symref", "--", this.options.url, "HEAD"], { outside: true }).catch(
      (error: Error) => {
        throw new Error(`NIXERY_PKGS_REPO=${this.description} cannot be read: ${error.message}`);
      },
    );
  }

  /** Clones the mirror if there is none yet (the first start with a big repository takes a while). */
  init(): Promise<void> {
    this.ready ??= this.prepareMirror().catch((error) => {
      this.ready = null; // the next request tries again
      throw error;
    });
    return this.ready;
  }

  async resolve(tag: string): Promise<ResolveResult | null> {
    const kind = classifyTag(tag);
    if (!kind) return null;
    await this.init();
    if (kind.kind === "commit") {
      if (!(await this.hasCommit(kind.commit))) {
        // Pushed since the last fetch? Fetch once; if the remote can't be reached we can't say it's unknown.
        await this.fetch();
        if (!(await this.hasCommit(kind.commit))) return null;
      }
      return { revision: kind.commit, source: this.description, ttlSeconds: 0 };
    }
    try {
      await this.fetch();
    } catch (error) {
      // Keep serving what the mirror has: images stay pullable while the git host is down.
      this.options.log.warn("git-fetch-failed", {
        repo: this.description,
        error: (error as Error).message,
        serving: "the mirror's last fetched state",
      });
    }
    const refs =
      kind.kind === "latest"
        ? [this.options.branch ? `refs/heads/${this.options.branch}` : "HEAD"]
        : [`refs/heads/${kind.ref}`, `refs/tags/${kind.ref}`];
    for (const ref of refs) {
      const commit = await this.commitOf(ref);
      if (commit) return { revision: commit, source: this.description, ttlSeconds: this.options.ttlSeconds };
    }
    return null;
  }

  async nixSource(revision: string): Promise<NixSource> {
    if (!COMMIT.test(revision))
      throw new RevisionUnavailableError(`${revision} is not a commit of ${this.description}`);
    await this.init();
    const path = await this.exports.run(revision, () => this.exportTree(revision));
    return { kind: "path", path };
  }

  // ---- the mirror ------------------------------------------------------------------------------

  private async prepareMirror(): Promise<void> {
    const { log } = this.options;
    const bare = await this.git(["rev-parse", "--is-bare-repository"]).catch(() => "");
    if (bare.trim() !== "true") {
      await rm(this.mirror, { recursive: true, force: true });
      await mkdir(join(this.mirror, ".."), { recursive: true });
      const partial = await mkdtemp(`${this.mirror}.clone-`);
      const started = performance.now();
      log.info("git-clone", { repo: this.description, into: this.mirror });
      try {
        await this.git(["clone", "--bare", "--quiet", "--", this.options.url, partial], {
          outside: true,
          timeoutMs: this.fetchTimeoutMs * 10,
        });
        await rename(partial, this.mirror);
      } catch (error) {
        await rm(partial, { recursive: true, force: true });
        throw new Error(`cannot clone NIXERY_PKGS_REPO=${this.description}: ${(error as Error).message}`, {
          cause: error,
        });
      }
      log.info("git-cloned", { repo: this.description, ms: Math.round(performance.now() - started) });
    }
    if (!this.options.branch) await this.followRemoteHead();
    await mkdir(this.exportsDir, { recursive: true });
  }

  /** Points the mirror's HEAD at the remote's default branch (it may have changed since the clone). */
  private async followRemoteHead(): Promise<void> {
    try {
      const out = await this.git(["ls-remote", "--symref", "origin", "HEAD"]);
      const match = /^ref: (refs\/heads\/\S+)\tHEAD$/m.exec(out);
      if (match) await this.git(["symbolic-ref", "HEAD", match[1]]);
    } catch (error) {
      this.options.log.warn("git-remote-head-unknown", { repo: this.description, error: (error as Error).message });
    }
  }

  /**
   * Brings the mirror up to date: one fetch at a time, callers that arrive during a fetch share the next one,
   * and no new fetch within minFetchIntervalMs of the last one (5 s, or half the ttl when that is shorter).
   */
  private fetch(): Promise<void> {
    if (!this.fetching && Date.now() - this.lastFetchAt < this.minFetchIntervalMs) return Promise.resolve();
    if (!this.fetching) {
      this.fetching = this.fetchNow().finally(() => {
        this.fetching = null;
      });
      return this.fetching;
    }
    this.queuedFetch ??= this.fetching
      .catch(() => undefined)
      .then(() => {
        this.queuedFetch = null;
        return this.fetch();
      });
    return this.queuedFetch;
  }

  private async fetchNow(): Promise<void> {
    const started = performance.now();
    const startedAt = Date.now();
    await this.git(
      ["fetch", "--prune", "--no-tags", "--quiet", "origin", "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
      { timeoutMs: this.fetchTimeoutMs },
    );
    this.lastFetchAt = startedAt;
    this.options.log.info("git-fetch", { repo: this.description, ms: Math.round(performance.now() - started) });
  }

  private async hasCommit(commit: string): Promise<boolean> {
    try {
      await this.git(["cat-file", "-e", `${commit}^{commit}`]);
      return true;
    } catch {
      return false;
    }
  }

  private async commitOf(ref: string): Promise<string | null> {
    try {
      const out = (await this.git(["rev-parse", "--verify", "--quiet", "--end-of-options", `${ref}^{commit}`])).trim();
      return COMMIT.test(out) ? out : null;
    } catch {
      return null;
    }
  }

  // ---- exports into the Nix store --------------------------------------------------------------

  /** The commit's tree as a store path (…-source), exported once per commit and remembered on disk. */
  private async exportTree(commit: string): Promise<string> {
    const record = join(this.exportsDir, commit);
    const known = await readFile(record, "utf8").catch(() => "");
    if (known && (await isValidStorePath(known.trim()))) return known.trim();
    if (!(await this.hasCommit(commit))) {
      throw new RevisionUnavailableError(`commit ${commit} is not in ${this.description} any more; pull the tag again`);
    }
    const started = performance.now();
    const work = await mkdtemp(join(this.exportsDir, "tmp-"));
    try {
      const tree = join(work, "source");
      await mkdir(tree);
      await runPipeline(
        ["git", ["-C", this.mirror, "archive", "--format=tar", "--end-of-options", commit]],
        ["tar", ["-x", "-f", "-", "--no-same-owner", "-C", tree]],
        { label: "git archive | tar", timeoutMs: this.exportTimeoutMs, env: GIT_ENV },
      );
      const added = await runCommand("nix-store", ["--add", tree], {
        label: "nix-store --add",
        timeoutMs: this.nixTimeoutMs,
        setting: "NIX_TIMEOUT",
        maxStdoutBytes: 1024 * 1024,
      });
      if (added.code !== 0)
        throw new Error(`nix-store --add of commit ${commit} failed: ${added.stderr.trim().slice(-1000)}`);
      const storePath = added.stdout.trim();
      if (!storePath.startsWith("/nix/store/")) throw new Error(`nix-store --add printed no store path for ${commit}`);
      await writeFile(record, `${storePath}\n`);
      this.options.log.info("git-export", {
        repo: this.description,
        commit,
        storePath,
        ms: Math.round(performance.now() - started),
      });
      return storePath;
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }

  /** Runs git, in the mirror unless `outside`. */
  private async git(args: string[], options: { outside?: boolean; timeoutMs?: number } = {}): Promise<string> {
    const cwdArgs = options.outside ? [] : ["-C", this.mirror];
    let result: CommandResult;
    try {
      result = await runCommand("git", [...cwdArgs, ...args], {
        label: `git ${args[0]}`,
        timeoutMs: options.timeoutMs ?? QUICK_COMMAND_TIMEOUT_MS,
        env: GIT_ENV,
      });
    } catch (error) {
      if (error instanceof CommandTimeoutError) throw new GitError(error.message);
      throw new GitError(`git ${args[0]} failed: ${(error as Error).message}`);
    }
    if (result.code !== 0) {
      const reason = result.stderr
        .split("\n")
        .map((line) => line.trim())
        .filter(Boolean)
        .join(" ")
        .slice(0, 600);
      throw new GitError(`git ${args[0]} failed: ${redactUrl(reason || `exit code ${result.code}`)}`);
    }
    return result.stdout;
  }
}

/**
 * Git never prompts (there is nobody to answer), speaks English (its messages are logged as they are), and works
 * on the mirror whatever GIT_DIR and friends the builder was started with.
 */
const GIT_ENV: NodeJS.ProcessEnv = (() => {
  const env: NodeJS.ProcessEnv = { ...process.env, GIT_TERMINAL_PROMPT: "0", GCM_INTERACTIVE: "never", LC_ALL: "C" };
  for (const name of ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_NAMESPACE"])
    delete env[name];
  return env;
})();

async function isValidStorePath(path: string): Promise<boolean> {
  if (!path.startsWith("/nix/store/")) return false;
  const { code } = await runCommand("nix-store", ["--check-validity", path], {
    label: "nix-store --check-validity",
    timeoutMs: QUICK_COMMAND_TIMEOUT_MS,
  });
  return code === 0;
}
