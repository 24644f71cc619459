// The entries of deterministic layer tars: the same store paths give the same bytes on any machine, at any time.
// Entries are sorted by name (bytewise), parents come first, mtime is fixed, owners are 0 with no names,
// and modes come from the store's own rules (files 0444 or 0555, directories 0555), not from the host.
// tar-blocks.ts writes the tar of the entries.
import { lstat, readdir, readlink } from "node:fs/promises";
import { join } from "node:path";
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
  return entries.sort((a, b) => compareBytes(a.name, b.name));
}

/** Every entry of the given store paths (relative names, "nix/store/..."), with nix/ and nix/store/ first. */
export function storePathEntries(storePaths: readonly string[]): Promise<TarEntry[]> {
  return storePathEntriesUnder("", storePaths);
}

/** The same, reading the store from under another root folder (a copied or mounted store, or a test's). */
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

async function walk(path: string, name: string, into: TarEntry[]): Promise<void> {
  const info = await lstat(path);
  if (info.isSymbolicLink()) {
    into.push({ name, type: "symlink", mode: 0o777, target: await readlink(path) });
  } else if (info.isDirectory()) {
    into.push({ name, type: "directory", mode: 0o555 });
    for (const child of await readdir(path)) await walk(join(path, child), `${name}/${child}`, into);
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
