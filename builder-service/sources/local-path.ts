// A package set in a local folder (NIXERY_PKGS_PATH): the offline test set, or a private checkout.
// Its revision is the folder's content hash, taken by copying it into the Nix store, so an edited folder
// gives new images and an unchanged one keeps its cached ones.
//
// The copy (`nix-store --add`) reads and hashes every byte: 0.1 s for the test sets, seconds for a nixpkgs
// checkout, and it is asked for at every resolve and again as each build starts. So the folder's metadata is
// fingerprinted (every entry's path, type, size, mode, inode and change times: an edit, a chmod or a file
// replaced all change them), and while it is unchanged the last copy's store path is taken again.
import { createHash } from "node:crypto";
import { access, lstat, readdir } from "node:fs/promises";
import { join, resolve as resolvePath } from "node:path";
import type { ResolveResult } from "../../common/builder-api.ts";
import type { NixSource } from "../nix-runner.ts";
import { runCommand } from "../time-limited-command.ts";
import { RevisionUnavailableError, type PackageSource } from "./package-source.ts";

export class LocalPathSource implements PackageSource {
  readonly description: string;
  private readonly path: string;

  constructor(
    path: string,
    private readonly ttlSeconds: number,
    /** Time limit of copying the folder into the store: the builder's NIX_TIMEOUT. */
    private readonly nixTimeoutSeconds = 600,
  ) {
    this.path = resolvePath(path);
    this.description = `file://${this.path}`;
  }

  async check(): Promise<void> {
    try {
      await access(join(this.path, "default.nix"));
    } catch {
      throw new Error(
        `NIXERY_PKGS_PATH=${this.path} holds no default.nix; point it at a package set such as package-sets/test-pkgs`,
      );
    }
  }

  /** The last copy of the folder, and the fingerprint the folder had just before it was made. */
  private lastCopy: { fingerprint: string; storePath: string } | null = null;

  private async snapshot(): Promise<string> {
    const fingerprint = await folderFingerprint(this.path);
    const last = this.lastCopy;
    // The store path must still be there (a collection of the store may have taken it since).
    if (last && last.fingerprint === fingerprint && (await exists(last.storePath))) return last.storePath;
    const added = await runCommand("nix-store", ["--add", this.path], {
      label: "nix-store --add",
      timeoutMs: this.nixTimeoutSeconds * 1000,
      setting: "NIX_TIMEOUT",
      maxStdoutBytes: 1024 * 1024,
    });
    if (added.code !== 0) throw new Error(`nix-store --add ${this.path} failed: ${added.stderr.trim().slice(-1000)}`);
    const storePath = added.stdout.trim();
    // Taken before the copy: an edit during the copy changes the next fingerprint, and the folder is copied again.
    this.lastCopy = { fingerprint, storePath };
    return storePath;
  }

  async resolve(tag: string): Promise<ResolveResult | null> {
    // A folder has no history: only its current state is served, under `latest`.
    if (tag !== "latest") return null;
    const storePath = await this.snapshot();
    return {
      revision: storePath.slice("/nix/store/".length, "/nix/store/".length + 32),
      source: this.description,
      ttlSeconds: this.ttlSeconds,
    };
  }

  async nixSource(revision: string): Promise<NixSource> {
    const storePath = await this.snapshot();
    if (!storePath.startsWith(`/nix/store/${revision}-`)) {
      throw new RevisionUnavailableError(
        `the package set in ${this.path} changed since revision ${revision} was resolved; pull the tag again`,
      );
    }
    return { kind: "path", path: storePath };
  }
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/** A hash of the metadata of every entry under `root` (root included), in a fixed order; contents are not read. */
export async function folderFingerprint(root: string): Promise<string> {
  // Each folder's entries are read at once (a nixpkgs checkout has some 40,000), and hashed in name order.
  const lines = async (relative: string): Promise<string[]> => {
    const path = relative === "" ? root : `${root}/${relative}`;
    const stat = await lstat(path, { bigint: true });
    const kind = stat.isDirectory() ? "d" : stat.isSymbolicLink() ? "l" : stat.isFile() ? "f" : "o";
    const line = `${relative}\0${kind}\0${stat.size}\0${stat.mode}\0${stat.ino}\0${stat.mtimeNs}\0${stat.ctimeNs}\n`;
    if (kind !== "d") return [line];
    const names = (await readdir(path)).sort();
    const below = await Promise.all(names.map((name) => lines(relative === "" ? name : `${relative}/${name}`)));
    return [line, ...below.flat()];
  };
  const hash = createHash("sha256");
  for (const line of await lines("")) hash.update(line);
  return hash.digest("hex");
}
