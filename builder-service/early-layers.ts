// Layers written while Nix still builds: a store path's layer, when the path has a layer of its own, is the same
// whichever image it ends up in, so it can be tarred and compressed as soon as Nix has made the path, on the cores
// Nix leaves idle, instead of after the whole build. Measured on the curl/git/jq cold build (docs/benchmark.md).
//
// Which paths: only those that will be in the image, as far as the builder can tell before the build ends.
// - A path Nix built (a derivation's output) usually is a package of the image; a path Nix fetched is in the image
//   only if the plan builds nothing (else it may be a build's compiler), and so it counts only then.
// - Everything such a path refers to is in the image exactly when it is (a closure), even paths valid before.
// - Only while the image's known paths fit the layer budget: past it, paths are grouped (layering.ts) and a
//   layer of one path would not be used. The image's own derivation (its metadata) is never in it.
// A path layered here that the image turns out not to have costs its compression and a blob that garbage
// collection removes; it never changes the image, whose layers come from the closure once the build is done.
import type { NixFinished } from "./nix-log.ts";
import type { BuildPlan } from "./nix-progress.ts";

/** At most one Nix command a second asks after finished paths. */
const CHECK_INTERVAL_MS = 1000;

export interface EarlyLayersOptions {
  /** Store layers the image may have (the budget minus the root filesystem's). */
  storeLayers: number;
  /** The image's own derivation: its output is the metadata, not a path of the image. */
  imageDerivation: string;
  nix: { validClosure(finished: readonly NixFinished[]): Promise<string[]> };
  /** Writes the layer of one store path (or finds it in the bucket); called for one path at a time. */
  write(path: string): Promise<void>;
  /** Why early layering stopped, for the build's log. */
  onGiveUp?(reason: string): void;
}

export class EarlyLayers {
  private plan: BuildPlan | null = null;
  private readonly queued: NixFinished[] = [];
  private readonly known = new Set<string>();
  private readonly toWrite: string[] = [];
  private checking: Promise<void> | null = null;
  private writing: Promise<void> | null = null;
  private stopped = false;
  /** Paths whose layer was written (or found) here. */
  readonly written = new Set<string>();

  constructor(private readonly options: EarlyLayersOptions) {}

  /** Nix's plan, as it is read from the log (it is complete before any build or download ends). */
  setPlan(plan: BuildPlan): void {
    this.plan = plan;
  }

  /** A build or download has ended. */
  finished(finished: NixFinished): void {
    if (this.stopped) return;
    if (finished.kind === "built" && finished.derivation === this.options.imageDerivation) return;
    if (finished.kind === "fetched" && !this.buildsNothing()) return;
    this.queued.push(finished);
    this.checking ??= this.check().finally(() => (this.checking = null));
  }

  /** Nix is done: no more layers are started here (the layer phase writes the rest, on every core). */
  stop(): void {
    this.stopped = true;
    this.queued.length = 0;
    this.toWrite.length = 0;
  }

  private buildsNothing(): boolean {
    return this.plan !== null && this.plan.build.every((derivation) => derivation === this.options.imageDerivation);
  }

  /**
   * Takes the queued paths, checks them with Nix, and adds their closures to the layers to write; then waits a
   * little before the next batch, so that a build of many small derivations costs a Nix command a second, not one
   * per derivation.
   */
  private async check(): Promise<void> {
    try {
      while (this.queued.length > 0 && !this.stopped) {
        const batch = this.queued.splice(0);
        const closure = await this.options.nix.validClosure(batch);
        if (this.stopped) return;
        const fresh = closure.filter((path) => !this.known.has(path)).sort();
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
      this.giveUp(`Nix could not list the built paths: ${error instanceof Error ? error.message : String(error)}`);
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
    this.stopped = true;
    this.toWrite.length = 0;
    this.options.onGiveUp?.(reason);
  }
}
