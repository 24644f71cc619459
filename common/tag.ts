// Tags pick the package-set revision. Only a few kinds are served, so that no request for a made-up tag builds.

const TAG_GRAMMAR = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
const COMMIT = /^[0-9a-f]{40}$/;

export type TagKind =
  | { kind: "latest" }
  | { kind: "commit"; commit: string }
  | { kind: "ref"; ref: string };

export function classifyTag(tag: string): TagKind | null {
  if (!TAG_GRAMMAR.test(tag)) return null;
  if (tag === "latest") return { kind: "latest" };
  if (COMMIT.test(tag)) return { kind: "commit", commit: tag };
  return { kind: "ref", ref: tag };
}

export function isValidTag(tag: string): boolean {
  return TAG_GRAMMAR.test(tag);
}
