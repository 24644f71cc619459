// Where packages come from. A tag resolves to a revision (a commit, or a content hash for a local folder);
// images are keyed by that revision, never by the moving tag, so every manifest can be cached.
import type { ResolveResult } from "../../common/builder-api.ts";
import type { Logger } from "../log.ts";
import type { NixSource } from "../nix-runner.ts";

export class RevisionUnavailableError extends Error {}

export interface PackageSource {
  /** For logs and the image's org.opencontainers.image.source label. */
  readonly description: string;
  /** null when this source has nothing under that tag (the registry answers 404 and builds nothing). */
  resolve(tag: string): Promise<ResolveResult | null>;
  /** How nix/build-image.nix gets the package set at that revision. */
  nixSource(revision: string): Promise<NixSource>;
}

/**
 * The source, with one log line per resolution: which revision a tag meant, and when. With the build log line
 * (which names the revision too), the builder's log says which commit every image was built from.
 */
export function withResolutionLog(source: PackageSource, log: Logger): PackageSource {
  return {
    description: source.description,
    async resolve(tag) {
      const started = performance.now();
      try {
        const resolved = await source.resolve(tag);
        log.info("resolve", {
          tag,
          revision: resolved?.revision ?? null,
          ttlSeconds: resolved?.ttlSeconds ?? null,
          source: source.description,
          ms: Math.round(performance.now() - started),
        });
        return resolved;
      } catch (error) {
        log.warn("resolve-failed", { tag, source: source.description, error: (error as Error).message });
        throw error;
      }
    },
    nixSource: (revision) => source.nixSource(revision),
  };
}
