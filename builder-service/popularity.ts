// How widely a store path is used across a package set: the weight that decides which paths keep layers of
// their own when a closure has more paths than the layer budget. Nixery's format: {"<name>-<version>": count}.
import { readFile } from "node:fs/promises";
import { storePathName, type StorePathNode } from "./closure.ts";

export type Popularity = (storePathName: string) => number | undefined;

export async function loadPopularity(file: string): Promise<Popularity> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(file, "utf8"));
  } catch (error) {
    throw new Error(`cannot read popularity data from ${file}: ${(error as Error).message}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new Error(`${file} is not popularity data: expected {"name-version": count, ...}`);
  }
  const counts = new Map<string, number>();
  for (const [name, count] of Object.entries(parsed)) {
    if (typeof count === "number" && Number.isFinite(count) && count >= 0) counts.set(name, count);
  }
  return (name) => counts.get(name);
}

/**
 * Without popularity data: how many paths of this closure depend on each path, directly or not, plus one.
 * A path everything needs (the C library) scores high, a leaf only the image's own package needs scores 1.
 */
export function closurePopularity(graph: readonly StorePathNode[]): Map<string, number> {
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
