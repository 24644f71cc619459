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
  /** Time limit of one request to the channel service or the archive, answer included. Default 15 s. */
  requestTimeoutMs?: number;
}

/** A channel's git-revision is 40 hex digits and a newline; a longer answer is not one. */
const MAX_REVISION_BYTES = 1024;

/** Channel names as channels.nixos.org has them: nixos-unstable, nixos-24.05, nixpkgs-unstable, nixos-24.05-small... */
export const CHANNEL_NAME = /^(nixos|nixpkgs)-[a-z0-9.-]+$/;

export class ChannelSource implements PackageSource {
  readonly description: string;
  private readonly timeoutMs: number;

  constructor(private readonly options: ChannelSourceOptions) {
    this.description = options.archiveUrl.replace(/\/archive\/?$/, "");
    this.timeoutMs = options.requestTimeoutMs ?? 15_000;
  }

  async resolve(tag: string): Promise<ResolveResult | null> {
    const kind = classifyTag(tag);
    if (!kind) return null;
    if (kind.kind === "commit") {
      return (await this.archiveMissing(kind.commit))
        ? null
        : { revision: kind.commit, source: this.description, ttlSeconds: 0 };
    }
    const channel = kind.kind === "latest" ? this.options.defaultChannel : kind.ref;
    if (!CHANNEL_NAME.test(channel)) return null;
    const url = `${this.options.channelsUrl.replace(/\/$/, "")}/${channel}/git-revision`;
    let revision: string;
    try {
      // One signal for the whole exchange: a server that sends its headers and then stalls is cut off too.
      const response = await fetch(url, { redirect: "follow", signal: AbortSignal.timeout(this.timeoutMs) });
      if (response.status === 404) {
        await response.body?.cancel();
        return null;
      }
      if (!response.ok) {
        await response.body?.cancel();
        throw new Error(`the channel service answered ${response.status} for ${url}`);
      }
      revision = (await readAtMost(response, MAX_REVISION_BYTES, url)).trim();
    } catch (error) {
      if (error instanceof Error && error.name === "TimeoutError") {
        throw new Error(
          `the channel service at ${url} did not answer within its time limit of ${this.timeoutMs / 1000} s`,
          { cause: error },
        );
      }
      if (error instanceof TypeError)
        throw new Error(`cannot reach the channel service at ${url}: ${describeFetchError(error)}`, { cause: error });
      throw error;
    }
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
      const response = await fetch(this.archiveOf(commit), {
        method: "HEAD",
        redirect: "follow",
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      return response.status === 404 || response.status === 410;
    } catch {
      return false;
    }
  }
}

/** The body as text, refused once it is longer than `limit` bytes. */
async function readAtMost(response: Response, limit: number, url: string): Promise<string> {
  if (!response.body) return "";
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel();
      throw new Error(
        `the channel service's answer for ${url} is longer than ${limit} bytes; a git-revision is 40 hex digits`,
      );
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** Node's fetch says only "fetch failed"; the reason (ECONNREFUSED, a DNS failure) is its cause. */
function describeFetchError(error: TypeError): string {
  const cause = (error as TypeError & { cause?: unknown }).cause;
  return cause instanceof Error ? `${error.message}: ${cause.message}` : error.message;
}
