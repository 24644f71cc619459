// The builders a worker sends jobs to: BUILDER_URL holds one builder's origin, or several separated by commas or spaces.
// Jobs are spread over them by image key (common/builder-ranking.ts).

/** A configuration problem on the worker's side (e.g. no secret): becomes a 500 that says so. */
export class BuilderConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BuilderConfigError";
  }
}

/** The builders of a BUILDER_URL value, as origins. */
export function builderUrls(setting: string | undefined): string[] {
  const urls = (setting ?? "").split(/[\s,]+/).filter(Boolean);
  if (urls.length === 0) throw new BuilderConfigError("BUILDER_URL is not configured for the worker");
  const origins = urls.map((url) => {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new BuilderConfigError(`BUILDER_URL holds "${url}", which is not a URL`);
    }
    // The builder signs and routes the paths it serves from its root, so a path before them could never work.
    if (parsed.pathname.replace(/\/+$/, "") !== "" || parsed.search !== "") {
      throw new BuilderConfigError(
        `BUILDER_URL holds "${url}", which has a path: give the builder's origin only (${parsed.origin}); the builder serves at its root`,
      );
    }
    return parsed.origin;
  });
  return [...new Set(origins)];
}
