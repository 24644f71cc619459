// A package set in a local folder (NIXERY_PKGS_PATH): the offline test set, or a private checkout.
// Its revision is the folder's content hash, taken by copying it into the Nix store, so an edited folder
// gives new images and an unchanged one keeps its cached ones.
import { execFile } from "node:child_process";
import { access } from "node:fs/promises";
import { join, resolve as resolvePath } from "node:path";
import { promisify } from "node:util";
import type { ResolveResult } from "../../common/builder-api.ts";
import type { NixSource } from "../nix-runner.ts";
import { RevisionUnavailableError, type PackageSource } from "./package-source.ts";

const execFileAsync = promisify(execFile);

export class LocalPathSource implements PackageSource {
  readonly description: string;
  private readonly path: string;

  constructor(
    path: string,
    private readonly ttlSeconds: number,
  ) {
    this.path = resolvePath(path);
    this.description = `file://${this.path}`;
  }

  async check(): Promise<void> {
    try {
      await access(join(this.path, "default.nix"));
    } catch {
      throw new Error(`NIXERY_PKGS_PATH=${this.path} holds no default.nix; point it at a package set such as nix/test-pkgs`);
    }
  }

  private async snapshot(): Promise<string> {
    const { stdout } = await execFileAsync("nix-store", ["--add", this.path]);
    return stdout.trim();
  }

  async resolve(tag: string): Promise<ResolveResult | null> {
    // A folder has no history: only its current state is served, under `latest`.
    if (tag !== "latest") return null;
    const storePath = await this.snapshot();
    return { revision: storePath.slice("/nix/store/".length, "/nix/store/".length + 32), source: this.description, ttlSeconds: this.ttlSeconds };
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
