// A Nix binary cache over HTTP whose downloads come at a set rate, all of them together, as from a remote cache
// behind a slow link: the builder's Nix substitutes from it as it would from cache.nixos.org, and waits on it.
// Made from store paths with `nix copy --to file://DIR`; the paths are then deleted from the local store, so that
// Nix must download them again. Used by test/fetched-layers.test.ts and `npm run bench -- fetched`.
import { execFile } from "node:child_process";
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer } from "node:http";
import { join, normalize } from "node:path";
import { promisify } from "node:util";
import { listenLocally } from "./local-server.ts";

const execFileAsync = promisify(execFile);

/** Bytes sent at a time: the pacing's grain. */
const CHUNK_BYTES = 64 * 1024;

export interface PacedBinaryCache {
  /** The substituter's URL, for NIX_CONFIG's `substituters`. */
  url: string;
  /** NAR bytes sent so far. */
  readonly bytesServed: number;
  close(): Promise<void>;
}

/**
 * Serves the binary cache in `dir` on 127.0.0.1. NAR files (the downloads) share `bytesPerSecond` between them:
 * every chunk of any of them takes its turn on one clock. nix-cache-info and .narinfo files come unpaced.
 */
export async function startPacedBinaryCache(dir: string, bytesPerSecond: number): Promise<PacedBinaryCache> {
  let clock = 0;
  let bytesServed = 0;
  /** Waits for the link to be free for `bytes`, then books it. */
  const turn = async (bytes: number) => {
    const now = performance.now();
    clock = Math.max(clock, now) + (bytes / bytesPerSecond) * 1000;
    const wait = clock - now - (bytes / bytesPerSecond) * 1000;
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  };
  const server = createServer((request, response) => {
    const path = normalize(decodeURIComponent((request.url ?? "/").split("?")[0]));
    const file = join(dir, path);
    if (!file.startsWith(dir) || (request.method !== "GET" && request.method !== "HEAD")) {
      response.writeHead(404).end();
      return;
    }
    void (async () => {
      const info = await stat(file).catch(() => null);
      if (!info?.isFile()) {
        response.writeHead(404).end();
        return;
      }
      response.writeHead(200, { "content-length": info.size });
      if (request.method === "HEAD") {
        response.end();
        return;
      }
      const paced = path.startsWith("/nar/");
      const stream = createReadStream(file, { highWaterMark: CHUNK_BYTES });
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        if (paced) await turn(chunk.length);
        if (response.destroyed) break;
        bytesServed += paced ? chunk.length : 0;
        if (!response.write(chunk)) await new Promise((resolve) => response.once("drain", resolve));
      }
      stream.destroy();
      response.end();
    })().catch(() => response.destroy());
  });
  const { url, close } = await listenLocally(server);
  return {
    url,
    get bytesServed() {
      return bytesServed;
    },
    close,
  };
}

/** The closure of store paths (themselves and everything they refer to). */
export async function storeClosure(paths: readonly string[], env: NodeJS.ProcessEnv): Promise<string[]> {
  const { stdout } = await execFileAsync("nix-store", ["--query", "--requisites", ...paths], { env });
  return stdout.split("\n").filter(Boolean);
}

/** Copies the closures of `paths` into a binary cache in `dir` (zstd-compressed NARs, unsigned). */
export async function copyToBinaryCache(dir: string, paths: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  await execFileAsync("nix", ["copy", "--to", `file://${dir}?compression=zstd`, ...paths], {
    env,
    maxBuffer: 16 * 1024 * 1024,
  });
}

/**
 * Deletes `paths` from the local store with every valid path that refers to them (an image's metadata output), so
 * that Nix must fetch them again. Only for paths no one else uses (a salted set's): the store is the machine's. They
 * must have no GC roots; nix-store says which one keeps a path alive.
 */
export async function deleteFromStore(paths: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  const { stdout } = await execFileAsync("nix-store", ["--query", "--referrers-closure", ...paths], {
    env,
    maxBuffer: 16 * 1024 * 1024,
  });
  const all = stdout.split("\n").filter(Boolean);
  await execFileAsync("nix-store", ["--delete", ...all], { env, maxBuffer: 16 * 1024 * 1024 });
}

/** Of `paths`, the ones that are valid in the local store. */
export async function validPaths(paths: readonly string[], env: NodeJS.ProcessEnv): Promise<string[]> {
  const { stdout } = await execFileAsync("nix-store", ["--check-validity", "--print-invalid", ...paths], { env });
  const invalid = new Set(stdout.split("\n").filter(Boolean));
  return paths.filter((path) => !invalid.has(path));
}
