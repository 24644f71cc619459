// Where packages come from. A tag resolves to a revision (a commit, or a content hash for a local folder);
// images are keyed by that revision, never by the moving tag, so every manifest can be cached.
import type { ResolveResult } from "../../common/builder-api.ts";
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
