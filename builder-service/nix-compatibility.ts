// Whether the builder's Nix can evaluate what `latest` serves (nixpkgs' lib/minver.nix), known before anyone
// pulls: checked at startup, and again each time `latest` resolves to a new revision (a channel or branch that
// moved). The answer is what /ready, `builder-service --check` and `npm start` report. Builds check their own
// revision too (ImageBuilder), so a pinned old commit still builds on an old Nix, and a new one fails clearly.
import type { Logger } from "./log.ts";
import { NixTooOldError, type NixRunner } from "./nix-runner.ts";
import type { PackageSource } from "./sources/package-source.ts";

export class LatestCompatibility {
  /** NixTooOldError's message for the last revision of `latest` checked, or null. */
  problem: string | null = null;
  private checkedRevision: string | null = null;

  constructor(
    private readonly source: PackageSource,
    private readonly nix: NixRunner,
    private readonly log: Logger,
  ) {}

  /** Resolves `latest` and checks it; returns the problem, or null. Throws when the source cannot be read. */
  async check(): Promise<string | null> {
    const resolved = await this.source.resolve("latest");
    if (resolved) await this.checkRevision(resolved.revision);
    return this.problem;
  }

  /** The source, with every new revision of `latest` checked in the background as it is resolved. */
  watch(source: PackageSource): PackageSource {
    return {
      description: source.description,
      resolve: async (tag) => {
        const resolved = await source.resolve(tag);
        if (resolved && tag === "latest" && resolved.revision !== this.checkedRevision) {
          this.checkRevision(resolved.revision).catch((error: unknown) =>
            this.log.warn("nix-requirement-unknown", { revision: resolved.revision, error: (error as Error).message }),
          );
        }
        return resolved;
      },
      nixSource: (revision) => source.nixSource(revision),
    };
  }

  private async checkRevision(revision: string): Promise<void> {
    try {
      await this.nix.ensureNewEnough(await this.source.nixSource(revision), revision);
      this.problem = null;
    } catch (error) {
      if (!(error instanceof NixTooOldError)) throw error;
      this.problem = error.message;
      this.log.error("nix-too-old", { revision, needed: error.needed, have: error.have, message: error.message });
    }
    this.checkedRevision = revision;
  }
}
