// The image's root filesystem: the top-level store paths joined into one tree of symlinks, as lndir or nixpkgs'
// buildEnv would, plus /tmp and /usr/bin/env. The root-filesystem layer is written from it (tarball.ts), and the
// image config reads it (manifest.ts: SSL_CERT_FILE, the default command).
//
// The rules, which fix the layer's bytes (images built before keep their digests):
// - Always first: /tmp (mode 1777), then, when some top-level path has bin/env, /usr/bin/env pointing to it: the
//   coreutils package's when the image has it, else the first top-level path's that has one.
// - Then every top-level path in order (earlier ones win conflicts): everything under it but a top-level
//   nix-support, walked without following symlinks. A directory becomes a directory, anything else (file or
//   symlink) a symlink to that file's path in the store path (not to the symlink's own target). A path already
//   taken keeps its entry, and nothing goes under a path that is not a directory (an earlier `lib` symlink hides
//   a later `lib/` directory's contents). A top-level path that is not a directory adds nothing.
// - A name holding a newline is left out, with everything under it, and reported (the earlier, line-based
//   implementation could not list it; including it now would change the layer of such an image).
// The entries come out sorted bytewise by path, so the result depends only on the store paths' contents.
import { lstat, readdir } from "node:fs/promises";
import type { ImageClosure } from "./closure.ts";
import { compareBytes } from "./tarball.ts";

/** One entry of the root-filesystem layer; `mode` (octal) only where it is not the default 0755. */
export type RootfsEntry =
  { path: string; type: "directory"; mode?: string } | { path: string; type: "symlink"; target: string };

export interface RootFilesystem {
  /** Sorted bytewise by path; every parent of an entry is a directory entry. */
  entries: RootfsEntry[];
  /** Files and folders of top-level paths left out because their name holds a newline. */
  leftOut: string[];
}

/** The store path /usr/bin/env is taken from first: the image's coreutils package, if it has one. */
function coreutilsOutput(closure: Pick<ImageClosure, "packages" | "resolved">): string | null {
  const name = Object.keys(closure.resolved).find((requested) => closure.resolved[requested] === "coreutils");
  return name === undefined ? null : (closure.packages[name] ?? null);
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
}

function parentOf(path: string): string {
  const slash = path.lastIndexOf("/");
  return slash > 0 ? path.slice(0, slash) : "/";
}

/** Everything under a store path (paths relative to it, starting with "/"): directories parent first, then the rest. */
async function listStorePath(
  storePath: string,
  leftOut: string[],
): Promise<{ directories: string[]; others: string[] }> {
  const directories: string[] = [];
  const others: string[] = [];
  const walk = async (relative: string): Promise<void> => {
    for (const child of await readdir(storePath + relative, { withFileTypes: true })) {
      if (relative === "" && child.name === "nix-support") continue;
      const path = `${relative}/${child.name}`;
      if (child.name.includes("\n")) {
        leftOut.push(storePath + path);
      } else if (child.isDirectory()) {
        directories.push(path);
        await walk(path);
      } else {
        others.push(path);
      }
    }
  };
  if ((await lstat(storePath)).isDirectory()) await walk("");
  return { directories, others };
}

export async function rootFilesystem(
  closure: Pick<ImageClosure, "topLevel" | "packages" | "resolved">,
): Promise<RootFilesystem> {
  const kinds = new Map<string, RootfsEntry["type"]>([["/", "directory"]]);
  const entries: RootfsEntry[] = [];
  const leftOut: string[] = [];
  const add = (entry: RootfsEntry): void => {
    if (kinds.has(entry.path) || kinds.get(parentOf(entry.path)) !== "directory") return;
    kinds.set(entry.path, entry.type);
    entries.push(entry);
  };

  add({ path: "/tmp", type: "directory", mode: "1777" });
  const coreutils = coreutilsOutput(closure);
  for (const storePath of coreutils === null ? closure.topLevel : [coreutils, ...closure.topLevel]) {
    if (!(await exists(`${storePath}/bin/env`))) continue;
    add({ path: "/usr", type: "directory" });
    add({ path: "/usr/bin", type: "directory" });
    add({ path: "/usr/bin/env", type: "symlink", target: `${storePath}/bin/env` });
    break;
  }
  for (const storePath of closure.topLevel) {
    const { directories, others } = await listStorePath(storePath, leftOut);
    for (const path of directories) add({ path, type: "directory" });
    for (const path of others) add({ path, type: "symlink", target: storePath + path });
  }
  return { entries: entries.sort((a, b) => compareBytes(a.path, b.path)), leftOut };
}
