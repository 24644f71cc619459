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

/** Plain code-unit comparison: locale-aware collation differs between machines. */
function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function byName(a: string, b: string): number {
  const [nameA, nameB] = [storePathName(a), storePathName(b)];
  return nameA !== nameB ? compare(nameA, nameB) : compare(a, b);
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

/** Past the budget, a path goes into the layer of a dependant that brings it to at least this share of its users. */
const CO_OCCURRENCE_SHARE = 0.75;
/**
 * A path this big keeps a layer of its own past the budget: too many bytes to risk in a group, since an image
 * within the budget lays it out alone. Except a path no such image holds (see `largeClosures`).
 */
export const OWN_LAYER_BYTES = 16 * 1024 * 1024;
/**
 * A path whose closure has more store paths than this is never in an image laid out one path per layer with the
 * default budget. A fixed count, not the budget: a path's layout then does not depend on the budget.
 */
export const LARGE_CLOSURE_PATHS = DEFAULT_LAYER_BUDGET - 1;
/**
 * A group with this many bytes or more for each layer it saves is laid out one path per layer: another image that
 * lays out its paths differently would store and pull all those bytes again, for few layers saved.
 */
export const SPLIT_BYTES_PER_LAYER = 10 * 1024 * 1024;
/** Paths used at least this share as widely as the closure's most used path (the C library) are the images' base. */
const BASE_SHARE = 0.5;
/** Base paths smaller than this share one layer; larger ones keep their own. */
const SMALL_BASE_BYTES = 1024 * 1024;

/**
 * Groups store paths into at most `budget - 1` layers (the last layer of every image is its root filesystem).
 *
 * A layer is shared between two images only when it holds exactly the same store paths, so every path gets a
 * layer of its own while the budget allows: then every path two images have in common is shared. Nixery
 * instead always merges dominator subtrees, so small images share less.
 *
 * Past the budget, paths are grouped by co-occurrence, so that images sharing an application share its layers
 * (see `coOccurrenceClasses`), and the groups with the most bytes keep a layer each; if there are more groups
 * than layers, the smallest share the last store layer. A group with `SPLIT_BYTES_PER_LAYER` or more for each
 * layer it saves is laid out one path per layer instead. Without popularity data nothing says which paths come
 * together, so every path is a group of its own: the largest keep a layer each, the rest share the last one.
 * Every choice is ordered by size, then by path, and groups come in dependency order, so the plan is a pure
 * function of the closure and the popularity data.
 */
export function planLayers(
  graph: readonly StorePathNode[],
  budget: number = DEFAULT_LAYER_BUDGET,
  popularity?: Popularity,
): LayerGroup[] {
  if (budget < 2)
    throw new Error(`a layer budget of ${budget} leaves no room for store paths beside the root filesystem`);
  const ordered = topologicalOrder(graph);
  const storeLayers = budget - 1;
  if (ordered.length <= storeLayers) {
    return ordered.map((node) => ({ paths: [node.path], size: node.narSize }));
  }
  const groups = coOccurrenceClasses(ordered, popularity).map((nodes): LayerGroup => ({
    paths: nodes.map((node) => node.path).sort(compare),
    size: nodes.reduce((sum, node) => sum + node.narSize, 0),
  }));
  if (groups.length <= storeLayers) return groups;
  const bySize = [...groups].sort((a, b) => b.size - a.size || compare(a.paths[0], b.paths[0]));
  const kept = new Set(bySize.slice(0, storeLayers - 1));
  const rest = groups.filter((group) => !kept.has(group));
  // The smallest groups go last, together: the shared base layers come first, as in a Dockerfile-built image.
  return [
    ...groups.filter((group) => kept.has(group)),
    {
      paths: rest.flatMap((group) => group.paths).sort(compare),
      size: rest.reduce((sum, group) => sum + group.size, 0),
    },
  ];
}

/**
 * The closure's paths in groups that tend to come together in any image, in dependency order (by each group's
 * first path in `ordered`), each group's paths in that order too.
 *
 * Popularity counts how many packages of the package set have a path in their closure (a package counts for
 * its own paths: it may be an image on its own). Where a path X refers to a path Y and X's count is at least
 * `CO_OCCURRENCE_SHARE` of Y's, most packages that have Y have it through X: an image with Y almost always has
 * X, so they share a layer (and, transitively, the whole chain does). The test looks only at the two counts and
 * at a reference X always has, so a group is the same in every image that holds its paths, and two images
 * sharing an application share the application's layers. Except:
 * - paths of `OWN_LAYER_BYTES` or more stay alone: an image within the budget lays them out alone, and a group
 *   holding them would cost all its bytes again. Not those of `largeClosures`, which no such image holds: they
 *   join their application's group like any other path;
 * - the base, paths used about as widely as the most used one (`BASE_SHARE`), which every image holds and
 *   small images lay out one per layer: those of `SMALL_BASE_BYTES` or more stay alone, the smaller share one
 *   layer (few bytes, and a layer fewer for the groups that matter).
 * Then a group with `SPLIT_BYTES_PER_LAYER` or more for each layer it saves becomes one group per path: a few
 * large paths are too many bytes to risk for the layer or two their group saves.
 * Without popularity data, each path is a group of its own.
 */
function coOccurrenceClasses(ordered: readonly StorePathNode[], popularity: Popularity | undefined): StorePathNode[][] {
  if (!popularity) return ordered.map((node) => [node]);
  const weights = popularityOf(ordered, popularity);
  const weight = (node: StorePathNode) => Math.max(1, weights.get(node.path)!);
  const widest = Math.max(...ordered.map(weight));
  const isBase = (node: StorePathNode) => weight(node) >= BASE_SHARE * widest;
  const large = largeClosures(ordered, weight);
  const alone = (node: StorePathNode) => (node.narSize >= OWN_LAYER_BYTES && !large.has(node.path)) || isBase(node);

  // Union-find over positions in `ordered`, each group represented by its first position: no Map iteration
  // order or hash decides anything.
  const index = new Map(ordered.map((node, i) => [node.path, i]));
  const parent = ordered.map((_, i) => i);
  const find = (i: number): number => {
    while (parent[i] !== i) i = parent[i] = parent[parent[i]];
    return i;
  };
  const join = (a: number, b: number) => {
    const [ra, rb] = [find(a), find(b)];
    if (ra !== rb) parent[Math.max(ra, rb)] = Math.min(ra, rb);
  };
  ordered.forEach((node, i) => {
    if (alone(node)) return;
    for (const reference of node.references) {
      const j = index.get(reference);
      if (j === undefined || j === i || alone(ordered[j])) continue;
      if (weight(node) >= CO_OCCURRENCE_SHARE * weight(ordered[j])) join(i, j);
    }
  });
  const smallBase = ordered.flatMap((node, i) => (isBase(node) && node.narSize < SMALL_BASE_BYTES ? [i] : []));
  for (const i of smallBase) join(smallBase[0], i);

  const groups = new Map<number, StorePathNode[]>();
  ordered.forEach((node, i) => {
    const root = find(i);
    const group = groups.get(root);
    if (group) group.push(node);
    else groups.set(root, [node]);
  });
  const bytes = (group: StorePathNode[]) => group.reduce((sum, node) => sum + node.narSize, 0);
  const split = [...groups.values()].flatMap((group) =>
    group.length > 1 && bytes(group) / (group.length - 1) >= SPLIT_BYTES_PER_LAYER
      ? group.map((node) => [node])
      : [group],
  );
  // Each group's first path decides its place: dependency order.
  return split.sort((a, b) => index.get(a[0].path)! - index.get(b[0].path)!);
}

/**
 * Paths no image laid out one path per layer holds, so laying them out in a group costs nothing against such
 * images: paths with more than `LARGE_CLOSURE_PATHS` paths in their closure, and the paths they refer to that
 * are mostly used through them (the co-occurrence test: the dependant has at least `CO_OCCURRENCE_SHARE` of the
 * users of the path). Both tests look only at a path, its closure and its popularity, so they give the same
 * answer in every image.
 */
function largeClosures(ordered: readonly StorePathNode[], weight: (node: StorePathNode) => number): Set<string> {
  const byPath = new Map(ordered.map((node) => [node.path, node]));
  const closureIsLarge = (node: StorePathNode): boolean => {
    const closure = new Set([node.path]);
    const stack = [node];
    while (stack.length > 0 && closure.size <= LARGE_CLOSURE_PATHS) {
      for (const reference of stack.pop()!.references) {
        const referenced = byPath.get(reference);
        if (referenced && !closure.has(reference)) {
          closure.add(reference);
          stack.push(referenced);
        }
      }
    }
    return closure.size > LARGE_CLOSURE_PATHS;
  };
  const tops = ordered.filter(closureIsLarge);
  const large = new Set(tops.map((node) => node.path));
  for (const node of tops) {
    for (const reference of node.references) {
      const referenced = byPath.get(reference);
      if (referenced && weight(node) >= CO_OCCURRENCE_SHARE * weight(referenced)) large.add(reference);
    }
  }
  return large;
}
