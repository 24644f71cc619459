// Tags pick the package-set revision. Only a few kinds are served, so that no request for a made-up tag builds.

/** The OCI distribution spec's tag length limit. */
const MAX_TAG_LENGTH = 128;
const TAG_GRAMMAR = /^[a-zA-Z0-9_][a-zA-Z0-9._-]*$/;
const COMMIT = /^[0-9a-f]{40}$/;

export type TagKind = { kind: "latest" } | { kind: "commit"; commit: string } | { kind: "ref"; ref: string };

/** Why a tag is not one at all (too long, or outside the OCI tag grammar), or null for a well-formed tag. */
export function tagProblem(tag: string): string | null {
  if (tag.length > MAX_TAG_LENGTH) return `tags are at most ${MAX_TAG_LENGTH} characters; this one has ${tag.length}`;
  if (!TAG_GRAMMAR.test(tag)) {
    return `"${tag}" is not a tag: use letters, digits, '_', '.' and '-', not starting with '.' or '-'`;
  }
  return null;
}

export function classifyTag(tag: string): TagKind | null {
  if (tagProblem(tag) !== null) return null;
  if (tag === "latest") return { kind: "latest" };
  if (COMMIT.test(tag)) return { kind: "commit", commit: tag };
  return { kind: "ref", ref: tag };
}
