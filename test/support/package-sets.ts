// Package sets for the source tests: a git repository of the offline test set made on the spot, and a
// stand-in for the nixpkgs channel service and GitHub's source archives (a local HTTP server).
import { execFile } from "node:child_process";
import { cp, mkdir, readFile, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { OCI_MANIFEST } from "../../common/media-types.ts";
import type { ImageConfig, ImageManifest } from "../../common/oci.ts";
import { TEST_PKGS } from "./stack.ts";

const execFileAsync = promisify(execFile);

/** package-sets/test-pkgs/default.nix with hello printing `message` instead of "Hello, world!". */
export async function testPkgsWithHello(message: string): Promise<string> {
  if (message.includes("'")) throw new Error("the message goes into single quotes");
  const original = await readFile(join(TEST_PKGS, "default.nix"), "utf8");
  const changed = original.replace("echo 'Hello, world!'", `echo '${message}'`);
  if (changed === original) throw new Error("package-sets/test-pkgs/default.nix no longer has hello's echo line");
  return changed;
}

/** A git repository holding a copy of the test package set, on branch main. */
export class PackageSetRepo {
  private constructor(readonly dir: string) {}

  static async create(dir: string): Promise<PackageSetRepo> {
    await mkdir(dir, { recursive: true });
    const repo = new PackageSetRepo(dir);
    await repo.git("init", "--quiet", "--initial-branch=main");
    return repo;
  }

  get url(): string {
    return `file://${this.dir}`;
  }

  async git(...args: string[]): Promise<string> {
    const identity = ["-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"];
    const { stdout } = await execFileAsync("git", [...identity, "-C", this.dir, ...args]);
    return stdout.trim();
  }

  /** Commits the test set with hello printing `message`; returns the commit. */
  async commitHello(message: string): Promise<string> {
    await writeFile(join(this.dir, "default.nix"), await testPkgsWithHello(message));
    await this.git("add", "default.nix");
    await this.git("commit", "--quiet", "-m", `hello says: ${message}`);
    return this.git("rev-parse", "HEAD");
  }
}

/**
 * The internet, played by a local HTTP server: `/<channel>/git-revision` as channels.nixos.org answers it,
 * and `/archive/<commit>.tar.gz` as GitHub serves nixpkgs' source archives (one top-level folder).
 */
export class ChannelService {
  readonly channels = new Map<string, string>();
  private readonly archives = new Map<string, Buffer>();
  /** "METHOD path" of every request, in order. */
  readonly requests: string[] = [];

  private constructor(
    private readonly server: Server,
    private readonly scratch: string,
  ) {}

  static async start(scratch: string): Promise<ChannelService> {
    // Requests come only after listen(), by which time the service below exists.
    const server = createServer((request, response) =>
      service.handle(request.method ?? "GET", request.url ?? "/", response),
    );
    const service = new ChannelService(server, scratch);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return service;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Publishes the test set with hello printing `message` as the source archive of `commit`. */
  async addArchive(commit: string, helloMessage: string): Promise<void> {
    const top = `nixpkgs-${commit}`;
    await mkdir(join(this.scratch, top), { recursive: true });
    await writeFile(join(this.scratch, top, "default.nix"), await testPkgsWithHello(helloMessage));
    const tarball = join(this.scratch, `${commit}.tar.gz`);
    await execFileAsync("tar", ["-czf", tarball, "-C", this.scratch, top]);
    this.archives.set(commit, await readFile(tarball));
  }

  /**
   * Publishes a package-set folder (e.g. package-sets/test-nixpkgs) as the source archive of `commit`, with some of its
   * files replaced (`{ "lib/minver.nix": '"2.0"' }`).
   */
  async addFolderArchive(commit: string, folder: string, replaced: Record<string, string> = {}): Promise<void> {
    const top = `nixpkgs-${commit}`;
    await cp(folder, join(this.scratch, top), { recursive: true });
    for (const [path, text] of Object.entries(replaced)) await writeFile(join(this.scratch, top, path), text);
    const tarball = join(this.scratch, `${commit}.tar.gz`);
    await execFileAsync("tar", ["-czf", tarball, "-C", this.scratch, top]);
    this.archives.set(commit, await readFile(tarball));
  }

  private handle(method: string, url: string, response: import("node:http").ServerResponse): void {
    this.requests.push(`${method} ${url}`);
    const revision = /^\/([^/]+)\/git-revision$/.exec(url);
    const archive = /^\/archive\/([0-9a-f]{40})\.tar\.gz$/.exec(url);
    if (revision && this.channels.has(revision[1])) {
      response.writeHead(200, { "content-type": "text/plain" }).end(this.channels.get(revision[1]));
    } else if (archive && this.archives.has(archive[1])) {
      const bytes = this.archives.get(archive[1])!;
      response.writeHead(200, { "content-type": "application/x-gzip", "content-length": bytes.length }).end(bytes);
    } else {
      response.writeHead(404, { "content-type": "text/plain" }).end("Not Found");
    }
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

export interface FetchedManifest {
  status: number;
  digest: string | null;
  manifest: ImageManifest;
  /** The error body's first error, for non-200 answers. */
  error?: { code: string; message: string; detail?: unknown };
}

/** GET of an OCI manifest by tag, straight over HTTP (what a client's first request is). */
export async function getManifest(registryUrl: string, name: string, tag: string): Promise<FetchedManifest> {
  const response = await fetch(`${registryUrl}/v2/${name}/manifests/${tag}`, { headers: { accept: OCI_MANIFEST } });
  const body = (await response.json()) as ImageManifest & { errors?: FetchedManifest["error"][] };
  return {
    status: response.status,
    digest: response.headers.get("docker-content-digest"),
    manifest: body,
    error: body.errors?.[0],
  };
}

/** The image config a manifest names. */
export async function getConfig(registryUrl: string, name: string, manifest: ImageManifest): Promise<ImageConfig> {
  const response = await fetch(`${registryUrl}/v2/${name}/blobs/${manifest.config.digest}`);
  if (response.status !== 200)
    throw new Error(`config ${manifest.config.digest}: ${response.status} ${await response.text()}`);
  return (await response.json()) as ImageConfig;
}
