// Progress of a nix-build, read from the lines it prints (Nix 2.8 to 2.2x print them alike):
//   these 3 derivations will be built:            /  this derivation will be built:
//   these 12 paths will be fetched (41.20 MiB download, 180.33 MiB unpacked):
//   building '/nix/store/...-hello-2.12.drv'...
//   copying path '/nix/store/...-glibc-2.40' from 'https://cache.nixos.org'...
// A derivation counts as done once the next one starts (Nix builds one at a time unless max-jobs says otherwise,
// so this undercounts by the ones still running); everything is done when nix-build exits.
import type { Count, JobProgress } from "../common/bucket-layout.ts";

const UNITS: Record<string, number> = { KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, TiB: 1024 ** 4 };
const BUILD_LINE = /^(?:these (\d+) derivations|this derivation) will be built:$/;
const FETCH_LINE =
  /^(?:these (\d+) paths|this path) will be fetched \(([\d.]+) (KiB|MiB|GiB|TiB) download(?:, ([\d.]+) (KiB|MiB|GiB|TiB) unpacked)?/;

const bytes = (amount: string, unit: string): number => Math.round(Number(amount) * UNITS[unit]);

export class NixBuildProgress {
  private readonly derivations: Count = { done: 0, total: 0 };
  private readonly fetched: Count & { downloadBytes: number } = { done: 0, total: 0, downloadBytes: 0 };
  private started = 0;

  /** Takes one line of Nix's log; true when the progress changed. */
  line(text: string): boolean {
    const line = text.trim();
    let match = BUILD_LINE.exec(line);
    if (match) {
      this.derivations.total += match[1] ? Number(match[1]) : 1;
      return true;
    }
    match = FETCH_LINE.exec(line);
    if (match) {
      this.fetched.total += match[1] ? Number(match[1]) : 1;
      this.fetched.downloadBytes += bytes(match[2], match[3]);
      return true;
    }
    if (/^building '\/nix\/store\/[^']+\.drv'/.test(line)) {
      this.started++;
      this.derivations.done = Math.min(this.derivations.total, Math.max(0, this.started - 1));
      return true;
    }
    if (/^copying path '\/nix\/store\/[^']+' from '/.test(line)) {
      this.fetched.done = Math.min(this.fetched.total || Infinity, this.fetched.done + 1);
      return true;
    }
    return false;
  }

  /** Everything Nix announced is done (nix-build succeeded). */
  finish(): void {
    this.derivations.done = this.derivations.total;
    this.fetched.done = this.fetched.total;
  }

  get progress(): Pick<JobProgress, "derivations" | "fetched"> {
    return { derivations: { ...this.derivations }, fetched: { ...this.fetched } };
  }
}

/** What nix-build is about to do, as it announces it before doing any of it (and as a dry run prints it). */
export interface BuildPlan {
  /** The derivations it will build (.drv store paths). */
  build: string[];
  /** The paths it will download from binary caches, with their sizes: compressed, and unpacked into the store. */
  fetch: { paths: number; downloadBytes: number; unpackedBytes: number };
}

/** Reads a BuildPlan from Nix's log, line by line (a plan of a cold nixpkgs closure lists thousands of paths). */
export class NixBuildPlanReader {
  readonly plan: BuildPlan = { build: [], fetch: { paths: 0, downloadBytes: 0, unpackedBytes: 0 } };
  private list: "build" | "fetch" | null = null;

  /** Takes one line; true when it added a derivation to build. */
  line(text: string): boolean {
    const line = text.trim();
    if (BUILD_LINE.test(line)) {
      this.list = "build";
      return false;
    }
    const fetch = FETCH_LINE.exec(line);
    if (fetch) {
      this.list = "fetch";
      this.plan.fetch.paths += fetch[1] ? Number(fetch[1]) : 1;
      this.plan.fetch.downloadBytes += bytes(fetch[2], fetch[3]);
      if (fetch[4]) this.plan.fetch.unpackedBytes += bytes(fetch[4], fetch[5]);
      return false;
    }
    // The list under each heading: one indented store path a line.
    if (this.list && /^\s/.test(text) && /^\/nix\/store\/\S+$/.test(line)) {
      if (this.list !== "build") return false;
      this.plan.build.push(line);
      return true;
    }
    this.list = null;
    return false;
  }
}
