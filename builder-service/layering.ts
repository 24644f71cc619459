// How store paths are grouped into layers. Layers are what clients share between images, so the grouping
// decides how much a pull of a second image costs; it must also be a pure function of the closure, so
// that the same image gets the same manifest digest on any builder.
import { storePathName, type StorePathNode } from "./closure.ts";
import { popularityOf, type Popularity } from "./popularity.ts";

export interface LayerGroup {
  /** Store paths of the layer, sorted. */
  paths: string[];
  /** Bytes of the store paths (NAR sizes), for logs and ordering. */
  size: number;
}

/** The OCI spec sets no limit, but docker and overlayfs handle about 127; Nixery keeps under 100. */
export const DEFAULT_LAYER_BUDGET = 100;

function byName(a: string, b: string): number {
  // Plain code-unit comparison: locale-aware collation differs between machines.
  const [nameA, nameB] = [storePathName(a), storePathName(b)];
  if (nameA !== nameB) return nameA < nameB ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Dependencies before dependants (a base layer first), ties broken by package name, then by full path,
 * so the order never depends on the order Nix happened to list the graph in.
 */
export function topologicalOrder(graph: readonly StorePathNode[]): StorePathNode[] {
  const byPath = new Map(graph.map((node) => [node.path, node]));
  const pending = new Map<string, number>();
  const dependants = new Map<string, string[]>();
  for (const node of graph) {
    const deps = node.references.filter((ref) => ref !== node.path && byPath.has(ref));
    pending.set(node.path, deps.length);
    for (const dep of deps) dependants.set(dep, [...(dependants.get(dep) ?? []), node.path]);
  }
  const ready = graph.filter((node) => pending.get(node.path) === 0).map((node) => node.path);
  const order: StorePathNode[] = [];
  while (ready.length > 0) {
    ready.sort(byName);
    const next = ready.shift()!;
    order.push(byPath.get(next)!);
    for (const dependant of dependants.get(next) ?? []) {
      const left = pending.get(dependant)! - 1;
      pending.set(dependant, left);
      if (left === 0) ready.push(dependant);
    }
  }
  if (order.length !== graph.length) throw new Error("the closure graph has a cycle between distinct store paths");
  return order;
}

/**
 * Groups store paths into at most `budget - 1` layers (the last layer of every image is its root filesystem).
 *
 * A layer is shared between two images only when it holds exactly the same store paths, so every path gets a
 * layer of its own while the budget allows: then every path two images have in common is shared. Nixery
 * instead always merges dominator subtrees, so small images share less. Past the budget, the paths with the
 * most to gain from a layer of their own (popularity x size: likely in other images, and costly to pull twice)
 * keep one, and the rest, mostly paths only this image needs, share the last store layer. Every choice is
 * ordered by value, then by name, so the plan is a pure function of the closure and the popularity data.
 */
export function planLayers(
  graph: readonly StorePathNode[],
  budget: number = DEFAULT_LAYER_BUDGET,
  popularity?: Popularity,
): LayerGroup[] {
  if (budget < 2) throw new Error(`a layer budget of ${budget} leaves no room for store paths beside the root filesystem`);
  const ordered = topologicalOrder(graph);
  const storeLayers = budget - 1;
  if (ordered.length <= storeLayers) {
    return ordered.map((node) => ({ paths: [node.path], size: node.narSize }));
  }
  const weights = popularityOf(graph, popularity);
  const value = (node: StorePathNode) => weights.get(node.path)! * node.narSize;
  const byValue = [...ordered].sort((a, b) => value(b) - value(a) || byName(a.path, b.path));
  const own = new Set(byValue.slice(0, storeLayers - 1).map((node) => node.path));
  const rest = ordered.filter((node) => !own.has(node.path));
  const groups: LayerGroup[] = [];
  for (const node of ordered) if (own.has(node.path)) groups.push({ paths: [node.path], size: node.narSize });
  // The image's own paths go last: the shared base layers come first, as in a Dockerfile-built image.
  groups.push({ paths: rest.map((node) => node.path).sort(), size: rest.reduce((sum, node) => sum + node.narSize, 0) });
  return groups;
}
