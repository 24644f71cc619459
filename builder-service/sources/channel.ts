// nixpkgs channels (the default source): a channel name or `latest` resolves to the channel's current
// commit through the channel service; a 40-hex tag pins a commit. Packages come from that commit's tarball.
import type { ResolveResult } from "../../common/builder-api.ts";
import { classifyTag } from "../../common/tag.ts";
import type { NixSource } from "../nix-runner.ts";
import type { PackageSource } from "./package-source.ts";

export interface ChannelSourceOptions {
  defaultChannel: string;
  /** Serves <channel>/git-revision, as https://channels.nixos.org does. */
  channelsUrl: string;
  /** <archiveUrl>/<commit>.tar.gz is the source tarball of a commit. */
  archiveUrl: string;
  ttlSeconds: number;
}

/** Channel names as channels.nixos.org has them: nixos-unstable, nixos-24.05, nixpkgs-unstable, nixos-24.05-small... */
export const CHANNEL_NAME = /^(nixos|nixpkgs)-[a-z0-9.-]+$/;

export class ChannelSource implements PackageSource {
  readonly description: string;

  constructor(private readonly options: ChannelSourceOptions) {
    this.description = options.archiveUrl.replace(/\/archive\/?$/, "");
  }

  async resolve(tag: string): Promise<ResolveResult | null> {
    const kind = classifyTag(tag);
    if (!kind) return null;
    if (kind.kind === "commit") {
      return (await this.archiveMissing(kind.commit)) ? null : { revision: kind.commit, source: this.description, ttlSeconds: 0 };
    }
    const channel = kind.kind === "latest" ? this.options.defaultChannel : kind.ref;
    if (!CHANNEL_NAME.test(channel)) return null;
    const url = `${this.options.channelsUrl.replace(/\/$/, "")}/${channel}/git-revision`;
    let response: Response;
    try {
      response = await fetch(url, { redirect: "follow", signal: AbortSignal.timeout(15_000) });
    } catch (error) {
      throw new Error(`cannot reach the channel service at ${url}: ${(error as Error).message}`);
    }
    if (response.status === 404) return null;
    if (!response.ok) throw new Error(`the channel service answered ${response.status} for ${url}`);
    const revision = (await response.text()).trim();
    if (!/^[0-9a-f]{40}$/.test(revision)) throw new Error(`the channel service returned no commit for ${channel}`);
    return { revision, source: this.description, ttlSeconds: this.options.ttlSeconds };
  }

  async nixSource(revision: string): Promise<NixSource> {
    return { kind: "tarball", url: this.archiveOf(revision) };
  }

  private archiveOf(commit: string): string {
    return `${this.options.archiveUrl.replace(/\/$/, "")}/${commit}.tar.gz`;
  }

  /**
   * Whether the archive says it has no tarball for the commit (so the tag is a 404 and nothing is built).
   * A HEAD request: GitHub answers 404 for a commit it doesn't know. Anything but a clear 404 (timeouts,
   * 5xx, a server without HEAD) lets the commit through: the build then says what went wrong.
   */
  private async archiveMissing(commit: string): Promise<boolean> {
    try {
      const response = await fetch(this.archiveOf(commit), { method: "HEAD", redirect: "follow", signal: AbortSignal.timeout(15_000) });
      return response.status === 404 || response.status === 410;
    } catch {
      return false;
    }
  }
}
