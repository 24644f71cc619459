// Nixery's layering (tools/nixery, layers/layers.go), reimplemented from its description for comparison in the
// benchmark only; the registry never uses it. Weaknesses are kept on purpose, since they are what is measured.
//
// 1. Nodes are the closure's store paths, edges their references, plus a root with edges to the requested
//    top-level paths and to every path that is big (closure > 100 MB) or popular (count >= 100).
// 2. The dominator tree from the root: each child of the root, with everything it dominates, is a layer
//    candidate rated popularity x size (sizes summed as closure sizes, as Nixery does).
// 3. While there are more candidates than the budget, the lowest-rated is merged into the next one.
import { storePathName, type StorePathNode } from "../builder-service/closure.ts";
import type { LayerGroup } from "../builder-service/layering.ts";

export const NIXERY_STORE_LAYER_BUDGET = 94;
const BIG_CLOSURE_BYTES = 100 * 1000 * 1000;
const POPULAR_COUNT = 100;
/** cacert and iana-etc are treated as very popular by Nixery. */
const ALWAYS_POPULAR = new Set(["cacert", "iana-etc"]);

function packageName(path: string): string {
  // "hello-2.12" -> "hello" for the always-popular check.
  return storePathName(path).replace(/-[0-9].*$/, "");
}

export function nixeryLayers(
  graph: readonly StorePathNode[],
  topLevel: readonly string[],
  popularity: (name: string) => number | undefined,
  budget: number = NIXERY_STORE_LAYER_BUDGET,
): LayerGroup[] {
  const nodes = new Map(graph.map((n) => [n.path, n]));
  const pop = (path: string) =>
    ALWAYS_POPULAR.has(packageName(path)) ? 1_000_000 : (popularity(storePathName(path)) ?? 0);
  const ROOT = "<root>";
  const successors = new Map<string, string[]>();
  const rootEdges = new Set<string>(topLevel.filter((p) => nodes.has(p)));
  for (const node of graph) {
    if (node.closureSize > BIG_CLOSURE_BYTES || pop(node.path) >= POPULAR_COUNT) rootEdges.add(node.path);
    successors.set(
      node.path,
      node.references.filter((r) => r !== node.path && nodes.has(r)),
    );
  }
  successors.set(ROOT, [...rootEdges]);

  // Immediate dominators on a DAG: in topological order from the root, idom(n) is the nearest common
  // dominator-tree ancestor of all of n's predecessors.
  const order: string[] = [];
  const visited = new Set<string>();
  const visit = (n: string) => {
    if (visited.has(n)) return;
    visited.add(n);
    for (const s of successors.get(n) ?? []) visit(s);
    order.push(n);
  };
  visit(ROOT);
  order.reverse();
  const predecessors = new Map<string, string[]>();
  for (const [from, tos] of successors)
    for (const to of tos) predecessors.set(to, [...(predecessors.get(to) ?? []), from]);
  const idom = new Map<string, string>();
  const depth = new Map<string, number>([[ROOT, 0]]);
  const lca = (a: string, b: string) => {
    while (a !== b) {
      if (depth.get(a)! >= depth.get(b)!) a = idom.get(a)!;
      else b = idom.get(b)!;
    }
    return a;
  };
  for (const n of order) {
    if (n === ROOT) continue;
    const preds = predecessors.get(n) ?? [];
    const dom = preds.reduce((acc, p) => lca(acc, p));
    idom.set(n, dom);
    depth.set(n, depth.get(dom)! + 1);
  }

  const children = new Map<string, string[]>();
  for (const [n, d] of idom) children.set(d, [...(children.get(d) ?? []), n]);
  const subtree = (n: string): string[] => [n, ...(children.get(n) ?? []).flatMap(subtree)];
  let candidates = (children.get(ROOT) ?? []).map((child) => {
    const paths = subtree(child);
    return {
      paths,
      rating: pop(child) * paths.reduce((sum, p) => sum + nodes.get(p)!.closureSize, 0),
      size: paths.reduce((sum, p) => sum + nodes.get(p)!.narSize, 0),
    };
  });
  candidates.sort((a, b) => a.rating - b.rating);
  while (candidates.length > budget) {
    const [lowest, next, ...rest] = candidates;
    candidates = [
      { paths: [...next.paths, ...lowest.paths], rating: next.rating + lowest.rating, size: next.size + lowest.size },
      ...rest,
    ];
  }
  return candidates.sort((a, b) => b.rating - a.rating).map((c) => ({ paths: [...c.paths].sort(), size: c.size }));
}
