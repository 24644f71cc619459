// A package set in a local folder (NIXERY_PKGS_PATH): the offline test set, or a private checkout.
// Its revision is the folder's content hash, taken by copying it into the Nix store, so an edited folder
// gives new images and an unchanged one keeps its cached ones.
import { access } from "node:fs/promises";
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

  private async snapshot(): Promise<string> {
    const added = await runCommand("nix-store", ["--add", this.path], {
      label: "nix-store --add",
      timeoutMs: this.nixTimeoutSeconds * 1000,
      setting: "NIX_TIMEOUT",
      maxStdoutBytes: 1024 * 1024,
    });
    if (added.code !== 0) throw new Error(`nix-store --add ${this.path} failed: ${added.stderr.trim().slice(-1000)}`);
    return added.stdout.trim();
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
