// Checks a deployed registry from the outside, as a client sees it: the worker answers, it reaches a builder that
// builds from the package source and writes into the bucket, and the image it serves is whole. Stops at the first
// failure with what to fix.
//
//   npm run smoke -- https://registry.example.com [--image NAME] [--insecure] [--creds USER:PASSWORD]
//
// With pull authentication on, --creds (or the variable REGISTRY_CREDS, which keeps the password out of `ps`) gives
// a user of PULL_CREDENTIALS; it is sent as Basic credentials with every request, which the registry takes.
import { createHash } from "node:crypto";
import { parseArgs } from "node:util";
import { isDigest } from "../common/digest.ts";
import { OCI_MANIFEST } from "../common/media-types.ts";
import type { Descriptor, ImageManifest } from "../common/oci.ts";
import { isRegistryErrorBody, type RegistryError } from "../common/registry-errors.ts";

const USAGE = "usage: npm run smoke -- <registry URL> [--image NAME] [--insecure] [--creds USER:PASSWORD]";

/** Sent with every request: Basic credentials from --creds or REGISTRY_CREDS, or nothing. */
const credentialHeaders: Record<string, string> = {};

/** A failed check: `message` says what to fix. */
class CheckFailed extends Error {}

async function check<T>(name: string, run: () => Promise<T>): Promise<T> {
  const started = performance.now();
  const took = () => `${((performance.now() - started) / 1000).toFixed(2)} s`;
  try {
    const result = await run();
    console.log(`✓ ${name} (${took()})`);
    return result;
  } catch (error) {
    console.log(`✗ ${name} (${took()})`);
    throw error;
  }
}

/** fetch, with a network failure (DNS, refused, TLS) turned into a failed check naming the URL. */
async function get(url: string, headers: Record<string, string> = {}): Promise<Response> {
  try {
    return await fetch(url, { headers: { ...credentialHeaders, ...headers }, signal: AbortSignal.timeout(300_000) });
  } catch (error) {
    const cause = error instanceof Error && error.cause instanceof Error ? `: ${error.cause.message}` : "";
    const hint = /certificate/i.test(cause) ? " (a local stack's self-signed certificate: add --insecure)" : "";
    throw new CheckFailed(`GET ${url} failed: ${String(error)}${cause}${hint}`);
  }
}

async function checkApi(registry: string): Promise<void> {
  const url = `${registry}/v2/`;
  const response = await get(url);
  const version = response.headers.get("Docker-Distribution-API-Version");
  if (version === "registry/2.0" && (response.status === 401 || response.status === 403)) {
    const body: unknown = await response.json().catch(() => null);
    const error = isRegistryErrorBody(body) ? body.errors[0] : undefined;
    if (response.status === 403 && error?.code === "DENIED") {
      throw new CheckFailed(
        `GET ${url} answered 403: ${error.message}. Fix PULL_CREDENTIALS or PULL_AUTH (deploy/README.md#pull-authentication-optional)`,
      );
    }
    throw new CheckFailed(
      credentialHeaders.Authorization === undefined
        ? `GET ${url} answered ${response.status}: the registry needs credentials (pull authentication is on); give a user of PULL_CREDENTIALS with --creds USER:PASSWORD or REGISTRY_CREDS`
        : `GET ${url} answered ${response.status}: the registry refused the credentials given; check the user and password against PULL_CREDENTIALS`,
    );
  }
  await response.body?.cancel();
  if (response.status !== 200 || version !== "registry/2.0") {
    throw new CheckFailed(
      `GET ${url} answered ${response.status} with Docker-Distribution-API-Version ${JSON.stringify(version)}, not 200 with "registry/2.0": ` +
        "the URL is not this registry (a typo, or DNS pointing elsewhere), or the worker is not deployed on it " +
        "(npx wrangler deploy; a custom domain under the worker's Settings → Domains & Routes)",
    );
  }
}

/** What to fix for a registry error on the manifest pull. */
function explain(status: number, error: RegistryError, image: string, bodyText: string): string {
  const detail =
    typeof error.detail === "object" && error.detail !== null ? (error.detail as Record<string, unknown>) : {};
  const underId = typeof detail.id === "string" ? ` under id ${detail.id}` : "";
  if (status === 503 && error.code === "BUILDER_UNAVAILABLE") {
    return (
      "the worker cannot reach the builder (check BUILDER_URL, the tunnel/proxy in front of the builder, and that builder-service " +
      `is running: systemctl status builder-service); the worker's log (wrangler tail) has details${underId}`
    );
  }
  // The worker hides why a builder's answer was unusable; its usual cause is a refused signature, which the client
  // sees as these two messages (worker/resolutions.ts, worker/build-coordinator.ts).
  if (
    status === 500 &&
    error.code === "UNKNOWN" &&
    /^(resolving tag "[^"]*"|building image \S+) failed/.test(error.message)
  ) {
    return (
      `the worker's call to the builder failed (${error.message}). Most often the builder refused the worker's requests: ` +
      "BUILDER_SECRET must be the same on both sides (wrangler secret put BUILDER_SECRET; /etc/nix-edge-registry/builder.env), " +
      `and both clocks right. The worker's log (wrangler tail) says which${underId}`
    );
  }
  if (error.code === "BUILD_FAILED" && error.message.includes("could not write the image into the bucket")) {
    return (
      "the builder cannot write into the R2 bucket: check its S3_* settings (/etc/nix-edge-registry/builder.env) and that the " +
      `R2 API token may read and write that bucket; the builder's log (journalctl -u builder-service) has details${underId}`
    );
  }
  if (error.code === "NIX_TOO_OLD") {
    return `the builder's Nix is too old for the package source: ${error.message}`;
  }
  if (status === 404 && error.code === "MANIFEST_UNKNOWN") {
    return `the package set does not have "${image}" (${error.message}); pick a package it has with --image NAME`;
  }
  return `the registry answered ${status}: ${bodyText}`;
}

async function pullManifest(registry: string, image: string): Promise<ImageManifest> {
  const url = `${registry}/v2/${image}/manifests/latest`;
  const response = await get(url, { Accept: OCI_MANIFEST });
  const text = await response.text();
  let body: unknown;
  try {
    body = JSON.parse(text) as unknown;
  } catch {
    throw new CheckFailed(`GET ${url} answered ${response.status} with a body that is not JSON: ${text.slice(0, 500)}`);
  }
  if (response.status !== 200) {
    if (!isRegistryErrorBody(body))
      throw new CheckFailed(`GET ${url} answered ${response.status}: ${text.slice(0, 500)}`);
    throw new CheckFailed(explain(response.status, body.errors[0], image, text));
  }
  const manifest = body as Partial<ImageManifest>;
  const isDescriptor = (d: Partial<Descriptor> | undefined) =>
    typeof d?.digest === "string" && isDigest(d.digest) && Number.isSafeInteger(d.size);
  if (
    manifest.mediaType !== OCI_MANIFEST ||
    !isDescriptor(manifest.config) ||
    !Array.isArray(manifest.layers) ||
    !manifest.layers.every(isDescriptor)
  ) {
    throw new CheckFailed(
      `GET ${url} answered 200 with something that is not an OCI image manifest: ${text.slice(0, 500)}`,
    );
  }
  return manifest as ImageManifest;
}

/** Fetches a blob and hashes it as it arrives; fails unless its digest and size are the descriptor's. */
async function checkBlob(registry: string, image: string, descriptor: Descriptor): Promise<void> {
  const url = `${registry}/v2/${image}/blobs/${descriptor.digest}`;
  const response = await get(url);
  if (response.status !== 200 || !response.body) {
    throw new CheckFailed(`GET ${url} answered ${response.status}: ${(await response.text()).slice(0, 500)}`);
  }
  const hash = createHash("sha256");
  let size = 0;
  for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
    hash.update(chunk);
    size += chunk.byteLength;
  }
  const digest = `sha256:${hash.digest("hex")}`;
  if (digest !== descriptor.digest || size !== descriptor.size) {
    throw new CheckFailed(
      `GET ${url} served ${size} bytes with digest ${digest}, where the manifest says ${descriptor.size} bytes with ${descriptor.digest}: ` +
        "the bucket holds a damaged blob",
    );
  }
}

function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      image: { type: "string", default: "hello" },
      // For a local stack's self-signed certificate (TLS=1) only.
      insecure: { type: "boolean", default: false },
      creds: { type: "string", default: process.env.REGISTRY_CREDS },
    },
  });
  if (values.creds !== undefined) {
    if (!values.creds.includes(":")) throw new CheckFailed(`--creds takes USER:PASSWORD\n${USAGE}`);
    credentialHeaders.Authorization = `Basic ${Buffer.from(values.creds).toString("base64")}`;
  }
  if (positionals.length !== 1 || !/^https?:\/\//.test(positionals[0])) throw new CheckFailed(USAGE);
  const registry = positionals[0].replace(/\/+$/, "");
  const image = values.image;
  // Node's fetch has no per-request option for this; TLS reads the variable at each connection.
  if (values.insecure) process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0";

  const started = performance.now();
  await check(`${registry}/v2/ answers as a registry`, () => checkApi(registry));
  const manifest = await check(`the worker reaches a builder, which builds ${image}:latest`, () =>
    pullManifest(registry, image),
  );
  const blobs = [manifest.config, ...manifest.layers];
  await check(
    `${blobs.length} blobs (config and ${manifest.layers.length} layers) match their digests and sizes`,
    async () => {
      for (const blob of blobs) await checkBlob(registry, image, blob);
    },
  );
  const bytes = blobs.reduce((sum, blob) => sum + blob.size, 0);
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  console.log(
    `registry OK: ${registry} built and served ${image} (${manifest.layers.length} layers, ${formatBytes(bytes)}) in ${seconds} s`,
  );
}

main().catch((error: unknown) => {
  console.error(error instanceof CheckFailed ? error.message : error);
  process.exit(1);
});
