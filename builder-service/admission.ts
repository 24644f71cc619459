// Admission: what this builder agrees to build, and how many builds it runs at once. Every refusal is a registry
// error naming the setting behind it, made as early as that setting can be judged:
//
//   POST /jobs       names the attribute policy refuses      403 DENIED        NIXERY_DENY_ATTRIBUTES, NIXERY_ALLOW_ATTRIBUTES
//                    no room to run or queue the job         503 BUILDER_BUSY  BUILDER_MAX_BUILDS, BUILDER_MAX_QUEUE
//                                                            (Retry-After)
//   evaluating       the attributes Nix resolved the names to, against the same policy
//                    Nix's plan (a dry run: nothing fetched or built yet):
//                      derivations to build while Nix may only download                  403 DENIED   NIX_MAX_JOBS=0
//                      downloads that alone unpack to more than the closure limit         403 DENIED   BUILDER_MAX_CLOSURE_BYTES
//   after nix-build  the closure as built, past the limit (before a layer is written)     403 DENIED   BUILDER_MAX_CLOSURE_BYTES
//
// Nothing refused on POST /jobs becomes a job; a refusal later ends the job as failed with that error.
import { attributeRefusals, type AttributePolicy, type AttributeRefusal } from "../common/attribute-policy.ts";
import type { JobError } from "../common/bucket-layout.ts";
import type { LayerCompression } from "../common/image-name.ts";
import { zstdAvailable } from "./block-compression.ts";
import { storePathName, type StorePathNode } from "./closure.ts";
import type { BuildPlan } from "./nix-progress.ts";

export const DEFAULT_MAX_QUEUE = 32;
export const DEFAULT_MAX_CLOSURE_BYTES = 8 * 1024 ** 3;
/** Until a build has finished here, how long a busy builder asks callers to wait. */
const FIRST_RETRY_AFTER_SECONDS = 30;
const MAX_RETRY_AFTER_SECONDS = 600;

export interface AdmissionConfig {
  /** Build jobs run at once; more wait in the queue. */
  maxBuilds: number;
  /** Jobs waiting for a place to run; past it new jobs are refused. */
  maxQueue: number;
  /** Largest closure (sum of its store paths' NAR sizes) an image may have; 0 for no limit. */
  maxClosureBytes: number;
  attributes: AttributePolicy;
}

/** A refusal: the registry error the caller (POST /jobs) or the job's record gets. */
export class AdmissionError extends Error {
  constructor(
    readonly refusal: JobError,
    /** For a refusal that may pass later (a busy builder): when to ask again. */
    readonly retryAfterSeconds?: number,
  ) {
    super(refusal.message);
  }
}

/**
 * Places for build jobs: `limit` run at once, the rest wait their turn in arrival order. The caller asks `hasRoom`
 * and then `acquire`s in the same synchronous step, so two jobs can't both take the last place. (A concurrency
 * limiter such as p-limit queues without bound; this one also answers "no room" at the queue's end, lets a job
 * admitted before a restart queue past it, and times the builds for Retry-After.)
 */
export class BuildSlots {
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  /** Mean time a job held its place, exponentially weighted: the basis of Retry-After. */
  private meanHoldMs: number | null = null;

  constructor(
    readonly limit: number,
    readonly queueLimit: number,
  ) {}

  get running(): number {
    return this.active;
  }

  get queued(): number {
    return this.waiting.length;
  }

  /** Whether a new job can run now or wait in the queue. */
  get hasRoom(): boolean {
    return this.active < this.limit || this.waiting.length < this.queueLimit;
  }

  /**
   * Takes a place, queueing if none is free (also past queueLimit: jobs already admitted before a restart are not
   * refused again); resolves when the job may run, with the function that gives the place back.
   */
  acquire(): Promise<() => void> {
    return new Promise((resolve) => {
      const take = () => {
        const since = Date.now();
        let released = false;
        resolve(() => {
          if (released) return;
          released = true;
          const held = Date.now() - since;
          this.meanHoldMs = this.meanHoldMs === null ? held : 0.7 * this.meanHoldMs + 0.3 * held;
          const next = this.waiting.shift();
          if (next) next();
          else this.active--;
        });
      };
      if (this.active < this.limit) {
        this.active++;
        take();
      } else {
        this.waiting.push(take);
      }
    });
  }

  /** About when a place in the queue frees up: one build's time, spread over the builds that run at once. */
  get retryAfterSeconds(): number {
    if (this.meanHoldMs === null) return FIRST_RETRY_AFTER_SECONDS;
    return Math.min(MAX_RETRY_AFTER_SECONDS, Math.max(1, Math.ceil(this.meanHoldMs / 1000 / this.limit)));
  }
}

const plural = (count: number, noun: string): string => `${count} ${noun}${count === 1 ? "" : "s"}`;

/** Sizes as people read them, with the exact figure: "8.0 GiB (8589934592 bytes)". */
export function describeBytes(bytes: number): string {
  const units: [string, number][] = [
    ["GiB", 1024 ** 3],
    ["MiB", 1024 ** 2],
    ["KiB", 1024],
  ];
  const [unit, size] = units.find(([, size]) => bytes >= size) ?? ["bytes", 1];
  return unit === "bytes" ? `${bytes} bytes` : `${(bytes / size).toFixed(1)} ${unit} (${bytes} bytes)`;
}

export class BuildAdmission {
  readonly slots: BuildSlots;

  constructor(
    readonly config: AdmissionConfig,
    /** NIX_MAX_JOBS=0: Nix downloads from binary caches and builds nothing. */
    readonly substituteOnly: boolean,
  ) {
    this.slots = new BuildSlots(config.maxBuilds, config.maxQueue);
  }

  /** Before a job exists: the names as asked for. */
  checkNames(packages: readonly string[]): void {
    this.refuseAttributes(attributeRefusals(this.config.attributes, packages));
  }

  /** zstd layers need zstd in node:zlib (Node.js 22.15 and later): refused before a job exists on an older Node. */
  checkCompression(compression: LayerCompression): void {
    if (compression !== "zstd" || zstdAvailable()) return;
    throw new AdmissionError({
      status: 500,
      code: "UNSUPPORTED",
      message:
        `this builder cannot write zstd layers: its Node.js ${process.version} has no zstd (Node.js 22.15 and later ` +
        "have it); pull the image without the zstd component for gzip layers, or ask the registry's operator to run " +
        "the builder on a newer Node.js",
      detail: { compression, node: process.version },
    });
  }

  /** The attribute paths Nix found for the names (requested name -> path): the same policy, on what is built. */
  checkResolved(resolved: Readonly<Record<string, string>>): void {
    this.refuseAttributes(
      attributeRefusals(this.config.attributes, Object.values(resolved)).map((refusal) => ({
        ...refusal,
        path: Object.keys(resolved).find((name) => resolved[name] === refusal.path) ?? refusal.path,
        resolved: refusal.path,
      })),
    );
  }

  /** Before a new job takes a place: a busy builder says so, with when to ask again. */
  checkRoom(): void {
    if (this.slots.hasRoom) return;
    const { maxBuilds, maxQueue } = this.config;
    const retryAfterSeconds = this.slots.retryAfterSeconds;
    throw new AdmissionError(
      {
        status: 503,
        code: "BUILDER_BUSY",
        message:
          `the builder is busy: it runs ${plural(this.slots.running, "build")} and has ${this.slots.queued} waiting, its limits ` +
          `(BUILDER_MAX_BUILDS=${maxBuilds}, BUILDER_MAX_QUEUE=${maxQueue}); retry in ${retryAfterSeconds} seconds`,
        detail: { maxBuilds, maxQueue, retryAfterSeconds },
      },
      retryAfterSeconds,
    );
  }

  /** Whether a setting is judged on Nix's plan (a dry run, one more Nix command per build). */
  get judgesPlans(): boolean {
    return this.substituteOnly || this.config.maxClosureBytes > 0;
  }

  /**
   * Nix's plan for the image's derivation, before it fetches or builds anything: with NIX_MAX_JOBS=0 only the
   * image's own metadata may be built (a few files written by busybox; Nix can't download what was never built
   * anywhere), and downloads that alone pass the closure limit are refused before they start.
   */
  checkPlan(plan: BuildPlan, imageDerivation: string): void {
    const toBuild = this.forbiddenBuilds(plan, imageDerivation);
    if (toBuild.length > 0) {
      const names = toBuild.map((drv) => storePathName(drv).replace(/\.drv$/, ""));
      const shown = names.length > 10 ? [...names.slice(0, 10), `and ${names.length - 10} more`] : names;
      throw new AdmissionError({
        status: 403,
        code: "DENIED",
        message:
          `this image needs ${names.length} derivation${names.length > 1 ? "s" : ""} built that no binary cache has ` +
          `(${shown.join(", ")}), and this builder only downloads from binary caches: it builds nothing itself (NIX_MAX_JOBS=0)`,
        detail: { mustBuild: names },
      });
    }
    const limit = this.config.maxClosureBytes;
    if (limit > 0 && plan.fetch.unpackedBytes > limit) {
      throw new AdmissionError({
        status: 403,
        code: "DENIED",
        message:
          `this image's closure is larger than this builder's limit of ${describeBytes(limit)} (BUILDER_MAX_CLOSURE_BYTES): ` +
          `what Nix would download for it (${plural(plan.fetch.paths, "store path")}) unpacks to ${describeBytes(plan.fetch.unpackedBytes)} on its own; nothing was downloaded`,
        detail: { limitBytes: limit, closureBytesAtLeast: plan.fetch.unpackedBytes },
      });
    }
  }

  /** The derivations the plan would build that this builder may not build (all but the image's own with NIX_MAX_JOBS=0). */
  forbiddenBuilds(plan: BuildPlan, imageDerivation: string): string[] {
    return this.substituteOnly ? plan.build.filter((drv) => drv !== imageDerivation) : [];
  }

  /** The closure as built, before any layer is written. */
  checkClosure(graph: readonly StorePathNode[]): void {
    const limit = this.config.maxClosureBytes;
    const size = graph.reduce((sum, node) => sum + node.narSize, 0);
    if (limit > 0 && size > limit) {
      throw new AdmissionError({
        status: 403,
        code: "DENIED",
        message:
          `this image's closure is ${describeBytes(size)} in ${graph.length} store paths, larger than this builder's limit ` +
          `of ${describeBytes(limit)} (BUILDER_MAX_CLOSURE_BYTES)`,
        detail: { limitBytes: limit, closureBytes: size },
      });
    }
  }

  private refuseAttributes(refusals: (AttributeRefusal & { resolved?: string })[]): void {
    if (refusals.length === 0) return;
    const allow = this.config.attributes.allow ?? [];
    const reasons = refusals.map((refusal) => {
      const as = refusal.resolved && refusal.resolved !== refusal.path ? ` (the attribute ${refusal.resolved})` : "";
      return refusal.list === "deny"
        ? `${refusal.path}${as} reaches ${refusal.entry}, which the builder's attribute policy denies (NIXERY_DENY_ATTRIBUTES)`
        : `${refusal.path}${as} is outside the builder's attribute policy, which builds only ${allow.join(", ")} (NIXERY_ALLOW_ATTRIBUTES)`;
    });
    throw new AdmissionError({
      status: 403,
      code: "DENIED",
      message: `not built here: ${reasons.join("; ")}`,
      detail: {
        refused: refusals.map((refusal) => ({
          name: refusal.path,
          ...(refusal.list === "deny" ? { denied: refusal.entry } : { allowList: allow }),
        })),
      },
    });
  }
}
