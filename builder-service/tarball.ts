// The entries of deterministic layer tars: the same store paths give the same bytes on any machine, at any time.
// Entries are sorted by name (bytewise), parents come first, mtime is fixed, owners are 0 with no names,
// and modes come from the store's own rules (files 0444 or 0555, directories 0555), not from the host.
// tar-blocks.ts writes the tar of the entries.
import { lstatSync, readdirSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import { setImmediate } from "node:timers/promises";
import type { RootfsEntry } from "./root-filesystem.ts";

/** Nix's own timestamp for store contents (1 second after the epoch). */
export const FIXED_MTIME = new Date(1000);

/**
 * Bump when the bytes a layer's tarball gets for the same store paths change (entry order, modes, mtime, gzip),
 * so that layers recorded under the old format are written again instead of reused. 2: compressed in 1 MiB blocks,
 * each its own gzip member (block-compression.ts), instead of one gzip stream.
 */
export const LAYER_FORMAT_VERSION = 2;

export type TarEntry =
  | { name: string; type: "directory"; mode: number }
  | { name: string; type: "symlink"; mode: number; target: string }
  | { name: string; type: "file"; mode: number; size: number; source: string };

/** Orders names by their UTF-8 bytes, as the file names' own bytes sort (not by UTF-16 code units). */
export function compareBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function sortEntries<T extends { name: string }>(entries: T[]): T[] {
  // Each name's bytes once, not once per comparison.
  const keyed = entries.map((entry) => ({ entry, key: Buffer.from(entry.name) }));
  keyed.sort((a, b) => Buffer.compare(a.key, b.key));
  return keyed.map(({ entry }) => entry);
}

/** Every entry of the given store paths (relative names, "nix/store/..."), with nix/ and nix/store/ first. */
export function storePathEntries(storePaths: readonly string[]): Promise<TarEntry[]> {
  return storePathEntriesUnder("", storePaths);
}

/**
 * The same, reading the store from under another root folder (a copied or mounted store, or a test's).
 *
 * The tree is read with synchronous calls: just built by Nix, it is in the page cache, where an entry takes about
 * 10 microseconds, while an asynchronous call waits for a thread of libuv's pool, which is busy compressing other
 * layers' blocks. The walk lets the event loop run every ENTRIES_BETWEEN_YIELDS entries (a few milliseconds).
 */
export async function storePathEntriesUnder(root: string, storePaths: readonly string[]): Promise<TarEntry[]> {
  const entries: TarEntry[] = [
    { name: "nix", type: "directory", mode: 0o555 },
    { name: "nix/store", type: "directory", mode: 0o555 },
  ];
  for (const storePath of storePaths) {
    if (!/^\/nix\/store\/[0-9a-z]{32}-[^/]+$/.test(storePath)) throw new Error(`not a store path: ${storePath}`);
    await walk(root + storePath, storePath.slice(1), entries);
  }
  return sortEntries(entries);
}

const ENTRIES_BETWEEN_YIELDS = 500;

async function walk(path: string, name: string, into: TarEntry[]): Promise<void> {
  if (into.length % ENTRIES_BETWEEN_YIELDS === 0) await setImmediate();
  const info = lstatSync(path);
  if (info.isSymbolicLink()) {
    into.push({ name, type: "symlink", mode: 0o777, target: readlinkSync(path) });
  } else if (info.isDirectory()) {
    into.push({ name, type: "directory", mode: 0o555 });
    for (const child of readdirSync(path)) await walk(join(path, child), `${name}/${child}`, into);
  } else if (info.isFile()) {
    into.push({ name, type: "file", mode: info.mode & 0o111 ? 0o555 : 0o444, size: info.size, source: path });
  } else {
    throw new Error(`${path} is neither a file, a directory nor a symlink; the Nix store holds nothing else`);
  }
}

/** The entries of the root-filesystem layer. Directories are writable like any system's (0755, /tmp 1777). */
export function rootfsEntries(rootfs: readonly RootfsEntry[]): TarEntry[] {
  const entries = rootfs.map((entry): TarEntry => {
    const name = entry.path.replace(/^\/+/, "");
    if (entry.type === "directory") {
      return { name, type: "directory", mode: entry.mode ? parseInt(entry.mode, 8) : 0o755 };
    }
    return { name, type: "symlink", mode: 0o777, target: entry.target };
  });
  return sortEntries(entries);
}
