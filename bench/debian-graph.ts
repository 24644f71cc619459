// Debian's archive as a package set of store paths, for the layering simulation (bench/layering-sim.ts): the
// dependency graph, sizes and popularity of real software, read from the apt lists on this machine, with nothing
// built or downloaded.
//
// - Every binary package of the `Packages` files (/var/lib/apt/lists) is one store path; a package listed in
//   several files is taken from the last one read: bookworm, then bookworm-security and bookworm-updates.
// - Depends and Pre-Depends are its references. Of alternatives (`a | b`), the first that exists, as a package
//   or as a name some package Provides, is taken; a virtual name goes to its provider first by name.
// - Installed-Size (KiB) x 1024 is its size in bytes.
// - Debian's dependencies can form cycles, Nix references cannot: each cycle (strongly connected component)
//   becomes one store path holding all its packages, named after the first by name.
// - Popularity is Nixery's measure over the whole archive: for each store path, how many packages have it in
//   their closure (a reverse-dependency count, direct or not).
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import type { StorePathNode } from "../builder-service/closure.ts";

export const APT_LISTS = "/var/lib/apt/lists";

interface Package {
  name: string;
  version: string;
  /** Each dependency is a list of alternatives, package names only. */
  depends: string[][];
  provides: string[];
  installedKiB: number;
}

export interface DebianSet {
  /** The Packages files read, in order. */
  sources: string[];
  packages: number;
  /** Debian package name -> store path (packages of one cycle share one). */
  pathOf: Map<string, string>;
  nodes: Map<string, StorePathNode>;
  /** Nixery's format: store path name ("name-version") -> packages whose closure holds it. */
  popularity: Map<string, number>;
  /** Store paths in one cycle's merged path (1 for most). */
  members: Map<string, string[]>;
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The text of one Packages file, decompressed by the lz4 tool, or by apt's own helper where lz4 is missing. */
function readPackagesFile(file: string): string {
  const options = { encoding: "utf8" as const, maxBuffer: 1024 * 1024 * 1024 };
  if (!file.endsWith(".lz4")) return execFileSync("cat", [file], options);
  try {
    return execFileSync("lz4", ["-dc", file], options);
  } catch {
    return execFileSync("/usr/lib/apt/apt-helper", ["cat-file", file], options);
  }
}

/** The suite of a Packages file's name, "..._dists_bookworm-updates_main_..." -> "bookworm-updates". */
function suiteOf(fileName: string): string {
  return /_dists_([^_]+)_/.exec(fileName)?.[1] ?? "";
}

/**
 * The Packages files of the apt lists, a base suite before its -security and -updates suites (by suite name, then
 * file name), so that a package they update is read last and wins.
 */
export function packagesFiles(dir = APT_LISTS): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((name) => /_Packages(\.lz4)?$/.test(name))
    .sort((a, b) => compare(suiteOf(a), suiteOf(b)) || compare(a, b))
    .map((name) => join(dir, name));
}

/** "libc6 (>= 2.34), foo:any | bar" -> [["libc6"], ["foo", "bar"]]. */
function relations(field: string | undefined): string[][] {
  if (!field) return [];
  return field
    .split(",")
    .map((group) =>
      group
        .split("|")
        .map((alt) => alt.trim().split(/[\s(:]/)[0])
        .filter(Boolean),
    )
    .filter((alts) => alts.length > 0);
}

function parse(text: string, into: Map<string, Package>): void {
  for (const stanza of text.split(/\n\n+/)) {
    const fields = new Map<string, string>();
    let last = "";
    for (const line of stanza.split("\n")) {
      if (line.startsWith(" ") || line.startsWith("\t")) {
        if (last) fields.set(last, `${fields.get(last)} ${line.trim()}`);
        continue;
      }
      const colon = line.indexOf(":");
      if (colon <= 0) continue;
      last = line.slice(0, colon);
      fields.set(last, line.slice(colon + 1).trim());
    }
    const name = fields.get("Package");
    if (!name) continue;
    into.set(name, {
      name,
      version: fields.get("Version") ?? "0",
      depends: [...relations(fields.get("Pre-Depends")), ...relations(fields.get("Depends"))],
      provides: relations(fields.get("Provides")).flat(),
      installedKiB: Number(fields.get("Installed-Size") ?? "0") || 0,
    });
  }
}

/** Characters Nix allows in a store path name; Debian versions may also hold ':' (epochs) and '~'. */
function storeName(name: string, version: string): string {
  return `${name}-${version}`.replace(/[^A-Za-z0-9+\-._?=]/g, "_");
}

const NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz";

function storePath(name: string): string {
  const digest = createHash("sha256").update(name).digest();
  let hash = "";
  for (let i = 0; i < 32; i++) hash += NIX_BASE32[digest[i] % 32];
  return `/nix/store/${hash}-${name}`;
}

/** Strongly connected components (Tarjan's, without recursion: Debian's chains are deep). */
function components(names: string[], edges: Map<string, string[]>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const result: string[][] = [];
  let counter = 0;
  for (const start of names) {
    if (index.has(start)) continue;
    const work: { node: string; next: number }[] = [{ node: start, next: 0 }];
    index.set(start, counter);
    low.set(start, counter++);
    stack.push(start);
    onStack.add(start);
    while (work.length > 0) {
      const frame = work[work.length - 1];
      const out = edges.get(frame.node)!;
      if (frame.next < out.length) {
        const to = out[frame.next++];
        if (!index.has(to)) {
          index.set(to, counter);
          low.set(to, counter++);
          stack.push(to);
          onStack.add(to);
          work.push({ node: to, next: 0 });
        } else if (onStack.has(to)) {
          low.set(frame.node, Math.min(low.get(frame.node)!, index.get(to)!));
        }
        continue;
      }
      work.pop();
      if (work.length > 0) {
        const parent = work[work.length - 1].node;
        low.set(parent, Math.min(low.get(parent)!, low.get(frame.node)!));
      }
      if (low.get(frame.node) === index.get(frame.node)) {
        const component: string[] = [];
        let member: string;
        do {
          member = stack.pop()!;
          onStack.delete(member);
          component.push(member);
        } while (member !== frame.node);
        result.push(component.sort(compare));
      }
    }
  }
  return result;
}

export function loadDebianSet(files: string[] = packagesFiles()): DebianSet {
  if (files.length === 0) {
    throw new Error(
      `no Packages files in ${APT_LISTS}: run apt-get update (as root) to fetch Debian's archive metadata`,
    );
  }
  const packages = new Map<string, Package>();
  for (const file of files) parse(readPackagesFile(file), packages);

  const providers = new Map<string, string[]>();
  for (const pkg of packages.values()) {
    for (const name of pkg.provides) {
      const list = providers.get(name);
      if (list) list.push(pkg.name);
      else providers.set(name, [pkg.name]);
    }
  }
  for (const list of providers.values()) list.sort(compare);
  const resolve = (name: string): string | undefined => (packages.has(name) ? name : providers.get(name)?.[0]);
  const names = [...packages.keys()].sort(compare);
  const edges = new Map<string, string[]>();
  for (const name of names) {
    const deps = new Set<string>();
    for (const alternatives of packages.get(name)!.depends) {
      const chosen = alternatives.map(resolve).find((dep) => dep !== undefined);
      if (chosen !== undefined && chosen !== name) deps.add(chosen);
    }
    edges.set(name, [...deps].sort(compare));
  }

  // One store path per cycle of packages.
  const pathOf = new Map<string, string>();
  const members = new Map<string, string[]>();
  const sizeOf = new Map<string, number>();
  for (const component of components(names, edges)) {
    const first = packages.get(component[0])!;
    const path = storePath(storeName(first.name, first.version));
    members.set(path, component);
    sizeOf.set(
      path,
      component.reduce((sum, name) => sum + packages.get(name)!.installedKiB * 1024, 0),
    );
    for (const name of component) pathOf.set(name, path);
  }
  const references = new Map<string, string[]>();
  for (const [path, component] of members) {
    const refs = new Set<string>();
    for (const name of component)
      for (const dep of edges.get(name)!) if (pathOf.get(dep) !== path) refs.add(pathOf.get(dep)!);
    references.set(path, [...refs].sort(compare));
  }

  // Closures (for closure sizes and popularity): a walk from every path, over indices and typed arrays (about a
  // second for Debian's ~64,000 packages; with strings and Sets it took several).
  const paths = [...members.keys()];
  const indexOf = new Map(paths.map((path, i) => [path, i]));
  const refs = paths.map((path) => Int32Array.from(references.get(path)!, (ref) => indexOf.get(ref)!));
  const sizes = Float64Array.from(paths, (path) => sizeOf.get(path)!);
  const weight = Int32Array.from(paths, (path) => members.get(path)!.length);
  const counts = new Float64Array(paths.length);
  const closureSizes = new Float64Array(paths.length);
  const seenIn = new Int32Array(paths.length).fill(-1);
  const stack: number[] = [];
  for (let start = 0; start < paths.length; start++) {
    seenIn[start] = start;
    stack.push(start);
    let size = 0;
    while (stack.length > 0) {
      const next = stack.pop()!;
      size += sizes[next];
      counts[next] += weight[start];
      for (const ref of refs[next]) {
        if (seenIn[ref] !== start) {
          seenIn[ref] = start;
          stack.push(ref);
        }
      }
    }
    closureSizes[start] = size;
  }
  const popularityByPath = new Map(paths.map((path, i) => [path, counts[i]]));
  const closureSize = new Map(paths.map((path, i) => [path, closureSizes[i]]));
  const nodes = new Map<string, StorePathNode>();
  const popularity = new Map<string, number>();
  for (const path of members.keys()) {
    nodes.set(path, {
      path,
      references: references.get(path)!,
      narSize: sizeOf.get(path)!,
      closureSize: closureSize.get(path)!,
    });
    popularity.set(path.slice("/nix/store/".length + 33), popularityByPath.get(path)!);
  }
  return { sources: files, packages: packages.size, pathOf, nodes, popularity, members };
}

/** The closure of an image of these Debian packages: their store paths and everything they reference. */
export function imageGraph(
  set: DebianSet,
  packageNames: readonly string[],
): { topLevel: string[]; graph: StorePathNode[] } {
  const topLevel: string[] = [];
  for (const name of packageNames) {
    const path = set.pathOf.get(name);
    if (!path)
      throw new Error(`${name} is not a package of Debian's archive (${set.sources.length} Packages files read)`);
    if (!topLevel.includes(path)) topLevel.push(path);
  }
  const seen = new Set<string>(topLevel);
  const stack = [...topLevel];
  while (stack.length > 0) {
    for (const ref of set.nodes.get(stack.pop()!)!.references) {
      if (!seen.has(ref)) {
        seen.add(ref);
        stack.push(ref);
      }
    }
  }
  return { topLevel, graph: [...seen].sort(compare).map((path) => set.nodes.get(path)!) };
}
