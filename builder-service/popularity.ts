// How widely a store path is used across a package set: what tells layering (layering.ts) which paths come
// together in images, when a closure has more paths than the layer budget. Nixery's format, {"<name>-<version>":
// count}: for each store path name, how many packages of the set have it in their closure. Nixery's popcount tool
// computes such data for a nixpkgs channel; the Debian-derived package set ships its own (package-sets/debian-pkgs).
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { storePathName, type StorePathNode } from "./closure.ts";

export type Popularity = (storePathName: string) => number | undefined;

/** Popularity data as loaded: the lookup, and how many store path names it knows. */
export type LoadedPopularity = Popularity & { entries: number };

/** How long a download of popularity data may take (Nixery's files for nixpkgs are a few MB). */
const POPULARITY_DOWNLOAD_MS = 60_000;

export class PopularityError extends Error {
  constructor(
    message: string,
    /** True when the data itself is wrong or missing (a setting to fix), false when it could not be fetched now. */
    readonly permanent: boolean,
  ) {
    super(message);
  }
}

/** Whether a popularity source names a URL to download rather than a file. */
export function isPopularityUrl(source: string): boolean {
  return /^https?:\/\//i.test(source);
}

async function download(url: string, fetchImpl: typeof fetch): Promise<string> {
  let response: Response;
  try {
    response = await fetchImpl(url, { signal: AbortSignal.timeout(POPULARITY_DOWNLOAD_MS), redirect: "follow" });
  } catch (error) {
    const cause =
      (error as Error).name === "TimeoutError"
        ? `no answer within ${POPULARITY_DOWNLOAD_MS / 1000} s`
        : (error as Error).message;
    throw new PopularityError(`cannot download popularity data from ${url}: ${cause}`, false);
  }
  if (!response.ok) {
    await response.body?.cancel();
    // A 4xx will not go away by itself; a 5xx may.
    throw new PopularityError(
      `cannot download popularity data from ${url}: HTTP ${response.status}`,
      response.status < 500,
    );
  }
  try {
    return await response.text();
  } catch (error) {
    throw new PopularityError(`cannot download popularity data from ${url}: ${(error as Error).message}`, false);
  }
}

/**
 * Reads Nixery-format popularity data from an http(s) URL, a file:// URL or a file path. Entries whose count is
 * not a number of 0 or more are left out; anything but a JSON object of them is refused.
 */
export async function loadPopularity(source: string, fetchImpl: typeof fetch = fetch): Promise<LoadedPopularity> {
  let text: string;
  if (isPopularityUrl(source)) {
    text = await download(source, fetchImpl);
  } else {
    const file = source.startsWith("file:") ? fileURLToPath(source) : source;
    try {
      text = await readFile(file, "utf8");
    } catch (error) {
      throw new PopularityError(`cannot read popularity data from ${file}: ${(error as Error).message}`, true);
    }
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new PopularityError(`${source} is not popularity data: ${(error as Error).message}`, true);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new PopularityError(`${source} is not popularity data: expected {"name-version": count, ...}`, true);
  }
  const counts = new Map<string, number>();
  for (const [name, count] of Object.entries(parsed)) {
    if (typeof count === "number" && Number.isFinite(count) && count >= 0) counts.set(name, count);
  }
  return Object.assign((name: string) => counts.get(name), { entries: counts.size });
}

/**
 * Without popularity data: how many paths of this closure depend on each path, directly or not, plus one.
 * A path everything needs (the C library) scores high, a leaf only the image's own package needs scores 1.
 */
function closurePopularity(graph: readonly StorePathNode[]): Map<string, number> {
  const references = new Map(graph.map((node) => [node.path, node.references.filter((r) => r !== node.path)]));
  const dependants = new Map<string, number>(graph.map((node) => [node.path, 1]));
  for (const node of graph) {
    const seen = new Set<string>();
    const stack = [...(references.get(node.path) ?? [])];
    while (stack.length > 0) {
      const next = stack.pop()!;
      if (seen.has(next) || !references.has(next)) continue;
      seen.add(next);
      dependants.set(next, dependants.get(next)! + 1);
      stack.push(...references.get(next)!);
    }
  }
  return dependants;
}

/** Popularity of every path of the closure: the configured data where it knows the path, else the closure's own. */
export function popularityOf(graph: readonly StorePathNode[], popularity: Popularity | undefined): Map<string, number> {
  const fallback = closurePopularity(graph);
  return new Map(graph.map((node) => [node.path, popularity?.(storePathName(node.path)) ?? fallback.get(node.path)!]));
}
