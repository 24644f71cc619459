// Layers written while Nix still downloads: a store path's layer, when the path has a layer of its own, is the same
// whichever image it ends up in, so it can be tarred and compressed as soon as Nix has fetched the path, while Nix
// waits on the network for the next ones, instead of after the whole build.
//
// Only for images whose plan (the dry run) builds nothing but the image's own derivation (its metadata): Nix then
// mostly waits on downloads and leaves the cores idle. Measured, where Nix builds packages it already keeps the
// cores busy, and writing layers beside it made the cold build slower (docs/benchmark.md); such builds take none of
// this (image-builder.ts decides before Nix starts).
//
// Which paths: only those that will be in the image, as far as the builder can tell before the build ends.
// - A path Nix fetched, and everything it refers to (a closure, even paths valid before): with nothing built but
//   the image's derivation, every fetched path is in the image but the ones only that derivation's builder (the
//   package set's busybox) needs, and that one is left out.
// - Only while the image's known paths fit the layer budget: past it, paths are grouped (layering.ts) and a
//   layer of one path would not be used.
// A path layered here that the image turns out not to have costs its compression and a blob that garbage
// collection removes; it never changes the image, whose layers come from the closure once the build is done.
import type { NixFinished } from "./nix-log.ts";
import type { BuildPlan } from "./nix-progress.ts";

/** At most one Nix command a second asks after fetched paths. */
const CHECK_INTERVAL_MS = 1000;

export interface EarlyLayersOptions {
  /** Store layers the image may have (the budget minus the root filesystem's). */
  storeLayers: number;
  /** The image's own derivation: the only one the plan may build. */
  imageDerivation: string;
  /** Store paths fetched for the image's derivation alone (its builder), never the image's. */
  leaveOut: readonly string[];
  nix: { validClosure(fetched: readonly string[]): Promise<string[]> };
  /** Writes the layer of one store path (or finds it in the bucket); called for one path at a time. */
  write(path: string): Promise<void>;
  /** Why early layering stopped, for the build's log. */
  onGiveUp?(reason: string): void;
}

/** True when Nix's plan builds nothing but the image's own derivation and downloads something. */
export function onlyDownloads(plan: BuildPlan, imageDerivation: string): boolean {
  return plan.fetch.paths > 0 && plan.build.every((derivation) => derivation === imageDerivation);
}

export class EarlyLayers {
  /** Fetched paths not yet checked. */
  private readonly queued: string[] = [];
  private readonly known = new Set<string>();
  private readonly toWrite: string[] = [];
  private checking: Promise<void> | null = null;
  private writing: Promise<void> | null = null;
  private stopped = false;
  /** Paths whose layer was written (or found) here. */
  readonly written = new Set<string>();

  constructor(private readonly options: EarlyLayersOptions) {}

  /**
   * Nix's plan as nix-build announces it (complete before any download ends). Binary caches may have changed since
   * the dry run: if Nix now builds more than the image's derivation, nothing more is written here.
   */
  setPlan(plan: BuildPlan): void {
    const builds = plan.build.filter((derivation) => derivation !== this.options.imageDerivation);
    if (builds.length > 0) this.giveUp(`Nix builds ${builds.length} derivation(s) the dry run meant to download`);
  }

  /** A build or download has ended. */
  finished(finished: NixFinished): void {
    if (this.stopped || finished.kind !== "fetched" || this.options.leaveOut.includes(finished.path)) return;
    this.queued.push(finished.path);
    this.checking ??= this.check().finally(() => (this.checking = null));
  }

  /** Nix is done: no more layers are started here (the layer phase writes the rest, on every core). */
  stop(): void {
    this.stopped = true;
    this.queued.length = 0;
    this.toWrite.length = 0;
  }

  /**
   * Takes the queued paths, checks them with Nix, and adds their closures to the layers to write; then waits a
   * little before the next batch, so that a closure of many small paths costs a Nix command a second, not one per
   * path.
   */
  private async check(): Promise<void> {
    try {
      while (this.queued.length > 0 && !this.stopped) {
        const batch = this.queued.splice(0);
        const closure = await this.options.nix.validClosure(batch);
        if (this.stopped) return;
        const fresh = closure.filter((path) => !this.known.has(path) && !this.options.leaveOut.includes(path)).sort();
        for (const path of fresh) this.known.add(path);
        if (this.known.size > this.options.storeLayers) {
          this.giveUp(`the image has more store paths than layers (${this.known.size} so far)`);
          return;
        }
        this.toWrite.push(...fresh);
        this.writing ??= this.drain().finally(() => (this.writing = null));
        await new Promise((resolve) => setTimeout(resolve, CHECK_INTERVAL_MS));
      }
    } catch (error) {
      this.giveUp(`Nix could not list the fetched paths: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  private async drain(): Promise<void> {
    let path: string | undefined;
    while (!this.stopped && (path = this.toWrite.shift()) !== undefined) {
      try {
        await this.options.write(path);
        this.written.add(path);
      } catch (error) {
        // The layer phase writes it again, and reports what fails then.
        this.giveUp(`writing the layer of ${path} failed: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
  }

  private giveUp(reason: string): void {
    if (this.stopped) return;
    this.stop();
    this.options.onGiveUp?.(reason);
  }
}
