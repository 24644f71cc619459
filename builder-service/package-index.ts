// The front page's name checks (POST /packages): for each name typed into the composer, whether the package set at
// the tag's revision has it, and if not, the names closest to it; an alias with the package it stands for; a
// removed or refused package with the set's own reason. The set's top-level names are read from Nix once per
// revision and kept (a few hundred KiB for nixpkgs).
import type { NixSystem } from "../common/image-name.ts";
import type { PackageCheck } from "../common/builder-api.ts";
import { LruMap } from "../common/lru-map.ts";
import { UnknownPackagesError, type NixRunner, type NixSource } from "./nix-runner.ts";
import type { PackageSource } from "./sources/package-source.ts";

interface Index {
  names: string[];
  aliases: Set<string>;
}

const MAX_SUGGESTIONS = 3;

/** Edit distance, stopping early once it is above `limit` (the candidates are thousands). */
export function editDistance(a: string, b: string, limit: number): number {
  if (Math.abs(a.length - b.length) > limit) return limit + 1;
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    let best = i;
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      current[j] = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost);
      best = Math.min(best, current[j]);
    }
    if (best > limit) return limit + 1;
    previous = current;
  }
  return previous[b.length];
}

/**
 * The names of the set closest to `name`: by edit distance (at most a third of its length, and 3), then names
 * that start with it; ties by name. Case-insensitive, as the registry's names are.
 */
export function suggestions(name: string, names: readonly string[]): string[] {
  const wanted = name.toLowerCase();
  const limit = Math.min(3, Math.max(1, Math.floor(wanted.length / 3)));
  const scored: { name: string; score: number }[] = [];
  for (const candidate of names) {
    const lower = candidate.toLowerCase();
    const distance = editDistance(wanted, lower, limit);
    if (distance <= limit) scored.push({ name: candidate, score: distance });
    else if (wanted.length >= 3 && lower.startsWith(wanted))
      scored.push({ name: candidate, score: limit + 1 + lower.length / 1000 });
  }
  scored.sort((x, y) => x.score - y.score || (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
  return scored.slice(0, MAX_SUGGESTIONS).map((s) => s.name);
}

export class PackageIndex {
  private readonly indexes = new LruMap<string, Promise<Index>>(4);

  constructor(
    private readonly nix: NixRunner,
    private readonly source: PackageSource,
  ) {}

  private index(revision: string, system: NixSystem): Promise<Index> {
    const key = `${revision}\n${system}`;
    let index = this.indexes.get(key);
    if (!index) {
      index = (async () => {
        const value = (await this.nix.evaluate("index", [], await this.source.nixSource(revision), system)) as {
          names?: unknown;
          aliases?: unknown;
        };
        const strings = (v: unknown) => (Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : []);
        return { names: strings(value.names), aliases: new Set(strings(value.aliases)) };
      })();
      // A failed read is not kept: the next check tries again.
      index.catch(() => this.indexes.delete(key));
      this.indexes.set(key, index);
    }
    return index;
  }

  /** What each name is in the set at `revision`. */
  async check(
    revision: string,
    system: NixSystem,
    names: readonly string[],
  ): Promise<{ packages: PackageCheck[]; closureBytes: number | null }> {
    const nixSource = await this.source.nixSource(revision);
    await this.nix.ensureNewEnough(nixSource, revision);
    let problems: UnknownPackagesError | null = null;
    let resolved: Record<string, string> = {};
    try {
      resolved = await this.nix.checkPackages(names, nixSource, system);
    } catch (error) {
      if (!(error instanceof UnknownPackagesError)) throw error;
      problems = error;
    }
    const index = await this.index(revision, system);
    const aliases = names.filter((name) => index.aliases.has(name));
    const renamed =
      aliases.length > 0
        ? ((await this.nix.evaluate("renamed", aliases, nixSource, system)) as Record<string, unknown>)
        : {};
    const checks = names.map((name): PackageCheck => {
      const removed = problems?.removed.find((r) => r.name === name);
      if (removed) return { name, status: "removed", message: removed.message };
      const refused = problems?.refused.find((r) => r.name === name);
      if (refused) return { name, status: "refused", message: new UnknownPackagesError([], [], [refused]).message };
      if (problems?.unknown.includes(name))
        return { name, status: "unknown", suggestions: suggestions(name, index.names) };
      const target = renamed[name];
      return {
        name,
        status: "found",
        attribute: resolved[name] ?? name,
        ...(typeof target === "string" ? { aliasOf: target } : {}),
      };
    });
    return { packages: checks, closureBytes: problems ? null : await this.closureBytes(names, nixSource, system) };
  }

  /** The image's closure size when this builder has every path of it already, else null. */
  private async closureBytes(
    names: readonly string[],
    nixSource: NixSource,
    system: NixSystem,
  ): Promise<number | null> {
    const roots = await this.nix.evaluate("roots", names, nixSource, system).catch(() => null);
    if (!Array.isArray(roots) || !roots.every((r): r is string => typeof r === "string")) return null;
    return this.nix.closureBytes(roots);
  }
}
