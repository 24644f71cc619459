// How store paths are grouped into layers. Layers are what clients share between images, so the grouping
// decides how much a pull of a second image costs; it must also be a pure function of the closure, so
// that the same image gets the same manifest digest on any builder.
import { storePathName, type StorePathNode } from "./closure.ts";

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
 * Each store path gets a layer of its own while the budget allows, which shares the most between images;
 * past the budget the biggest paths keep their own layers and the rest share one.
 */
export function planLayers(graph: readonly StorePathNode[], budget: number = DEFAULT_LAYER_BUDGET): LayerGroup[] {
  if (budget < 2) throw new Error(`a layer budget of ${budget} leaves no room for store paths beside the root filesystem`);
  const ordered = topologicalOrder(graph);
  const storeLayers = budget - 1;
  if (ordered.length <= storeLayers) {
    return ordered.map((node) => ({ paths: [node.path], size: node.narSize }));
  }
  const bySize = [...ordered].sort((a, b) => b.narSize - a.narSize || byName(a.path, b.path));
  const own = new Set(bySize.slice(0, storeLayers - 1).map((node) => node.path));
  const rest = ordered.filter((node) => !own.has(node.path));
  const groups: LayerGroup[] = [
    { paths: rest.map((node) => node.path).sort(), size: rest.reduce((sum, node) => sum + node.narSize, 0) },
  ];
  for (const node of ordered) if (own.has(node.path)) groups.push({ paths: [node.path], size: node.narSize });
  return groups;
}
