// The builders a worker sends jobs to: BUILDER_URL holds one base URL, or several separated by commas or spaces.
// Jobs are spread over them by image key (common/builder-ranking.ts).
import type { Env } from "./env.ts";

/** A configuration problem on the worker's side (e.g. no secret): becomes a 500 that says so. */
export class BuilderConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BuilderConfigError";
  }
}

export function builderUrls(env: Env): string[] {
  const urls = (env.BUILDER_URL ?? "").split(/[\s,]+/).filter(Boolean);
  if (urls.length === 0) throw new BuilderConfigError("BUILDER_URL is not configured for the worker");
  for (const url of urls) {
    try {
      new URL(url);
    } catch {
      throw new BuilderConfigError(`BUILDER_URL holds "${url}", which is not a URL`);
    }
  }
  return [...new Set(urls)];
}
