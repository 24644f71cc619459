// Issue: speak the registry protocol exactly: every route, every header, every error.
//
// A table of requests walks the pull side of the distribution API against the worker in workerd (one stack for
// the file: the real builder with real Nix and the offline package set). Every row checks status, the exact
// Content-Type, Content-Length (equal to the body on GET), Docker-Content-Digest (equal to the body's sha256 on a
// 200 GET), and for errors the registry error body. Most rows come as a GET/HEAD pair: the HEAD row checks that
// there is no body and that every header equals the GET's. Many come again with `?ns=docker.io` appended, as
// containerd's mirrors send it. Digests in the table are the real ones of hello:latest, read in beforeAll.
//
// Rows run in order; the last table runs after the builder has been stopped. Blobs come from R2 only (the builder
// writes every blob there before the manifest that names it): no blob row may make a request to the builder.
//
// Requests say `Accept-Encoding: identity` unless a row says otherwise, so that the worker's own framing is what
// is checked. For a client that accepts gzip (Go's net/http asks for it by default), Cloudflare's edge, and
// wrangler's local server imitating it, compress the application/json responses (errors, tags/list, /v2/):
// chunked, with no Content-Length. Manifest and blob media types are not in that list; the gzip rows check that
// they keep their exact bytes and Content-Length.
import { AwsClient } from "aws4fetch";
import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { blobKey } from "../common/bucket-layout.ts";
import type { Digest } from "../common/digest.ts";
import { DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST } from "../common/media-types.ts";
import type { ImageManifest } from "../common/oci.ts";
import type { RegistryErrorCode } from "../common/registry-errors.ts";
import { withWorkerR2 } from "./support/local-r2.ts";
import { startTestStack, type TestStack } from "./support/stack.ts";

let stack: TestStack;

// ---------------------------------------------------------------------------------------------------------------
// Fixtures: the real digests and bytes of hello:latest, read once in beforeAll.

interface Blob {
  digest: string;
  bytes: Uint8Array;
}

interface Fixtures {
  oci: Blob & { manifest: ImageManifest };
  docker: Blob & { manifest: ImageManifest };
  config: Blob;
  /** A layer fetched in full through the worker in beforeAll (so it is in R2, or on its way). */
  layer: Blob;
  /**
   * A layer the worker has not served before the table reaches it, read from the bucket through its S3 API (as the
   * builder wrote it there).
   */
  unfetched: Blob;
}

let f: Fixtures;

const ZERO_DIGEST = `sha256:${"0".repeat(64)}`;
const DOCKER_ONLY = `${DOCKER_MANIFEST}, ${DOCKER_MANIFEST_LIST}`;
/** What containers/image (skopeo, podman) sends. */
const CONTAINERS_IMAGE_ACCEPT = [
  OCI_MANIFEST,
  DOCKER_MANIFEST,
  "application/vnd.docker.distribution.manifest.v1+prettyjws",
  "application/vnd.docker.distribution.manifest.v1+json",
  DOCKER_MANIFEST_LIST,
  OCI_INDEX,
].join(", ");
/** What containerd sends. */
const CONTAINERD_ACCEPT = `${DOCKER_MANIFEST}, ${DOCKER_MANIFEST_LIST}, ${OCI_MANIFEST}, ${OCI_INDEX}, */*`;

const PUSH_REFUSED = /builds images itself/;

/** Tags given to the name `paged` through R2 markers (see addTagMarkers), plus `latest`, which every name lists. */
const PAGED_TAGS = ["0123456789abcdef0123456789abcdef01234567", "a1", "b2", "c3", "latest", "nixos-24.05"];

const sha256 = (bytes: Uint8Array): string => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
const text = (bytes: Uint8Array): string => new TextDecoder().decode(bytes);

async function fetchBytes(
  path: string,
  headers: Record<string, string> = {},
): Promise<{ response: Response; bytes: Uint8Array }> {
  const response = await fetch(`${stack.registryUrl}${path}`, { headers });
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (response.status !== 200) throw new Error(`GET ${path}: ${response.status} ${text(bytes)}`);
  return { response, bytes };
}

/** A blob straight from the bucket, through the S3 endpoint the builder writes with, so that the worker has not served it. */
async function fromBucket(digest: string): Promise<Uint8Array> {
  const env = stack.s3Env;
  const client = new AwsClient({
    accessKeyId: env.S3_ACCESS_KEY_ID,
    secretAccessKey: env.S3_SECRET_ACCESS_KEY,
    service: "s3",
    region: env.S3_REGION,
  });
  const response = await client.fetch(`${env.S3_ENDPOINT}/${env.S3_BUCKET}/${blobKey(digest as Digest)}`);
  if (response.status !== 200) throw new Error(`S3 GET of ${digest}: ${response.status} ${await response.text()}`);
  return new Uint8Array(await response.arrayBuffer());
}

/**
 * With the local package set only `latest` exists, so tags/list would never paginate. The worker lists a name's
 * tags from the markers `tags/<name>/<tag>` in R2, so a few are added here through the R2 binding (the same
 * local bucket the running worker uses, opened as test/support/local-r2.ts does).
 * `paged/sub` gets a marker too: it must not show up in the list of `paged`.
 */
async function addTagMarkers(): Promise<void> {
  await withWorkerR2(stack.workerStateDir, async (bucket) => {
    for (const tag of PAGED_TAGS.filter((t) => t !== "latest")) await bucket.put(`tags/paged/${tag}`, "");
    await bucket.put("tags/paged/sub/x1", "");
  });
}

beforeAll(async () => {
  // A resolution of `latest` is reused for 1 s only, so that by the time the builder is stopped (last table) the
  // worker's cached resolution has expired and must be used stale.
  stack = await startTestStack({ builderEnv: { NIXERY_TAG_TTL_SECONDS: "1" } });
  const oci = await fetchBytes("/v2/hello/manifests/latest"); // builds hello
  const docker = await fetchBytes("/v2/hello/manifests/latest", { Accept: DOCKER_MANIFEST });
  // Only once the worker has its R2 open: a second workerd opening the same local bucket while the first is
  // creating it can leave one of them unable to start (seen as a 180 s hang, then "Workers runtime failed to start").
  await addTagMarkers();
  const ociManifest = JSON.parse(text(oci.bytes)) as ImageManifest;
  const dockerManifest = JSON.parse(text(docker.bytes)) as ImageManifest;
  // The two biggest layers: the range rows need some bytes to cut.
  const [layerRef, unfetchedRef] = [...ociManifest.layers].sort((a, b) => b.size - a.size);
  const [config, layer, unfetched] = await Promise.all([
    fetchBytes(`/v2/hello/blobs/${ociManifest.config.digest}`),
    fetchBytes(`/v2/hello/blobs/${layerRef.digest}`),
    fromBucket(unfetchedRef.digest),
  ]);
  f = {
    oci: { digest: oci.response.headers.get("docker-content-digest")!, bytes: oci.bytes, manifest: ociManifest },
    docker: {
      digest: docker.response.headers.get("docker-content-digest")!,
      bytes: docker.bytes,
      manifest: dockerManifest,
    },
    config: { digest: ociManifest.config.digest, bytes: config.bytes },
    layer: { digest: layerRef.digest, bytes: layer.bytes },
    unfetched: { digest: unfetchedRef.digest, bytes: unfetched },
  };
  for (const blob of [f.oci, f.docker, f.config, f.layer, f.unfetched]) expect(sha256(blob.bytes)).toBe(blob.digest);
  expect(f.layer.bytes.byteLength).toBeGreaterThan(1000);
  expect(f.unfetched.bytes.byteLength).toBeGreaterThan(15);
});

afterAll(async () => {
  await stack?.stop();
});

// ---------------------------------------------------------------------------------------------------------------
// The table.

type Lazy<T> = T | ((fx: Fixtures) => T);
const force = <T>(value: Lazy<T>): T => (typeof value === "function" ? (value as (fx: Fixtures) => T)(f) : value);

interface Expectation {
  status: number;
  /** For errors: the registry error code (checked on GET; HEAD has no body). */
  code?: RegistryErrorCode;
  /** For errors: the message must match each of these. */
  message?: RegExp[];
  /** For errors: the detail must contain these fields (toMatchObject). */
  detail?: Record<string, unknown>;
  /** Exact header values, a pattern, or null for "absent". Content-Length is always checked against the body. */
  headers?: Record<string, string | RegExp | null>;
  /** The exact body bytes (GET). */
  body?: Uint8Array;
  /** The exact JSON body (GET). */
  json?: unknown;
  /** How many build jobs may start during this row (unchecked when absent); Nix builds nothing either. */
  builds?: number;
  /** How many /resolve requests may reach the builder during this row (unchecked when absent). */
  resolves?: number;
}

interface Row {
  name: string;
  method: string;
  path: Lazy<string>;
  headers?: Lazy<Record<string, string>>;
  body?: Lazy<string | Uint8Array>;
  expect: Lazy<Expectation>;
  /** Set on the HEAD half of a GET/HEAD pair: the GET row whose headers this one must repeat. */
  headOf?: string;
}

type RowSpec = Omit<Row, "method" | "headOf"> & { method?: string };

const row = (spec: RowSpec): Row => ({ method: "GET", ...spec });

/** The row as GET, and again as HEAD: no body, every header equal to the GET's. */
function getAndHead(spec: RowSpec): Row[] {
  const get = row({ ...spec, name: `GET ${spec.name}` });
  return [get, { ...get, method: "HEAD", name: `HEAD ${spec.name}`, headOf: get.name }];
}

/** The same rows with `?ns=docker.io` appended to the path (containerd mirrors): nothing may change. */
function withNs(rows: Row[]): Row[] {
  const addNs = (path: string) => `${path}${path.includes("?") ? "&" : "?"}ns=docker.io`;
  return rows.flatMap((r) => {
    const variant: Row = {
      ...r,
      name: `${r.name} ?ns=docker.io`,
      path: (fx: Fixtures) => addNs(typeof r.path === "function" ? r.path(fx) : r.path),
      headOf: r.headOf ? `${r.headOf} ?ns=docker.io` : undefined,
    };
    return [r, variant];
  });
}

const WRITE_METHODS = ["POST", "PUT", "PATCH", "DELETE"] as const;

function writesRefused(name: string, path: Lazy<string>, body?: Lazy<string | Uint8Array>): Row[] {
  return WRITE_METHODS.map((method) =>
    row({
      name: `${method} ${name}: 405 UNSUPPORTED`,
      method,
      path,
      body: method === "PUT" || method === "PATCH" ? body : undefined,
      expect: {
        status: 405,
        code: "UNSUPPORTED",
        message: [PUSH_REFUSED],
        headers: { allow: "GET, HEAD" },
        builds: 0,
        resolves: 0,
      },
    }),
  );
}

function errorRow(name: string, path: Lazy<string>, expectation: Expectation, headers?: Record<string, string>): Row[] {
  return getAndHead({ name, path, headers, expect: expectation });
}

const manifestHeaders = (blob: Blob, mediaType: string): Record<string, string> => ({
  "content-type": mediaType,
  "docker-content-digest": blob.digest,
  "content-length": String(blob.bytes.byteLength),
});

const blobHeaders = (blob: Blob): Record<string, string> => ({
  "content-type": "application/octet-stream",
  "docker-content-digest": blob.digest,
  "content-length": String(blob.bytes.byteLength),
  "accept-ranges": "bytes",
});

function range(
  name: string,
  blob: (fx: Fixtures) => Blob,
  header: string,
  slice: (size: number) => [number, number],
  extra: Partial<Expectation> = {},
): Row {
  return row({
    name: `GET blob with Range: ${header} (${name})`,
    path: (fx) => `/v2/hello/blobs/${blob(fx).digest}`,
    headers: { Range: header },
    expect: (fx) => {
      const b = blob(fx);
      const [start, end] = slice(b.bytes.byteLength);
      return {
        status: 206,
        body: b.bytes.subarray(start, end + 1),
        headers: {
          "content-range": `bytes ${start}-${end}/${b.bytes.byteLength}`,
          "content-length": String(end - start + 1),
          "content-type": "application/octet-stream",
          "docker-content-digest": b.digest,
        },
        ...extra,
      };
    },
  });
}

/** A Range the layer can't satisfy (SIZE stands for the layer's size): 416 with `Content-Range: bytes *\/size`. */
function unsatisfiable(header: string): Row {
  return row({
    name: `GET blob with Range: ${header}: 416 RANGE_INVALID`,
    path: (fx) => `/v2/hello/blobs/${fx.layer.digest}`,
    headers: (fx) => ({ Range: header.replace("SIZE", String(fx.layer.bytes.byteLength)) }),
    expect: (fx) => ({
      status: 416,
      code: "RANGE_INVALID",
      headers: { "content-range": `bytes */${fx.layer.bytes.byteLength}` },
    }),
  });
}

const LONG_NAME = "a".repeat(256);
const LONG_PATH_NAME = `${"a".repeat(100)}/${"b".repeat(100)}/${"c".repeat(60)}`;
/** n package names p1..pn, joined as an image name. */
const packagesName = (n: number): string => Array.from({ length: n }, (_, i) => `p${i + 1}`).join("/");

const table: Row[] = [
  // The API base.
  ...withNs(
    getAndHead({
      name: "/v2/",
      path: "/v2/",
      expect: {
        status: 200,
        json: {},
        headers: { "content-type": "application/json", "docker-distribution-api-version": "registry/2.0" },
      },
    }),
  ),

  // Manifests by tag, with content negotiation.
  ...withNs(
    getAndHead({
      name: "manifest by tag, no Accept: OCI",
      path: "/v2/hello/manifests/latest",
      expect: (fx) => ({
        status: 200,
        body: fx.oci.bytes,
        headers: { ...manifestHeaders(fx.oci, OCI_MANIFEST), vary: "Accept" },
        builds: 0,
      }),
    }),
  ),
  ...getAndHead({
    name: "manifest by tag, Accept: */*: OCI",
    path: "/v2/hello/manifests/latest",
    headers: { Accept: "*/*" },
    expect: (fx) => ({ status: 200, body: fx.oci.bytes, headers: manifestHeaders(fx.oci, OCI_MANIFEST), builds: 0 }),
  }),
  ...getAndHead({
    name: "manifest by tag, Accept: the OCI manifest type only: OCI",
    path: "/v2/hello/manifests/latest",
    headers: { Accept: OCI_MANIFEST },
    expect: (fx) => ({ status: 200, body: fx.oci.bytes, headers: manifestHeaders(fx.oci, OCI_MANIFEST) }),
  }),
  ...withNs(
    getAndHead({
      name: "manifest by tag, Accept: the Docker schema 2 manifest type only: Docker",
      path: "/v2/hello/manifests/latest",
      headers: { Accept: DOCKER_MANIFEST },
      expect: (fx) => ({
        status: 200,
        body: fx.docker.bytes,
        headers: manifestHeaders(fx.docker, DOCKER_MANIFEST),
        builds: 0,
      }),
    }),
  ),
  ...getAndHead({
    name: "manifest by tag, Accept: Docker schema 2 manifest and list types: Docker",
    path: "/v2/hello/manifests/latest",
    headers: { Accept: DOCKER_ONLY },
    expect: (fx) => ({ status: 200, body: fx.docker.bytes, headers: manifestHeaders(fx.docker, DOCKER_MANIFEST) }),
  }),
  row({
    name: "GET manifest by tag, Accept: Docker, and OCI with q=0: Docker",
    path: "/v2/hello/manifests/latest",
    headers: { Accept: `${OCI_MANIFEST};q=0, ${DOCKER_MANIFEST}` },
    expect: (fx) => ({ status: 200, body: fx.docker.bytes, headers: manifestHeaders(fx.docker, DOCKER_MANIFEST) }),
  }),
  row({
    name: "GET manifest by tag, Accept as containers/image sends it (skopeo, podman): OCI",
    path: "/v2/hello/manifests/latest",
    headers: { Accept: CONTAINERS_IMAGE_ACCEPT },
    expect: (fx) => ({ status: 200, body: fx.oci.bytes, headers: manifestHeaders(fx.oci, OCI_MANIFEST) }),
  }),
  row({
    name: "GET manifest by tag, Accept as containerd sends it: OCI",
    path: "/v2/hello/manifests/latest",
    headers: { Accept: CONTAINERD_ACCEPT },
    expect: (fx) => ({ status: 200, body: fx.oci.bytes, headers: manifestHeaders(fx.oci, OCI_MANIFEST) }),
  }),

  // Asking for gzip changes nothing for manifests and blobs (never compressed on the way: exact bytes, Content-Length).
  row({
    name: "GET manifest by tag, Accept-Encoding: gzip: not compressed",
    path: "/v2/hello/manifests/latest",
    headers: { "Accept-Encoding": "gzip" },
    expect: (fx) => ({
      status: 200,
      body: fx.oci.bytes,
      headers: { ...manifestHeaders(fx.oci, OCI_MANIFEST), "content-encoding": null },
    }),
  }),
  row({
    name: "GET Docker manifest by digest, Accept-Encoding: gzip: not compressed",
    path: (fx) => `/v2/hello/manifests/${fx.docker.digest}`,
    headers: { "Accept-Encoding": "gzip" },
    expect: (fx) => ({
      status: 200,
      body: fx.docker.bytes,
      headers: { ...manifestHeaders(fx.docker, DOCKER_MANIFEST), "content-encoding": null },
    }),
  }),
  row({
    name: "GET config blob, Accept-Encoding: gzip: not compressed",
    path: (fx) => `/v2/hello/blobs/${fx.config.digest}`,
    headers: { "Accept-Encoding": "gzip" },
    expect: (fx) => ({
      status: 200,
      body: fx.config.bytes,
      headers: { ...blobHeaders(fx.config), "content-encoding": null },
    }),
  }),

  // Manifests by digest: both flavours stored, each served with its own media type whatever the Accept.
  ...withNs(
    getAndHead({
      name: "OCI manifest by digest",
      path: (fx) => `/v2/hello/manifests/${fx.oci.digest}`,
      expect: (fx) => ({
        status: 200,
        body: fx.oci.bytes,
        headers: { ...manifestHeaders(fx.oci, OCI_MANIFEST), "cache-control": /immutable/ },
      }),
    }),
  ),
  ...getAndHead({
    name: "Docker manifest by digest, no Accept",
    path: (fx) => `/v2/hello/manifests/${fx.docker.digest}`,
    expect: (fx) => ({ status: 200, body: fx.docker.bytes, headers: manifestHeaders(fx.docker, DOCKER_MANIFEST) }),
  }),
  ...getAndHead({
    name: "Docker manifest by digest, Accept: Docker",
    path: (fx) => `/v2/hello/manifests/${fx.docker.digest}`,
    headers: { Accept: DOCKER_MANIFEST },
    expect: (fx) => ({ status: 200, body: fx.docker.bytes, headers: manifestHeaders(fx.docker, DOCKER_MANIFEST) }),
  }),
  ...withNs(
    errorRow("unknown manifest digest: 404 MANIFEST_UNKNOWN", `/v2/hello/manifests/${ZERO_DIGEST}`, {
      status: 404,
      code: "MANIFEST_UNKNOWN",
      message: [/sha256:0{64}/],
      builds: 0,
    }),
  ),
  ...errorRow("manifest digest sha256:totallywrong: 400 DIGEST_INVALID", "/v2/hello/manifests/sha256:totallywrong", {
    status: 400,
    code: "DIGEST_INVALID",
    builds: 0,
    resolves: 0,
  }),
  ...errorRow(
    "manifest digest of an unknown algorithm (md5): 400 DIGEST_INVALID",
    "/v2/hello/manifests/md5:d41d8cd98f00b204e9800998ecf8427e",
    { status: 400, code: "DIGEST_INVALID", message: [/md5/], builds: 0, resolves: 0 },
  ),
  ...errorRow(
    "manifest digest in upper case: 400 DIGEST_INVALID",
    (fx) => `/v2/hello/manifests/${fx.oci.digest.toUpperCase()}`,
    { status: 400, code: "DIGEST_INVALID", builds: 0, resolves: 0 },
  ),

  // Tags this registry does not serve: 404, and no build (nor, for malformed ones, even a resolve).
  ...withNs(
    errorRow(
      "tag nixos-99.99 (not served by this package set): 404 MANIFEST_UNKNOWN, no build",
      "/v2/hello/manifests/nixos-99.99",
      { status: 404, code: "MANIFEST_UNKNOWN", message: [/nixos-99\.99/], detail: { tag: "nixos-99.99" }, builds: 0 },
    ),
  ),
  ...errorRow(
    "tag of a commit the package set doesn't have: 404 MANIFEST_UNKNOWN, no build",
    `/v2/hello/manifests/${"0123456789abcdef".repeat(3).slice(0, 40)}`,
    { status: 404, code: "MANIFEST_UNKNOWN", builds: 0 },
  ),
  ...errorRow(
    "tag -bad (outside the tag grammar): 404 MANIFEST_UNKNOWN, no build, no resolve",
    "/v2/hello/manifests/-bad",
    { status: 404, code: "MANIFEST_UNKNOWN", message: [/-bad/], builds: 0, resolves: 0 },
  ),
  ...errorRow(
    "tag of 129 characters: 404 MANIFEST_UNKNOWN naming the limit, no resolve",
    `/v2/hello/manifests/${"t".repeat(129)}`,
    {
      status: 404,
      code: "MANIFEST_UNKNOWN",
      message: [/tags are at most 128 characters; this one has 129/],
      detail: { tag: "t".repeat(129) },
      builds: 0,
      resolves: 0,
    },
  ),
  ...errorRow("tag with a percent-encoded slash: 404 MANIFEST_UNKNOWN, no resolve", "/v2/hello/manifests/a%2Fb", {
    status: 404,
    code: "MANIFEST_UNKNOWN",
    builds: 0,
    resolves: 0,
  }),

  // Packages.
  ...errorRow("unknown packages: 404 MANIFEST_UNKNOWN naming each", "/v2/hello/nosuch1/nosuch2/manifests/latest", {
    status: 404,
    code: "MANIFEST_UNKNOWN",
    message: [/nosuch1/, /nosuch2/],
    detail: { unknown: ["nosuch1", "nosuch2"] },
  }),
  ...errorRow("a package whose build fails: 500 BUILD_FAILED naming it", "/v2/broken/manifests/latest", {
    status: 500,
    code: "BUILD_FAILED",
    message: [/broken-1\.0/],
  }),

  // Names outside the grammar, on every route.
  ...errorRow("name with capitals: 404 NAME_INVALID", "/v2/Hello/manifests/latest", {
    status: 404,
    code: "NAME_INVALID",
    message: [/Hello/],
    builds: 0,
    resolves: 0,
  }),
  ...errorRow("name a//b: 404 NAME_INVALID", "/v2/a//b/manifests/latest", {
    status: 404,
    code: "NAME_INVALID",
    builds: 0,
    resolves: 0,
  }),
  ...errorRow("name ending in '-': 404 NAME_INVALID", "/v2/hello-/manifests/latest", {
    status: 404,
    code: "NAME_INVALID",
    builds: 0,
    resolves: 0,
  }),
  ...errorRow("name of 256 characters: 404 NAME_INVALID", `/v2/${LONG_NAME}/manifests/latest`, {
    status: 404,
    code: "NAME_INVALID",
    message: [/255/],
    builds: 0,
    resolves: 0,
  }),
  ...errorRow(
    "name of 262 characters in three components: 404 NAME_INVALID",
    `/v2/${LONG_PATH_NAME}/manifests/latest`,
    { status: 404, code: "NAME_INVALID", builds: 0, resolves: 0 },
  ),
  // Packages per image: at most 64, counted after meta-packages expand; more are refused before any builder call.
  ...errorRow(
    "name of 65 packages: 404 NAME_INVALID naming the limit, no builder call",
    `/v2/${packagesName(65)}/manifests/latest`,
    {
      status: 404,
      code: "NAME_INVALID",
      message: [/at most 64 packages; this name asks for 65/],
      builds: 0,
      resolves: 0,
    },
  ),
  ...errorRow(
    "name of shell and 61 packages (65 with shell's four): 404 NAME_INVALID",
    `/v2/shell/${packagesName(61)}/manifests/latest`,
    { status: 404, code: "NAME_INVALID", message: [/asks for 65/], builds: 0, resolves: 0 },
  ),
  row({
    name: "GET name of 64 packages (the limit): reaches the builder, which names the unknown ones",
    path: `/v2/hello/${packagesName(63)}/manifests/latest`,
    expect: {
      status: 404,
      code: "MANIFEST_UNKNOWN",
      message: [/p1, /, /p63/],
      detail: { unknown: expect.arrayContaining(["p1", "p63"]) },
    },
  }),
  ...withNs(
    errorRow("blob under a name with capitals: 404 NAME_INVALID", (fx) => `/v2/Hello/blobs/${fx.config.digest}`, {
      status: 404,
      code: "NAME_INVALID",
    }),
  ),
  ...errorRow("tags/list of a name with capitals: 404 NAME_INVALID", "/v2/Hello/tags/list", {
    status: 404,
    code: "NAME_INVALID",
  }),
  ...errorRow(
    "referrers under a name with capitals: 404 NAME_INVALID",
    (fx) => `/v2/Hello/referrers/${fx.oci.digest}`,
    { status: 404, code: "NAME_INVALID" },
  ),

  // Blobs.
  ...withNs(
    getAndHead({
      name: "config blob",
      path: (fx) => `/v2/hello/blobs/${fx.config.digest}`,
      expect: (fx) => ({
        status: 200,
        body: fx.config.bytes,
        headers: { ...blobHeaders(fx.config), "cache-control": /immutable/ },
      }),
    }),
  ),
  ...getAndHead({
    name: "layer blob",
    path: (fx) => `/v2/hello/blobs/${fx.layer.digest}`,
    expect: (fx) => ({ status: 200, body: fx.layer.bytes, headers: blobHeaders(fx.layer) }),
  }),
  // A layer no client has asked for yet: in R2 all the same, since the builder wrote it before the manifest.
  row({
    name: "HEAD blob never served before: from R2",
    method: "HEAD",
    path: (fx) => `/v2/hello/blobs/${fx.unfetched.digest}`,
    expect: (fx) => ({ status: 200, headers: blobHeaders(fx.unfetched) }),
  }),
  range(
    "never served before, from R2",
    (fx) => fx.unfetched,
    "bytes=5-14",
    () => [5, 14],
  ),
  ...withNs([
    range(
      "a-b",
      (fx) => fx.layer,
      "bytes=10-19",
      () => [10, 19],
    ),
  ]),
  range(
    "a-b of one byte",
    (fx) => fx.layer,
    "bytes=0-0",
    () => [0, 0],
  ),
  range(
    "a-",
    (fx) => fx.layer,
    "bytes=100-",
    (size) => [100, size - 1],
  ),
  range(
    "-n",
    (fx) => fx.layer,
    "bytes=-100",
    (size) => [size - 100, size - 1],
  ),
  range(
    "a-b past the end: clamped",
    (fx) => fx.layer,
    "bytes=900-99999999",
    (size) => [900, size - 1],
  ),
  range(
    "-n longer than the blob: all of it",
    (fx) => fx.layer,
    "bytes=-99999999",
    (size) => [0, size - 1],
  ),
  unsatisfiable("bytes=SIZE-"),
  unsatisfiable("bytes=99999999-99999999"),
  unsatisfiable("bytes=20-10"),
  row({
    name: "HEAD blob with a Range: the Range is ignored, 200 with the whole length",
    method: "HEAD",
    path: (fx) => `/v2/hello/blobs/${fx.layer.digest}`,
    headers: { Range: "bytes=10-19" },
    expect: (fx) => ({ status: 200, headers: { ...blobHeaders(fx.layer), "content-range": null } }),
  }),
  ...withNs(
    errorRow("unknown blob: 404 BLOB_UNKNOWN", `/v2/hello/blobs/${ZERO_DIGEST}`, {
      status: 404,
      code: "BLOB_UNKNOWN",
      message: [/sha256:0{64}/],
    }),
  ),
  ...errorRow("blob digest sha256:totallywrong: 400 DIGEST_INVALID", "/v2/hello/blobs/sha256:totallywrong", {
    status: 400,
    code: "DIGEST_INVALID",
  }),
  ...errorRow(
    "blob digest of an unknown algorithm (md5): 400 DIGEST_INVALID",
    "/v2/hello/blobs/md5:d41d8cd98f00b204e9800998ecf8427e",
    { status: 400, code: "DIGEST_INVALID", message: [/md5/] },
  ),
  ...errorRow(
    "blob digest of an unknown algorithm (sha512): 400 DIGEST_INVALID",
    `/v2/hello/blobs/sha512:${"ab".repeat(64)}`,
    { status: 400, code: "DIGEST_INVALID" },
  ),
  ...errorRow(
    "blob digest in upper case: 400 DIGEST_INVALID",
    (fx) => `/v2/hello/blobs/${fx.layer.digest.toUpperCase()}`,
    { status: 400, code: "DIGEST_INVALID" },
  ),
  ...errorRow(
    "blob digest with upper-case hex: 400 DIGEST_INVALID",
    (fx) => `/v2/hello/blobs/sha256:${fx.layer.digest.slice(7).toUpperCase()}`,
    { status: 400, code: "DIGEST_INVALID" },
  ),

  // tags/list: `latest` and every tag served for the name, lexical order, n and last (exclusive), Link when more remain.
  ...withNs(
    getAndHead({
      name: "tags/list",
      path: "/v2/hello/tags/list",
      expect: {
        status: 200,
        json: { name: "hello", tags: ["latest"] },
        headers: { "content-type": "application/json", link: null },
      },
    }),
  ),
  row({
    name: "GET tags/list?n=0: no tags, no Link",
    path: "/v2/hello/tags/list?n=0",
    expect: { status: 200, json: { name: "hello", tags: [] }, headers: { link: null } },
  }),
  row({
    name: "GET tags/list?n=1 of one tag: no Link",
    path: "/v2/hello/tags/list?n=1",
    expect: { status: 200, json: { name: "hello", tags: ["latest"] }, headers: { link: null } },
  }),
  row({
    name: "GET tags/list?last=latest: nothing after it",
    path: "/v2/hello/tags/list?last=latest",
    expect: { status: 200, json: { name: "hello", tags: [] }, headers: { link: null } },
  }),
  ...getAndHead({
    name: "tags/list of a name with more tags (R2 markers)",
    path: "/v2/paged/tags/list",
    expect: { status: 200, json: { name: "paged", tags: PAGED_TAGS }, headers: { link: null } },
  }),
  ...withNs(
    getAndHead({
      name: "tags/list?n=2: the first two, Link to the next page",
      path: "/v2/paged/tags/list?n=2",
      expect: {
        status: 200,
        json: { name: "paged", tags: PAGED_TAGS.slice(0, 2) },
        headers: { link: `</v2/paged/tags/list?last=${PAGED_TAGS[1]}&n=2>; rel="next"` },
      },
    }),
  ),
  row({
    name: "GET tags/list?n=2&last=a1: the next two, Link on",
    path: "/v2/paged/tags/list?n=2&last=a1",
    expect: {
      status: 200,
      json: { name: "paged", tags: ["b2", "c3"] },
      headers: { link: '</v2/paged/tags/list?last=c3&n=2>; rel="next"' },
    },
  }),
  row({
    name: "GET tags/list?n=2&last=c3: the last two, no Link",
    path: "/v2/paged/tags/list?n=2&last=c3",
    expect: { status: 200, json: { name: "paged", tags: ["latest", "nixos-24.05"] }, headers: { link: null } },
  }),
  row({
    name: "GET tags/list?last=b (not a tag): those after it",
    path: "/v2/paged/tags/list?last=b",
    expect: { status: 200, json: { name: "paged", tags: ["b2", "c3", "latest", "nixos-24.05"] } },
  }),
  row({
    name: "GET tags/list?n=100: all, no Link",
    path: "/v2/paged/tags/list?n=100",
    expect: { status: 200, json: { name: "paged", tags: PAGED_TAGS }, headers: { link: null } },
  }),
  row({
    name: "GET tags/list of a longer name under it: its own tags only",
    path: "/v2/paged/sub/tags/list",
    expect: { status: 200, json: { name: "paged/sub", tags: ["latest", "x1"] } },
  }),

  // Referrers: always an empty OCI index.
  ...withNs(
    getAndHead({
      name: "referrers",
      path: (fx) => `/v2/hello/referrers/${fx.oci.digest}`,
      expect: {
        status: 200,
        json: { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [] },
        headers: { "content-type": OCI_INDEX },
      },
    }),
  ),
  ...getAndHead({
    name: "referrers?artifactType=: filtered, and says so",
    path: (fx) => `/v2/hello/referrers/${fx.oci.digest}?artifactType=application%2Fvnd.example`,
    expect: {
      status: 200,
      json: { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [] },
      headers: { "content-type": OCI_INDEX, "oci-filters-applied": "artifactType" },
    },
  }),
  ...errorRow("referrers of sha256:totallywrong: 400 DIGEST_INVALID", "/v2/hello/referrers/sha256:totallywrong", {
    status: 400,
    code: "DIGEST_INVALID",
  }),

  // Writes: this registry builds its images itself.
  ...withNs(writesRefused("manifest by tag", "/v2/hello/manifests/latest", (fx) => fx.oci.bytes)),
  ...writesRefused(
    "manifest by digest",
    (fx) => `/v2/hello/manifests/${fx.oci.digest}`,
    (fx) => fx.oci.bytes,
  ),
  ...writesRefused("blob", (fx) => `/v2/hello/blobs/${fx.layer.digest}`),
  ...withNs(writesRefused("blob upload start", "/v2/hello/blobs/uploads/")),
  ...writesRefused("blob upload session", "/v2/hello/blobs/uploads/5f6f3c1e-3a39-4b0e-9d3e-0c6f0a1b2c3d", "chunk"),
  ...writesRefused(
    "cross-repository blob mount",
    (fx) => `/v2/hello/blobs/uploads/?mount=${fx.layer.digest}&from=other`,
  ),
  ...writesRefused("tags/list", "/v2/hello/tags/list"),
];

/** Names of rows in the builder-down table say so (and so never clash with the main table's, which HEAD rows rely on). */
function inBuilderDownTable(rows: Row[]): Row[] {
  const rename = (name: string) => `${name} (builder down)`;
  return rows.map((r) => ({ ...r, name: rename(r.name), headOf: r.headOf ? rename(r.headOf) : undefined }));
}

/** The rows run once the builder has been stopped: stored content still serves, anything new gets 503. */
const whileBuilderDown: Row[] = inBuilderDownTable([
  ...errorRow(
    "never-built image: 503 BUILDER_UNAVAILABLE with Retry-After",
    "/v2/coreutils/greeting/manifests/latest",
    {
      status: 503,
      code: "BUILDER_UNAVAILABLE",
      message: [/builder can't be reached/],
      headers: { "retry-after": /^\d+$/ },
    },
  ),
  // Blobs never come from the builder: one not in R2 is unknown, builder or not.
  ...errorRow("blob not in R2: 404 BLOB_UNKNOWN, as with the builder up", `/v2/hello/blobs/${ZERO_DIGEST}`, {
    status: 404,
    code: "BLOB_UNKNOWN",
    message: [/sha256:0{64}/],
    headers: { "retry-after": null },
  }),
  ...getAndHead({
    name: "built image by tag (stale resolution, manifest from R2)",
    path: "/v2/hello/manifests/latest",
    expect: (fx) => ({ status: 200, body: fx.oci.bytes, headers: manifestHeaders(fx.oci, OCI_MANIFEST) }),
  }),
  ...getAndHead({
    name: "built image by tag, Docker flavour",
    path: "/v2/hello/manifests/latest",
    headers: { Accept: DOCKER_MANIFEST },
    expect: (fx) => ({ status: 200, body: fx.docker.bytes, headers: manifestHeaders(fx.docker, DOCKER_MANIFEST) }),
  }),
  ...getAndHead({
    name: "HEAD-built image by tag",
    path: "/v2/greeting/tools.greet/manifests/latest",
    expect: { status: 200, headers: { "content-type": OCI_MANIFEST } },
  }),
  row({
    name: "GET manifest by digest",
    path: (fx) => `/v2/hello/manifests/${fx.oci.digest}`,
    expect: (fx) => ({ status: 200, body: fx.oci.bytes, headers: manifestHeaders(fx.oci, OCI_MANIFEST) }),
  }),
  row({
    name: "GET layer blob from R2",
    path: (fx) => `/v2/hello/blobs/${fx.layer.digest}`,
    expect: (fx) => ({ status: 200, body: fx.layer.bytes, headers: blobHeaders(fx.layer) }),
  }),
  range(
    "from R2",
    (fx) => fx.layer,
    "bytes=10-19",
    () => [10, 19],
  ),
  row({
    name: "GET tags/list",
    path: "/v2/hello/tags/list",
    expect: { status: 200, json: { name: "hello", tags: ["latest"] } },
  }),
  ...errorRow("tag -bad: still 404 MANIFEST_UNKNOWN", "/v2/hello/manifests/-bad", {
    status: 404,
    code: "MANIFEST_UNKNOWN",
  }),
]);

// ---------------------------------------------------------------------------------------------------------------
// Running a row.

/** The headers each GET row got, for the HEAD row that follows it. */
const seen = new Map<string, Record<string, string>>();

/** Headers that may differ between two responses to the same request. */
const VOLATILE_HEADERS = new Set(["date", "connection", "keep-alive"]);

function headerRecord(headers: Headers): Record<string, string> {
  const record: Record<string, string> = {};
  headers.forEach((value, key) => {
    if (!VOLATILE_HEADERS.has(key)) record[key] = value;
  });
  return record;
}

/** Lets the builder's log lines (read from its stdout) catch up before they are counted. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 30));

async function runRow(r: Row): Promise<void> {
  const path = force(r.path);
  const expected = force(r.expect);
  const counts = () => ({
    jobs: stack.jobsStarted(),
    resolves: stack.builderRequests("/resolve"),
    requests: stack.builderRequests("/"),
  });
  const before = counts();
  const buildsBefore = expected.builds === undefined ? undefined : (await stack.builderCounters()).builds;

  const response = await fetch(`${stack.registryUrl}${path}`, {
    method: r.method,
    headers: { "Accept-Encoding": "identity", ...(r.headers ? force(r.headers) : {}) },
    body: r.body === undefined ? undefined : force(r.body),
    redirect: "manual",
  });
  const body = new Uint8Array(await response.arrayBuffer());
  const where = `${r.method} ${path} -> ${response.status} ${text(body).slice(0, 500)}`;
  expect(response.status, where).toBe(expected.status);

  // Content-Length on every response; equal to the body on GET; HEAD has no body.
  const contentLength = response.headers.get("content-length");
  expect(contentLength, `${where}: Content-Length`).toMatch(/^\d+$/);
  if (r.method === "HEAD") expect(body.byteLength, `${where}: HEAD body`).toBe(0);
  else expect(Number(contentLength), `${where}: Content-Length vs body`).toBe(body.byteLength);
  expect(response.headers.get("docker-distribution-api-version")).toBe("registry/2.0");

  for (const [name, value] of Object.entries(expected.headers ?? {})) {
    const actual = response.headers.get(name);
    if (value === null) expect(actual, `${where}: ${name}`).toBeNull();
    else if (value instanceof RegExp) expect(actual, `${where}: ${name}`).toMatch(value);
    else expect(actual, `${where}: ${name}`).toBe(value);
  }

  if (expected.status >= 400) {
    expect(response.headers.get("content-type"), `${where}: error Content-Type`).toBe("application/json");
    if (r.method !== "HEAD") {
      const parsed = JSON.parse(text(body)) as { errors: { code: string; message: string; detail?: unknown }[] };
      expect(parsed.errors, where).toHaveLength(1);
      const [error] = parsed.errors;
      expect(Object.keys(error).sort(), `${where}: error fields`).toEqual(["code", "detail", "message"]);
      expect(error.code, where).toBe(expected.code);
      expect(error.message.length, where).toBeGreaterThan(0);
      for (const pattern of expected.message ?? []) expect(error.message, where).toMatch(pattern);
      if (expected.detail) expect(error.detail, where).toMatchObject(expected.detail);
    }
  } else if (r.method === "GET") {
    if (expected.body) expect(sha256(body), `${where}: body`).toBe(sha256(expected.body));
    if (expected.json !== undefined) expect(JSON.parse(text(body)), where).toEqual(expected.json);
    const digest = response.headers.get("docker-content-digest");
    if (digest && response.status === 200) expect(sha256(body), `${where}: Docker-Content-Digest vs body`).toBe(digest);
  }

  // A HEAD repeats its GET's headers exactly, Content-Length included.
  if (r.headOf) {
    const get = seen.get(r.headOf);
    expect(get, `the GET row "${r.headOf}" ran before ${r.name}`).toBeDefined();
    expect(headerRecord(response.headers), `${where}: headers of HEAD vs GET`).toEqual(get);
  } else {
    seen.set(r.name, headerRecord(response.headers));
  }

  await settle();
  const after = counts();
  if (expected.builds !== undefined) {
    expect(after.jobs - before.jobs, `${where}: build jobs started`).toBe(expected.builds);
    if (buildsBefore !== undefined)
      expect((await stack.builderCounters()).builds, `${where}: builds`).toBe(buildsBefore);
  }
  if (expected.resolves !== undefined)
    expect(after.resolves - before.resolves, `${where}: /resolve requests`).toBe(expected.resolves);
  // A blob is served from R2 or not at all: the builder hears nothing of it.
  if (path.includes("/blobs/")) {
    expect(after.requests - before.requests, `${where}: requests to the builder`).toBe(0);
    expect(after.jobs - before.jobs, `${where}: build jobs started`).toBe(0);
  }
}

// ---------------------------------------------------------------------------------------------------------------

describe("the registry protocol, route by route", () => {
  it("has no two rows of the same name (HEAD rows find their GET by name)", () => {
    const names = [...table, ...whileBuilderDown].map((r) => r.name);
    expect(new Set(names).size).toBe(names.length);
  });

  it("serves the Docker variant of the same image: same config, same layers", () => {
    expect(f.oci.manifest.mediaType).toBe(OCI_MANIFEST);
    expect(f.docker.manifest.mediaType).toBe(DOCKER_MANIFEST);
    expect(f.docker.digest).not.toBe(f.oci.digest);
    expect(f.docker.manifest.config.digest).toBe(f.oci.manifest.config.digest);
    expect(f.docker.manifest.layers.map((l) => [l.digest, l.size])).toEqual(
      f.oci.manifest.layers.map((l) => [l.digest, l.size]),
    );
  });

  for (const r of table) it(r.name, () => runRow(r));

  it("follows Link headers through every page of tags/list", async () => {
    const collected: string[] = [];
    let next: string | null = "/v2/paged/tags/list?n=1";
    let pages = 0;
    while (next) {
      const response: Response = await fetch(`${stack.registryUrl}${next}`);
      const page = (await response.json()) as { tags: string[] };
      collected.push(...page.tags);
      pages++;
      next = /^<([^>]+)>; rel="next"$/.exec(response.headers.get("link") ?? "")?.[1] ?? null;
    }
    expect(collected).toEqual(PAGED_TAGS);
    expect(pages).toBe(PAGED_TAGS.length);
  });

  it("builds on HEAD of a tag not built yet, and answers with the headers the following GET gives (which doesn't build)", async () => {
    const path = "/v2/greeting/tools.greet/manifests/latest";
    const buildsBefore = (await stack.builderCounters()).builds;
    const jobsBefore = stack.jobsStarted();
    const head = await fetch(`${stack.registryUrl}${path}`, { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(new Uint8Array(await head.arrayBuffer()).byteLength).toBe(0);
    expect((await stack.builderCounters()).builds).toBe(buildsBefore + 1);
    await settle();
    expect(stack.jobsStarted()).toBe(jobsBefore + 1);

    const get = await fetch(`${stack.registryUrl}${path}`);
    const body = new Uint8Array(await get.arrayBuffer());
    await settle();
    expect(get.status).toBe(200);
    expect(stack.jobsStarted()).toBe(jobsBefore + 1);
    expect((await stack.builderCounters()).builds).toBe(buildsBefore + 1);

    expect(headerRecord(head.headers)).toEqual(headerRecord(get.headers));
    expect(head.headers.get("content-type")).toBe(OCI_MANIFEST);
    expect(head.headers.get("content-length")).toBe(String(body.byteLength));
    expect(head.headers.get("docker-content-digest")).toBe(sha256(body));
    const manifest = JSON.parse(text(body)) as ImageManifest;
    expect(manifest.annotations?.["org.opencontainers.image.title"]).toMatch(/greeting/);
  });
});

describe("with the builder stopped", () => {
  beforeAll(async () => {
    await stack.builder.stop();
    // Past the 1 s reuse of `latest`'s resolution: the worker has to fall back on the stale one.
    await new Promise((resolve) => setTimeout(resolve, 1100));
  });

  for (const r of whileBuilderDown) it(r.name, () => runRow(r));
});
