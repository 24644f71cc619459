// The builder's disk: its Nix store kept under BUILDER_NIX_STORE_MAX_BYTES. After each build the store's size is
// read (the NAR sizes of its valid paths, from Nix's database: `nix path-info --all`, about 2 s for 10,000 paths);
// over the limit, `nix-store --gc --max-freed` frees paths no GC root holds until the store is at LOW_WATER of the
// limit, so that it is not collected again after every build.
//
// What stays: every path a GC root holds. A running build holds its image's derivation and its output (hence the
// whole closure) through indirect roots until the image is published (nix-runner.ts: instantiateImage,
// buildClosure); Nix itself holds what a running nix-build uses (temporary roots). Everything else is collected:
// on a machine whose store serves other things too, give them roots, or give the builder a store of its own.
//
// The spool (BUILDER_DATA_DIR/spool) holds a layer only until its upload ends, and is emptied at start; a git
// source's mirror (BUILDER_DATA_DIR/git) is not counted.
import type { Logger } from "./log.ts";
import { runCommand } from "./time-limited-command.ts";

/** Collected down to this share of the limit. */
const LOW_WATER = 0.8;
const NIX_COMMAND = ["--extra-experimental-features", "nix-command"];

export interface NixStoreLimitOptions {
  maxBytes: number;
  env: NodeJS.ProcessEnv;
  log: Logger;
  timeoutSeconds: number;
}

/** The NAR sizes of the store's valid paths, summed (Nix 2.8 prints a list, later ones an object by path). */
export function storeBytes(pathInfoJson: string): number {
  const parsed = JSON.parse(pathInfoJson) as unknown;
  const infos = Array.isArray(parsed) ? parsed : Object.values(parsed as Record<string, unknown>);
  let total = 0;
  for (const info of infos) {
    const size = (info as { narSize?: unknown } | null)?.narSize;
    if (typeof size === "number") total += size;
  }
  return total;
}

/** Keeps the store's collection out of a build's unrooted moments (between a source's export and its GC root). */
export interface StoreHold {
  hold<T>(work: () => Promise<T>): Promise<T>;
}

export class NixStoreLimit implements StoreHold {
  private running: Promise<void> | null = null;
  private again = false;
  /** Builds inside hold() now, and who waits for them to leave. */
  private holders = 0;
  private unheld: (() => void)[] = [];
  /** Set while `nix-store --gc` runs (or waits for holders to leave): new holders wait for it. */
  private collecting: Promise<void> | null = null;

  constructor(private readonly options: NixStoreLimitOptions) {}

  /**
   * Runs work while no collection deletes anything: for what a build does before its paths are rooted (a package
   * set exported into the store, then evaluated with a root on its derivation).
   */
  async hold<T>(work: () => Promise<T>): Promise<T> {
    while (this.collecting) await this.collecting;
    this.holders++;
    try {
      return await work();
    } finally {
      this.holders--;
      if (this.holders === 0) this.unheld.splice(0).forEach((resume) => resume());
    }
  }

  /** After a build: collects if the store is over the limit. One collection at a time; a call meanwhile runs one more. */
  check(): void {
    if (this.options.maxBytes === 0) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.enforce()
      .catch((error: unknown) => this.options.log.error("nix-store-gc-failed", { error: String(error) }))
      .finally(() => {
        this.running = null;
        if (this.again) {
          this.again = false;
          this.check();
        }
      });
  }

  /** Settles when no collection is running (for tests and shutdown). */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  async size(): Promise<number> {
    const result = await runCommand("nix", [...NIX_COMMAND, "path-info", "--all", "--json"], {
      timeoutMs: this.options.timeoutSeconds * 1000,
      env: this.options.env,
      label: "nix path-info --all",
      maxStdoutBytes: 512 * 1024 * 1024,
    });
    if (result.code !== 0) throw new Error(`nix path-info --all failed: ${result.stderr.trim()}`);
    return storeBytes(result.stdout);
  }

  private async enforce(): Promise<void> {
    const { maxBytes, log } = this.options;
    const before = await this.size();
    if (before <= maxBytes) {
      log.info("nix-store-checked", { limit: maxBytes, bytes: before });
      return;
    }
    const started = performance.now();
    const maxFreed = before - Math.floor(maxBytes * LOW_WATER);
    let finished!: () => void;
    this.collecting = new Promise<void>((resolve) => (finished = resolve));
    try {
      while (this.holders > 0) await new Promise<void>((resume) => this.unheld.push(resume));
      const result = await runCommand("nix-store", ["--gc", "--max-freed", String(maxFreed)], {
        timeoutMs: this.options.timeoutSeconds * 1000,
        env: this.options.env,
        label: "nix-store --gc",
      });
      if (result.code !== 0) throw new Error(`nix-store --gc failed: ${result.stderr.trim()}`);
    } finally {
      this.collecting = null;
      finished();
    }
    const after = await this.size();
    const entry = { limit: maxBytes, before, after, ms: Math.round(performance.now() - started) };
    // Still over: what is left is rooted (running builds, or roots outside the builder).
    if (after > maxBytes) log.warn("nix-store-over-limit", { ...entry, reason: "the rest is held by GC roots" });
    else log.info("nix-store-gc", entry);
  }
}
