// The local S3 endpoint (worker.ts) as one more worker of the local stack's Miniflare: bound to the same R2
// bucket as the registry worker (same bucket name, same r2Persist folder), listening on its own TCP port, so the
// builder writes blobs through the S3 API into the bucket the registry serves from, as it does with R2 in
// production.
//
//   const credentials = randomS3Credentials();
//   const s3 = await localS3EndpointWorker({ port: 0, bucket: "nix-edge-registry", credentials });
//   const miniflare = new Miniflare({ workers: [registryWorkerOptions, s3.options], r2Persist, ... });
//   const endpoint = await s3EndpointUrl(miniflare);   // http://127.0.0.1:<port>: the builder's S3_ENDPOINT
//
// Miniflare runs JavaScript only: worker.ts is bundled here (with aws4fetch) by wrangler's own esbuild, in
// memory, once per process.
import { randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import type { Miniflare, WorkerOptions } from "miniflare";

/** The worker's name among Miniflare's workers (what unsafeGetDirectURL and getR2Bucket take). */
const LOCAL_S3_WORKER_NAME = "local-s3-endpoint";
/** The binding the endpoint reaches R2 through: the registry worker's name for it (wrangler.toml). */
export const LOCAL_S3_BUCKET_BINDING = "REGISTRY_BUCKET";
/** The signing region the endpoint expects, as R2 does (us-east-1 and "" are accepted as aliases). */
const LOCAL_S3_REGION = "auto";
/** The compatibility date the endpoint runs with: no later than the workerd build Miniflare ships. */
const LOCAL_S3_COMPATIBILITY_DATE = "2026-04-26";

const WORKER_SOURCE = fileURLToPath(new URL("./worker.ts", import.meta.url));

export interface LocalS3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
}

export interface LocalS3EndpointOptions {
  /** TCP port to listen on; 0 picks a free one (read the URL back with s3EndpointUrl). */
  port: number;
  /** Address to listen on. Default 127.0.0.1. */
  host?: string;
  /**
   * The R2 bucket's name (wrangler.toml's bucket_name, nix-edge-registry): the endpoint is bound to that bucket
   * and the S3 API serves it under that name, as R2's does (the builder's S3_BUCKET).
   */
  bucket: string;
  credentials: LocalS3Credentials;
  /** The worker's name. Default LOCAL_S3_WORKER_NAME. */
  name?: string;
}

export interface LocalS3EndpointWorker {
  /** One entry for `new Miniflare({ workers: [...] })`. */
  options: WorkerOptions;
  /** Frees what the options hold (nothing at present: the bundle lives in memory); call after miniflare.dispose(). */
  dispose(): Promise<void>;
}

/** A fresh key pair, shaped as AWS's are (a 20-character key id, a 40-character secret). */
export function randomS3Credentials(): LocalS3Credentials {
  return {
    accessKeyId: `LOCAL${randomBytes(8).toString("hex").toUpperCase().slice(0, 15)}`,
    secretAccessKey: randomBytes(30).toString("base64url"),
  };
}

/** The subset of esbuild's API used here (the package is wrangler's, pinned by wrangler's version). */
interface Esbuild {
  build(options: Record<string, unknown>): Promise<{ outputFiles: { text: string }[] }>;
}

let bundled: Promise<string> | undefined;

/** worker.ts and aws4fetch as one ES module, built once per process. */
function bundleWorker(): Promise<string> {
  bundled ??= (async () => {
    // wrangler (a dependency of the local stack already) brings its own esbuild; resolving it through wrangler
    // gets that exact version rather than whichever another package hoisted.
    const fromWrangler = createRequire(createRequire(import.meta.url).resolve("wrangler"));
    const esbuild = fromWrangler("esbuild") as Esbuild;
    const result = await esbuild.build({
      entryPoints: [WORKER_SOURCE],
      bundle: true,
      write: false,
      format: "esm",
      platform: "browser",
      conditions: ["workerd", "worker", "browser"],
      target: "es2022",
      sourcemap: "inline",
      logLevel: "silent",
    });
    const [output] = result.outputFiles;
    if (!output) throw new Error(`bundling ${WORKER_SOURCE} produced no output`);
    return output.text;
  })();
  bundled.catch(() => {
    bundled = undefined;
  });
  return bundled;
}

/** Miniflare's options for the local S3 endpoint worker. */
export async function localS3EndpointWorker(options: LocalS3EndpointOptions): Promise<LocalS3EndpointWorker> {
  const { credentials, bucket } = options;
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket))
    throw new Error(`${bucket} is not a bucket name (3 to 63 of a-z, 0-9, '.', '-')`);
  if (!credentials.accessKeyId || !credentials.secretAccessKey)
    throw new Error("the local S3 endpoint needs an access key id and a secret");
  if (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535)
    throw new Error(`port ${options.port} is not a TCP port`);
  const script = await bundleWorker();
  const workerOptions: WorkerOptions = {
    name: options.name ?? LOCAL_S3_WORKER_NAME,
    compatibilityDate: LOCAL_S3_COMPATIBILITY_DATE,
    modulesRoot: dirname(WORKER_SOURCE),
    modules: [{ type: "ESModule", path: WORKER_SOURCE.replace(/\.ts$/, ".mjs"), contents: script }],
    bindings: {
      S3_ACCESS_KEY_ID: credentials.accessKeyId,
      S3_SECRET_ACCESS_KEY: credentials.secretAccessKey,
      S3_BUCKET: bucket,
    },
    // The bucket name is what Miniflare keys R2 storage by: the registry worker's binding to the same name
    // (and the same r2Persist) sees the same objects.
    r2Buckets: { [LOCAL_S3_BUCKET_BINDING]: bucket },
    unsafeDirectSockets: [{ host: options.host ?? "127.0.0.1", port: options.port }],
  };
  // eslint-disable-next-line @typescript-eslint/no-unsafe-assignment -- tsc resolves miniflare's WorkerOptions; the linter's program does not
  return { options: workerOptions, dispose: async () => undefined };
}

/** The endpoint's URL (http://host:port, no trailing slash): what the builder takes as S3_ENDPOINT. */
export async function s3EndpointUrl(miniflare: Miniflare, workerName: string = LOCAL_S3_WORKER_NAME): Promise<string> {
  return (await miniflare.unsafeGetDirectURL(workerName)).origin;
}

/** The builder's environment for writing into the endpoint (BUILDER_STORE=s3 and the S3_ settings). */
export function builderS3Environment(options: {
  endpoint: string;
  bucket: string;
  credentials: LocalS3Credentials;
}): Record<string, string> {
  return {
    BUILDER_STORE: "s3",
    S3_ENDPOINT: options.endpoint,
    S3_BUCKET: options.bucket,
    S3_ACCESS_KEY_ID: options.credentials.accessKeyId,
    S3_SECRET_ACCESS_KEY: options.credentials.secretAccessKey,
    S3_REGION: LOCAL_S3_REGION,
  };
}
