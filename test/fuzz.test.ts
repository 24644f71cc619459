// Issue "Hardening": fuzzing. Generated requests, most of them malformed, go to the worker and to the builder of one
// stack (the real builder with Nix and the offline package set, the worker in workerd):
//
// - to the worker: repository names outside the grammar (capitals, unicode, %-escapes good and bad, `..`, empty and
//   overlong components, too many packages), tags and digests of every wrong shape (other algorithms, lengths, cases),
//   Range, If-Range and If-None-Match headers of every broken shape, odd methods, Accept values, junk and huge
//   headers, bodies, paths under /v2/, /api/builds and elsewhere;
// - to the builder: unsigned garbage on every path, and correctly signed requests whose JSON is broken, of the wrong
//   types or too big (huge arrays, odd job ids and waitSeconds), signatures for another path, method, body or time,
//   and replays;
// - most through node:http, each on a connection of its own (so that whatever a server does to a connection is
//   charged to the request that caused it), and a share over a raw socket (test/support/raw-http.ts), for what an
//   HTTP client refuses to send: malformed request lines, control bytes in headers, header lines without a colon,
//   folded headers, bare LF line ends, raw non-ASCII bytes in paths, TRACE and TRACK, CONNECT (builder), lower-case
//   methods, broken chunked framing, bodies cut short.
//
// Every answer must come within ANSWER_MS and be either a registry error (application/json, a known code) or a valid
// answer of its route (a manifest whose sha256 is its Docker-Content-Digest, a blob or the exact bytes of a range, a
// tags list, /api/builds JSON, the landing text, the builder's /health, /status, /resolve and job records). No 500;
// a 5xx only as 503 BUILDER_BUSY with Retry-After. Afterwards hello still pulls with the right digests and the builder
// still answers.
//
// The cases come from a seeded generator, all drawn before the first is sent, so the seed fixes them (with the
// same package set, whose digests they use): it is printed, and `FUZZ_SEED=<seed> npx vitest run test/fuzz.test.ts` replays the same cases. A failure names the seed,
// the case's number and the request.
//
// Nothing here may build an image but hello (built in beforeAll): names that pass the grammar are mostly sent to routes
// that never build (blobs, tags, referrers, manifests by digest); a manifest asked for by a served tag names hello,
// packages the package set doesn't have (answered 404 after a short evaluation) or ones the attribute policy denies.
//
// What workerd itself answers, before the worker runs, is told apart by the missing Docker-Distribution-API-Version
// header (the worker sets it on every answer): a 400, 431 or 501 ("unrecognized request method") for a request its
// HTTP parser refuses. At Cloudflare's edge such requests never reach a worker. Left out altogether are the shapes
// for which local workerd answers a bare 500 of its own, never calling the worker: CONNECT, a request target that is
// not a path (`*`, absolute URLs), a malformed or repeated Content-Length, an unknown Transfer-Encoding, a Host
// header that is no host name or is repeated, and thousands of headers.
import { createHash, randomInt } from "node:crypto";
import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_ATTRIBUTE_POLICY, attributeRefusal } from "../common/attribute-policy.ts";
import { isJobRecord } from "../common/bucket-layout.ts";
import { NONCE_HEADER, SIGNATURE_HEADER, signRequest, TIMESTAMP_HEADER } from "../common/builder-api.ts";
import { parseImageName } from "../common/image-name.ts";
import { DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST } from "../common/media-types.ts";
import type { ImageManifest } from "../common/oci.ts";
import { isRegistryErrorBody, type RegistryErrorCode } from "../common/registry-errors.ts";
import { tagProblem } from "../common/tag.ts";
import { rawRequest, type RawAnswer } from "./support/raw-http.ts";
import { startTestStack, type TestStack } from "./support/stack.ts";

const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) >>> 0 : randomInt(2 ** 32);
const WORKER_CASES = 1200;
const BUILDER_CASES = 1200;
/** Requests in flight at once, per target. */
const CONCURRENCY = 8;
/** Every answer, complete, within this. */
const ANSWER_MS = 10_000;

/** Every code the registry may answer with; a Record, so that a code added to the union must be added here. */
const KNOWN_CODES: Record<RegistryErrorCode, true> = {
  BLOB_UNKNOWN: true,
  DIGEST_INVALID: true,
  MANIFEST_UNKNOWN: true,
  NAME_INVALID: true,
  NAME_UNKNOWN: true,
  RANGE_INVALID: true,
  UNAUTHORIZED: true,
  UNSUPPORTED: true,
  DENIED: true,
  BUILD_FAILED: true,
  NIX_TOO_OLD: true,
  BUILDER_UNAVAILABLE: true,
  BUILDER_BUSY: true,
  TOOMANYREQUESTS: true,
  UNKNOWN: true,
};

// ---------------------------------------------------------------------------------------------------------------
// The generator.

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
class Rng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  int(below: number): number {
    return Math.floor(this.next() * below);
  }

  /** An integer from min to max, both included. */
  between(min: number, max: number): number {
    return min + this.int(max - min + 1);
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }

  chars(alphabet: string, length: number): string {
    let out = "";
    for (let i = 0; i < length; i++) out += alphabet[this.int(alphabet.length)];
    return out;
  }
}

const LOWER = "abcdefghijklmnopqrstuvwxyz";
const LOWER_DIGITS = `${LOWER}0123456789`;
const HEX = "0123456789abcdef";
const TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const VISIBLE = Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i)).join("");
const LATIN1_HIGH = Array.from({ length: 96 }, (_, i) => String.fromCharCode(160 + i)).join("");

/** The real digests and bytes of hello:latest, read before the cases are drawn. */
interface Fixtures {
  manifests: Record<string, Uint8Array>;
  blobs: Record<string, Uint8Array>;
  /** The package set's revision, as the builder names it. */
  revision: string;
}

/**
 * Packages the offline set doesn't have (or can't make an image of: `lib` is no derivation, `hello-old` an alias that
 * throws), including names that are properties of every JavaScript object. A job for them ends at evaluation.
 */
const UNKNOWN_PACKAGES = [
  "nosuchpkg",
  "nosuchpkg2",
  "nosuch.attr.path",
  "lib",
  "hello-old",
  "constructor",
  "tostring",
  "hasownproperty",
];
/** Names the builder's attribute policy refuses before any job exists. */
const DENIED_PACKAGES = [
  "pkgscross.riscv64.hello",
  "pkgsstatic.hello",
  "buildpackages.pkgsstatic.hello",
  "nixostests.foo",
];

/** Names a manifest may be asked for by a served tag: hello is built already; the others build nothing. */
const SERVED_NAMES = [
  "hello",
  "hello/hello",
  ...UNKNOWN_PACKAGES,
  ...DENIED_PACKAGES,
  "hello/nosuchpkg",
  "shell/nosuchpkg",
  "arm64/nosuchpkg",
  "hello/constructor",
  "nosuchpkg/nosuchpkg2/lib",
];

/** Whether a job for these packages would build anything (it must not: only hello may be built, once). */
function wouldBuild(packages: readonly string[]): boolean {
  if (packages.some((p) => attributeRefusal(DEFAULT_ATTRIBUTE_POLICY, p) !== null)) return false;
  if (packages.some((p) => UNKNOWN_PACKAGES.includes(p.toLowerCase()))) return false;
  return !packages.every((p) => p === "hello");
}

function percentEncodeAll(text: string): string {
  return Array.from(new TextEncoder().encode(text), (b) => `%${b.toString(16).padStart(2, "0").toUpperCase()}`).join(
    "",
  );
}

/** A repository name as it goes into the path: mostly outside the grammar, sometimes a valid but unknown one. */
function fuzzName(r: Rng): string {
  const component = () => r.chars(LOWER_DIGITS, r.between(1, 12));
  const shapes: (() => string)[] = [
    () => component(),
    () => `${component()}/${component()}`,
    () => r.pick(["Hello", "HELLO", "hello/World", "hEllo"]),
    () =>
      r.pick([
        "héllo",
        "日本語",
        "🐳",
        "ｈｅｌｌｏ",
        "hello\u200b",
        "hel\u202elo",
        "hello\u0301",
        "привет",
        "a\u00a0b",
      ]),
    () =>
      r.pick([
        "%2F",
        "hello%2Fnano",
        "%2e%2e",
        "%2E%2E/%2E%2E",
        "%00",
        "hello%00",
        "%zz",
        "%",
        "hello%",
        "%E0%A4%A",
        "%C0%AF",
        "%ff",
        "%252e",
        "hel%6co",
        percentEncodeAll("hello"),
      ]),
    () =>
      r.pick([
        "..",
        ".",
        "../..",
        "hello/../nano",
        "hello/./nano",
        "./hello",
        "hello/..",
        "...",
        "a/../../../../etc/passwd",
      ]),
    () => r.pick(["a//b", "/hello", "hello/", "//", "", " ", "hello//", "a///b"]),
    () =>
      r.pick([
        "a__b",
        "a___b",
        "a-",
        "-a",
        "a.-b",
        "a..b",
        "a_.b",
        "_a",
        ".a",
        "a.",
        "a--b",
        "a-_-b",
        "a__",
        "0",
        "9a",
        "2048",
      ]),
    () => "a".repeat(r.pick([255, 256, 1000, 5000])),
    () => Array.from({ length: r.pick([64, 65, 100, 300]) }, (_, i) => `p${i}`).join("/"),
    () =>
      r.pick([
        "a b",
        "a+b",
        "a;b",
        "a'b",
        'a"b',
        "a<b>",
        "a{b}",
        "$(id)",
        "`id`",
        "a\\b",
        "a:b",
        "a@b",
        "a*b",
        "a|b",
        "a,b",
        "a=b",
        "a!b",
        "a~b",
        "a^b",
        "a[b]",
      ]),
    () => r.pick(["arm64", "arm64/arm64", "shell/arm64", "shell"]),
    () => r.pick(["constructor", "__proto__", "prototype", "tostring", "valueof", "hasownproperty"]),
    () => r.pick(SERVED_NAMES),
    () => r.pick(["a?b", "a#b", "a%3Fb", "a%23b", "a%2F%2Fb", "%2F%2F", "a%5Cb"]),
  ];
  return r.pick(shapes)();
}

function fuzzTag(r: Rng): string {
  return r.pick<() => string>([
    () => "latest",
    () =>
      r.pick([
        "LATEST",
        "Latest",
        "latest ",
        "latest.",
        "latest-",
        "nixos-24.05",
        "nixpkgs-unstable",
        "v1.0",
        "a_b",
        "0",
        "_",
      ]),
    () => r.chars(HEX, 40),
    () => r.chars(HEX, r.pick([39, 41, 64])),
    () => r.chars(`${LOWER_DIGITS}._-`, r.between(1, 20)).replace(/^[.-]/, "x"),
    () =>
      r.pick([
        "",
        ".x",
        "-x",
        ".",
        "..",
        "a b",
        "a%20b",
        "%00",
        "日本",
        "🐳",
        "a/b",
        "a%2Fb",
        "~",
        "a!",
        "a@b",
        "%zz",
        "%",
      ]),
    () => "t".repeat(r.pick([128, 129, 1000])),
  ])();
}

function fuzzDigest(r: Rng, fx: Fixtures): string {
  const known = [...Object.keys(fx.manifests), ...Object.keys(fx.blobs)];
  return r.pick<() => string>([
    () => r.pick(known),
    () => r.pick(known),
    () => `sha256:${r.chars(HEX, 64)}`,
    () => `sha512:${r.chars(HEX, 128)}`,
    () => `sha384:${r.chars(HEX, 96)}`,
    () => `md5:${r.chars(HEX, 32)}`,
    () => `blake3:${r.chars(HEX, 64)}`,
    () => `SHA256:${r.chars(HEX, 64)}`,
    () => `sha256:${r.chars(HEX, 64).toUpperCase()}`,
    () => `sha256:${r.chars(HEX, r.pick([0, 1, 63, 65, 128]))}`,
    () => `sha256:${r.chars("ghijklmnopqrstuvwxyz", 64)}`,
    () => `sha256+b64u:${r.chars(`${LOWER}ABC-_`, 43)}`,
    () =>
      r.pick([
        ":",
        "sha256",
        "sha256::",
        ":abc",
        "sha256:%00",
        "sha256:日本",
        `sha256%3A${r.chars(HEX, 64)}`,
        `sha256:${r.chars(HEX, 64)}:x`,
      ]),
    () => `sha256:${"a".repeat(5000)}`,
    () => `${r.pick(known)}${r.pick(["x", "%00", "/", "%2F", " "])}`,
  ])();
}

function fuzzRange(r: Rng, size: number): string {
  return r.pick<() => string>([
    () => `bytes=${r.int(size)}-${r.int(size)}`,
    () => `bytes=0-${size - 1}`,
    () => `bytes=${size - 1}-`,
    () => `bytes=${size}-`,
    () => `bytes=${r.int(size)}-${size + r.int(1000)}`,
    () => `bytes=-${r.int(size * 2)}`,
    () =>
      r.pick([
        "bytes=0-0",
        "bytes=-1",
        "bytes=0-",
        "bytes=-0",
        "bytes=5-2",
        "bytes=abc",
        "bytes=1-2,3-4",
        "bytes=,",
        "bytes=",
        "bytes",
      ]),
    () =>
      r.pick([
        "=0-1",
        "items=0-1",
        "BYTES=0-1",
        "bytes = 0 - 1",
        "bytes=9007199254740993-",
        "bytes=0-99999999999999999999999",
        "bytes=--1",
      ]),
    () =>
      r.pick([
        "bytes=0--1",
        "bytes=1.5-2",
        "bytes=0x10-0x20",
        "bytes=\t0-1",
        "bytes=0-1;x",
        "bytes=-",
        "bytes=1-1-1",
        "bytes=+1-2",
        "bytes=1e3-2e3",
        "bytes=0-1,",
        ",bytes=0-1",
      ]),
    () => `bytes=${Array.from({ length: r.between(2, 400) }, () => `${r.int(size)}-`).join(",")}`,
    () => `bytes=${r.chars(VISIBLE, r.between(1, 40))}`,
    () => r.chars(VISIBLE, r.between(0, 60)),
    () => `bytes=${r.chars(LATIN1_HIGH, 3)}`,
  ])();
}

const ACCEPTS = [
  OCI_MANIFEST,
  DOCKER_MANIFEST,
  `${DOCKER_MANIFEST}, ${DOCKER_MANIFEST_LIST}`,
  `${OCI_INDEX}, ${DOCKER_MANIFEST_LIST}`,
  "*/*",
  "application/*",
  "text/html",
  "",
  "application/json;q=abc",
  `${OCI_MANIFEST};q=0, ${DOCKER_MANIFEST};q=0`,
  `${OCI_MANIFEST};q=0.5;q=0.9`,
  ",,,,",
  "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/** Header names that frame or route the request: the client sets them (and the raw cases break them). */
const FRAMING_HEADERS = new Set([
  "connection",
  "content-length",
  "expect",
  "host",
  "keep-alive",
  "transfer-encoding",
  "upgrade",
  "te",
  "trailer",
]);

function junkHeaders(r: Rng): [string, string][] {
  const headers: [string, string][] = [];
  for (let i = r.int(5); i > 0; i--) {
    const name = r.chars(TOKEN, r.between(1, 30));
    if (FRAMING_HEADERS.has(name.toLowerCase())) continue;
    const value = r.chance(0.2) ? r.chars(VISIBLE + LATIN1_HIGH, r.between(0, 80)) : r.chars(VISIBLE, r.between(0, 80));
    headers.push([name, value.trim()]);
  }
  if (r.chance(0.04))
    headers.push([`X-Huge-${r.int(1000)}`, r.chars(VISIBLE, r.pick([4_000, 16_000, 40_000, 100_000])).trim()]);
  if (r.chance(0.05)) headers.push(["CF-Connecting-IP", r.pick(["1.2.3.4", "::1", "garbage", "", "999.999.999.999"])]);
  if (r.chance(0.05))
    headers.push(["Authorization", r.pick(["Bearer x", "Basic Og==", "Bearer", r.chars(VISIBLE, 200).trim()])]);
  return headers;
}

/**
 * A request body. The worker's are at most 16 KiB: it refuses a push without reading the body, and a server that
 * closes the connection while a client is still writing a large body makes TCP reset it, answer and all.
 */
function fuzzBody(r: Rng, target: Target): Uint8Array | string | undefined {
  return r.pick<() => Uint8Array | string | undefined>([
    () => undefined,
    () => "",
    () => new Uint8Array(Array.from({ length: r.between(1, 200) }, () => r.int(256))),
    () => JSON.stringify({ mediaType: OCI_MANIFEST, schemaVersion: 2, layers: [] }),
    () => "x".repeat(target === "worker" ? r.pick([1_000, 8_000, 16_000]) : r.pick([1_000, 70_000, 300_000])),
    () => "{".repeat(r.between(1, 5_000)),
  ])();
}

/** The method as node:http sends it (upper-cased; the raw cases send lower-case ones). */
function sentMethod(method: string): string {
  return method.toUpperCase();
}

/** GET and HEAD requests are sent without a body. */
function isGetOrHead(method: string): boolean {
  return ["GET", "HEAD"].includes(sentMethod(method));
}

function pickMethod(r: Rng): string {
  if (r.chance(0.55)) return "GET";
  if (r.chance(0.35)) return "HEAD";
  return r.pick([
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "OPTIONS",
    "PROPFIND",
    "MKCOL",
    "LOCK",
    "PURGE",
    "FOO",
    "M-SEARCH",
    "X".repeat(40),
    "patch",
    "Get",
    "BREW",
  ]);
}

// ---------------------------------------------------------------------------------------------------------------
// Cases.

type Target = "worker" | "builder";

interface SignSpec {
  /** What the signature is computed over (it matches the request only when these are the request's own). */
  method: string;
  pathAndQuery: string;
  body: string;
  /** Added to the clock for the timestamp: beyond ±60 s the signature is too old or too new. */
  skewMs: number;
  /** Replaces the header after signing. */
  tamper?: { header: string; value: string | null };
  /** Sends the same signed request twice; the second must be refused as a replay. */
  replay?: boolean;
}

/** A request as an ordinary HTTP client sends it. */
interface ClientCase {
  kind: "client";
  target: Target;
  method: string;
  path: string;
  headers: [string, string][];
  body?: Uint8Array | string;
  sign?: SignSpec;
}

interface RawCase {
  kind: "raw";
  target: Target;
  /** The request as latin1 text (so any byte can be in it); `{HOST}` is replaced by host:port. */
  text: string;
  /** Shut down the sending side after the request (a client that sends no more). */
  endAfterWrite: boolean;
  /** The request is cut short: closing without an answer is acceptable. */
  mayCloseSilently: boolean;
  /** A HEAD: its answer has no body. */
  headRequest: boolean;
}

type Case = (ClientCase | RawCase) & { n: number };

function describeCase(c: Case): string {
  const cut = (text: string) => (text.length > 300 ? `${text.slice(0, 300)}... (${text.length} chars)` : text);
  if (c.kind === "raw")
    return `raw ${c.target} #${c.n}: ${JSON.stringify(cut(c.text))}${c.endAfterWrite ? " then FIN" : ""}`;
  const body =
    c.body === undefined
      ? ""
      : ` body ${typeof c.body === "string" ? JSON.stringify(cut(c.body)) : `${c.body.byteLength} bytes`}`;
  const sign = c.sign ? ` signed over ${JSON.stringify({ ...c.sign, body: cut(c.sign.body) })}` : "";
  return `${c.target} #${c.n}: ${c.method} ${cut(c.path)} headers ${cut(JSON.stringify(c.headers))}${body}${sign}`;
}

/** The name and reference a /v2/<name>/manifests/<reference> path reaches the worker with (URL-normalised, decoded). */
function manifestTarget(path: string): { name: string; reference: string } | null {
  let pathname: string;
  try {
    pathname = new URL(path, "http://registry").pathname;
  } catch {
    return null;
  }
  const match = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(pathname);
  if (!match) return null;
  const decode = (s: string) => {
    try {
      return decodeURIComponent(s);
    } catch {
      return s;
    }
  };
  return { name: decode(match[1]), reference: decode(match[2]) };
}

/** Whether a GET or HEAD of this path could start a build of something other than hello. */
function mayBuild(path: string): boolean {
  const target = manifestTarget(path);
  if (
    !target ||
    target.reference.includes(":") ||
    tagProblem(target.reference) !== null ||
    target.reference !== "latest"
  )
    return false;
  const parsed = parseImageName(target.name);
  return parsed.ok && wouldBuild(parsed.image.packages);
}

function workerClientCase(r: Rng, fx: Fixtures): ClientCase {
  const method = pickMethod(r);
  const headers: [string, string][] = [];
  let path: string;
  const roll = r.next();
  const blobs = Object.keys(fx.blobs);
  if (roll < 0.3) {
    const byDigest = r.chance(0.4);
    path = `/v2/${fuzzName(r)}/manifests/${byDigest ? fuzzDigest(r, fx) : fuzzTag(r)}`;
    if (r.chance(0.6)) headers.push(["Accept", r.pick(ACCEPTS)]);
    if (r.chance(0.15))
      headers.push([
        "If-None-Match",
        r.pick([
          `"${r.pick(Object.keys(fx.manifests))}"`,
          "*",
          `W/"${r.pick(Object.keys(fx.manifests))}"`,
          r.chars(VISIBLE, 30),
        ]),
      ]);
  } else if (roll < 0.6) {
    const digest = r.chance(0.5) ? r.pick(blobs) : fuzzDigest(r, fx);
    path = `/v2/${r.chance(0.4) ? "hello" : fuzzName(r)}/blobs/${r.chance(0.03) ? "uploads/" : digest}`;
    const size = fx.blobs[digest]?.byteLength ?? 1000;
    if (r.chance(0.7)) headers.push(["Range", fuzzRange(r, size)]);
    if (r.chance(0.15))
      headers.push([
        "If-Range",
        r.pick([`"${digest}"`, `"sha256:${r.chars(HEX, 64)}"`, "Wed, 21 Oct 2015 07:28:00 GMT", r.chars(VISIBLE, 20)]),
      ]);
    if (r.chance(0.1))
      headers.push(["If-None-Match", r.pick([`"${digest}"`, "*", `W/"${digest}"`, r.chars(VISIBLE, 30)])]);
  } else if (roll < 0.68) {
    const query = r.pick([
      "",
      "?n=2",
      `?n=${r.pick(["-1", "0", "abc", "99999999999999999999", "1.5", ""])}`,
      `?last=${r.pick(["latest", "", "%zz", "日本", "z".repeat(500)])}`,
      "?n=1&last=a&n=5",
      "?%zz",
    ]);
    path = `/v2/${fuzzName(r)}/tags/list${query}`;
  } else if (roll < 0.73) {
    path = `/v2/${fuzzName(r)}/referrers/${fuzzDigest(r, fx)}${r.pick(["", "?artifactType=x", "?artifactType=", "?artifactType=%zz"])}`;
  } else if (roll < 0.86) {
    path = r.pick<() => string>([
      () => "/api/builds",
      () =>
        `/api/builds?limit=${r.pick(["-1", "0", "1", "50", "51", "1e9", "abc", "", "99999999999999999999", "1&limit=2", "%zz"])}`,
      () => `/api/builds/${r.chars(HEX, 64)}`,
      () =>
        `/api/builds/${r.pick(["", "x", "%E0%A4%A", "%zz", "%", "..", "%2e%2e", r.chars(HEX, 63), r.chars(HEX, 64).toUpperCase(), "日本", "a/b", `${r.chars(HEX, 64)}/x`])}`,
      () => `/api/builds/${r.chars(VISIBLE.replace(/[#?/\\]/g, ""), r.between(1, 80))}`,
    ])();
  } else {
    path = r.pick<() => string>([
      () => "/",
      () => "/v2/",
      () => "/v2",
      () =>
        r.pick([
          "/v1/",
          "/api",
          "/api/",
          "/favicon.ico",
          "/.well-known/security.txt",
          "/v2/_catalog",
          "/v2/hello",
          "/v2/hello/manifests/",
          "/v2/hello/blobs/",
          "/v2/hello/tags/",
          "/v2/token",
          "/robots.txt",
          "/%2e%2e/%2e%2e/etc/passwd",
          "/..%2f..%2fetc/passwd",
          "/v2/../api/builds",
          "/V2/",
          "/v2//",
          "/index.html",
        ]),
      () => `/${r.chars(VISIBLE.replace(/[#?\\]/g, ""), r.between(1, 100))}`,
      () => `/v2/${r.chars(VISIBLE.replace(/[#?\\]/g, ""), r.between(1, 100))}`,
      () => `/${"x/".repeat(r.pick([100, 2000]))}`,
    ])();
  }
  if (r.chance(0.1))
    path += `${path.includes("?") ? "&" : "?"}${r.pick(["ns=docker.io", "%zz", "a=b&a=c", `x=${r.chars(LOWER, 2000)}`, "&&&", "ns="])}`;
  if (r.chance(0.1) && !headers.some(([name]) => name === "Accept")) headers.push(["Accept", r.pick(ACCEPTS)]);
  headers.push(...junkHeaders(r));
  const body = isGetOrHead(method) ? undefined : fuzzBody(r, "worker");
  const clientCase: ClientCase = { kind: "client", target: "worker", method, path, headers, body };
  // A served tag for a name that would build something else: ask for a tag that is never served instead.
  if (isGetOrHead(method) && mayBuild(wirePath(path)))
    clientCase.path = path.replace(/\/manifests\/[^/?]*/, "/manifests/nosuchtag");
  return clientCase;
}

/** Request lines, header blocks and framing a client won't send; the worker's shapes avoid what workerd answers with 500. */
function rawCase(r: Rng, target: Target, base: ClientCase): RawCase {
  let method = base.method;
  let path = base.path.replace(/[\s#]/g, "_");
  // A request target must be a path here (see the file's opening comment).
  if (!path.startsWith("/") || path.startsWith("//")) path = `/x${path}`;
  let version = "HTTP/1.1";
  let eol = "\r\n";
  const lines: string[] = ["Host: {HOST}"];
  let body = "";
  let endAfterWrite = false;
  let mayCloseSilently = false;
  /** One way of framing a body per request: two at once are a repeated Content-Length or both kinds (see above). */
  let framed = false;
  const mangles = r.between(1, 2);
  for (let i = 0; i < mangles; i++) {
    switch (r.int(16)) {
      case 0:
        path += String.fromCharCode(r.between(0x80, 0xff));
        break;
      case 1:
        path += Buffer.from(r.pick(["é", "日本", "🐳"]), "utf8").toString("latin1");
        break;
      case 2:
        path += r.pick(['"', "<", ">", "{", "}", "|", "^", "`", "\\"]);
        break;
      case 3:
        lines.push(`X-Control: a${String.fromCharCode(r.pick([1, 2, 8, 0x0b, 0x0c, 0x1f, 0x7f]))}b`);
        break;
      case 4:
        lines.push(r.pick(["X Y: z", "X\u0001: z", "(x): z", ": z", "X-No-Colon", "X-Tab\t: z", "X-Space : z"]));
        break;
      case 5:
        lines.push("X-Folded: a", r.pick([" b", "\tb"]));
        break;
      case 6:
        eol = "\n";
        break;
      case 7:
        method = r.pick(["TRACE", "TRACK", "get", "Get", "G\u0000T", "GET\u0001", "PRI", r.chars(TOKEN, 20)]);
        if (target === "builder" && r.chance(0.3)) method = "CONNECT";
        break;
      case 8:
        version = r.pick(["HTTP/1.0", "HTTP/9.9", "FOO/1.1", "http/1.1", "HTTP/1.1 extra", "HTTP/1", ""]);
        if (version === "HTTP/1.0" && r.chance(0.5)) lines.shift();
        break;
      case 9:
        lines.push("Expect: 100-continue");
        break;
      case 10:
        if (framed) break;
        framed = true;
        method = "POST";
        lines.push("Transfer-Encoding: chunked");
        body = r.pick([
          "zz\r\n",
          "5\r\nabc",
          "3\r\nabc\r\n0\r\n\r\n",
          "-1\r\n",
          "ffffffffffffffffff\r\n",
          "0\r\n",
          "1;ext=\u0001\r\na\r\n0\r\n\r\n",
        ]);
        // The client sends no more: a server waiting for the rest of a body it was promised is not a hang.
        endAfterWrite = true;
        mayCloseSilently = true;
        break;
      case 11:
        if (framed) break;
        framed = true;
        method = "POST";
        lines.push(`Content-Length: ${r.between(10, 1000)}`);
        body = "abc";
        endAfterWrite = true;
        mayCloseSilently = true;
        break;
      case 12:
        // At most 400: from about 800 headers in all (803 were refused, as "header count exceeds maximum (1606)";
        // other cases add their own), local Miniflare answers a bare 500 itself (workerd's limit between its entry
        // worker and ours); Cloudflare's edge bounds request headers by size (128 KB).
        for (let k = r.pick([100, 200, 400]); k > 0; k--) lines.push(`X-${k}: y`);
        break;
      case 13:
        path += `%00${r.pick(["", "\u0000"])}`;
        break;
      case 14:
        if (target === "builder")
          lines[0] = r.pick(["Host: ", "Host: a b", "Host: a:99999", "Host: [", "Host: x\r\nHost: y"]);
        else lines.push("Upgrade: websocket", "Connection: Upgrade");
        break;
      default:
        if (framed) break;
        framed = true;
        // A repeated Content-Length is left to the builder (workerd answers it with a 500 of its own).
        lines.push(
          ...(target === "builder"
            ? ["Content-Length: 0", `Content-Length: ${r.int(2)}`]
            : ["X-Twice: a", "X-Twice: b"]),
        );
        break;
    }
  }
  for (const [name, value] of base.headers.slice(0, 4)) lines.push(`${name}: ${value}`);
  const requestLine = version ? `${method} ${path} ${version}` : `${method} ${path}`;
  const text = `${requestLine}${eol}${lines.join(eol)}${eol}${eol}${body}`;
  return { kind: "raw", target, text, endAfterWrite, mayCloseSilently, headRequest: method === "HEAD" };
}

/** A job request as the worker sends it, for a package that doesn't exist, then broken in one to three ways. */
function jobBody(r: Rng, fx: Fixtures, budget: { validJobs: number }): string {
  const value: Record<string, unknown> = {
    packages: [r.pick(UNKNOWN_PACKAGES)],
    system: "x86_64-linux",
    tag: "latest",
    revision: fx.revision,
    jobId: randomishId(r),
  };
  if (r.chance(0.3)) value.waitSeconds = r.pick([0, 1, 2]);
  const mutations = r.between(1, 3);
  let whole: string | null = null;
  for (let i = 0; i < mutations; i++) {
    switch (r.int(9)) {
      case 0:
        value.packages = r.pick<() => unknown>([
          () => "hello",
          () => 5,
          () => null,
          () => ({}),
          () => [],
          () => [1, 2],
          () => [null],
          () => [""],
          () => [["nosuchpkg"]],
          () => ["nosuchpkg", 5],
          () => [
            r.pick([
              "a b",
              "../x",
              "héllo",
              "${builtins.exec}",
              "x;rm -rf /",
              "a..b",
              ".a",
              "a.",
              "'a'",
              "a\u0000b",
              "a\nb",
            ]),
          ],
          () => ["a".repeat(r.pick([255, 256, 10_000]))],
          () => Array.from({ length: r.pick([64, 65, 500, 2_000, 10_000]) }, (_, k) => `nosuchpkg${k}`),
          () => [r.pick(["__proto__", "constructor", "prototype", "toString", "hasOwnProperty", "valueOf"])],
          () => [
            r.pick([
              "PKGSSTATIC.hello",
              "pkgsCross.riscv64.hello",
              "buildPackages.pkgsStatic.hello",
              "nixosTests.foo",
              "tests.foo",
            ]),
          ],
        ])();
        break;
      case 1:
        value.system = r.pick([
          "x86_64-darwin",
          "",
          5,
          null,
          "X86_64-LINUX",
          "aarch64-linux",
          "x86_64-linux\u0000",
          ["x86_64-linux"],
        ]);
        break;
      case 2:
        value.tag = r.pick([5, null, "", "日本", "t".repeat(1000), ["latest"], { tag: "latest" }]);
        break;
      case 3:
        value.revision = r.pick([
          "",
          "ABC",
          "a".repeat(65),
          5,
          null,
          "../x",
          r.chars(LOWER_DIGITS, 32),
          "rev ision",
          "%00",
        ]);
        break;
      case 4:
        value.jobId = r.pick(["", "j".repeat(65), "a b", 5, null, "日本", "../x", "a_b", { id: 1 }]);
        break;
      case 5:
        value.waitSeconds = r.pick([-1, 11, 1e308, "5", true, null, 10.5, -0.0001, 1e-9, [], {}]);
        break;
      case 6:
        for (let k = r.pick([1, 100, 1000]); k > 0; k--) value[`extra${k}`] = k;
        if (r.chance(0.5)) whole = JSON.stringify(value).replace(/^\{/, '{"__proto__":{"packages":["hello"]},');
        break;
      case 7:
        whole = r.pick([
          "null",
          "[]",
          "1",
          '"x"',
          "true",
          "{",
          "{]",
          "",
          "\u0000",
          "\ufeff{}",
          '{"packages":',
          "[".repeat(20_000),
          "{}".repeat(100),
        ]);
        break;
      default:
        whole = r.chars(VISIBLE, r.between(0, 300));
        break;
    }
  }
  // A request that would be accepted starts a job: allow a few, of packages that don't exist, with short waits.
  if (whole === null && acceptedJob(value)) {
    if (budget.validJobs <= 0 || (typeof value.waitSeconds === "number" && value.waitSeconds > 2)) value.jobId = "";
    else budget.validJobs--;
  }
  return whole ?? JSON.stringify(value);
}

/** Whether the builder would take this as a job of packages that exist (it must be refused or be a package that doesn't). */
function acceptedJob(value: Record<string, unknown>): boolean {
  const { packages, system, tag, revision, jobId, waitSeconds } = value;
  return (
    Array.isArray(packages) &&
    packages.length > 0 &&
    packages.length <= 64 &&
    packages.every(
      (p) =>
        typeof p === "string" &&
        /^[A-Za-z0-9_][A-Za-z0-9_+'-]*(\.[A-Za-z0-9_][A-Za-z0-9_+'-]*)*$/.test(p) &&
        p.length <= 255,
    ) &&
    (system === "x86_64-linux" || system === "aarch64-linux") &&
    typeof tag === "string" &&
    typeof revision === "string" &&
    /^[0-9a-z]{1,64}$/.test(revision) &&
    typeof jobId === "string" &&
    /^[A-Za-z0-9-]{1,64}$/.test(jobId) &&
    (waitSeconds === undefined || (typeof waitSeconds === "number" && waitSeconds >= 0 && waitSeconds <= 10))
  );
}

function randomishId(r: Rng): string {
  return `${r.chars(HEX, 8)}-${r.chars(HEX, 4)}-4${r.chars(HEX, 3)}-a${r.chars(HEX, 3)}-${r.chars(HEX, 12)}`;
}

function resolveBody(r: Rng, budget: { latest: number }): string {
  const tag = r.pick<unknown>([
    "nixos-24.05",
    "nosuchtag",
    r.chars(HEX, 40),
    "",
    ".x",
    "t".repeat(200),
    5,
    null,
    ["latest"],
    "日本",
    "LATEST",
    "latest",
  ]);
  if (tag === "latest" && budget.latest-- <= 0) return JSON.stringify({ tag: "nosuchtag" });
  return r.pick<() => string>([
    () => JSON.stringify({ tag }),
    () => JSON.stringify({ tag, extra: r.chars(LOWER, 100) }),
    () => r.pick(["", "null", "{", "[]", '{"tag":}', r.chars(VISIBLE, 50)]),
  ])();
}

const BUILDER_PATHS = ["/jobs", "/resolve", "/status", "/health", "/ready"];

function builderPath(r: Rng): string {
  return r.pick<() => string>([
    () => r.pick(BUILDER_PATHS),
    () => `${r.pick(BUILDER_PATHS)}${r.pick(["/", "?", "?x=1", "/x", "%00", "%2F", ".json", "?wait=1&wait=2"])}`,
    () =>
      r.pick([
        "/",
        "/jobs/../status",
        "/JOBS",
        "/Status",
        "/health/",
        "/v2/",
        "/api/builds",
        "/metrics",
        "/%2e%2e/jobs",
        "/jobs%2F..%2Fstatus",
        "/.env",
      ]),
    () => `/${r.chars(VISIBLE.replace(/[#?\\]/g, ""), r.between(0, 100))}`,
    () => `/${"a/".repeat(r.pick([100, 3000]))}`,
  ])();
}

function junkSignatureHeaders(r: Rng): [string, string][] {
  const headers: [string, string][] = [];
  if (r.chance(0.5))
    headers.push([
      SIGNATURE_HEADER,
      r.pick(["", "0".repeat(64), r.chars(HEX, 64), r.chars(VISIBLE, 100).trim(), "z".repeat(5000)]),
    ]);
  if (r.chance(0.5))
    headers.push([
      TIMESTAMP_HEADER,
      r.pick(["", "yesterday", "0", "-1", "1e10", "9".repeat(20), String(Math.floor(Date.now() / 1000)), "1.5"]),
    ]);
  if (r.chance(0.5))
    headers.push([
      NONCE_HEADER,
      r.pick(["", r.chars(HEX, 32), r.chars(HEX, 31), r.chars(HEX, 32).toUpperCase(), "n".repeat(1000)]),
    ]);
  return headers;
}

function builderClientCase(r: Rng, fx: Fixtures, budget: { validJobs: number; latest: number }): ClientCase {
  const roll = r.next();
  if (roll < 0.35) {
    // Unsigned, or signed with garbage.
    const method = r.chance(0.5) ? r.pick(["GET", "POST"]) : pickMethod(r);
    const path = builderPath(r);
    const body = isGetOrHead(method)
      ? undefined
      : r.chance(0.5)
        ? jobBody(r, fx, { validJobs: 0 })
        : fuzzBody(r, "builder");
    return {
      kind: "client",
      target: "builder",
      method,
      path,
      headers: [...junkSignatureHeaders(r), ...junkHeaders(r)],
      body,
    };
  }
  // Correctly signed (unless tampered with below).
  const kind = r.next();
  let method = "POST";
  let path: string;
  let body: string;
  if (kind < 0.55) {
    path = r.chance(0.9) ? "/jobs" : r.pick(["/jobs?x=1", "/jobs/"]);
    body = jobBody(r, fx, budget);
  } else if (kind < 0.8) {
    path = r.chance(0.9) ? "/resolve" : "/resolve?tag=latest";
    body = resolveBody(r, budget);
  } else if (kind < 0.88) {
    method = "GET";
    path = r.pick(["/status", "/status?x=1", "/health", "/ready"]);
    body = "";
  } else {
    method = r.pick(["GET", "POST", "PUT", "DELETE", "PATCH"]);
    path = builderPath(r);
    body = method === "GET" ? "" : r.chars(VISIBLE, r.between(0, 100));
  }
  if (r.chance(0.02)) body = "x".repeat(70_000);
  const sign: SignSpec = { method, pathAndQuery: path, body, skewMs: 0 };
  if (r.chance(0.2)) {
    switch (r.int(7)) {
      case 0:
        sign.pathAndQuery = r.pick(["/resolve", "/jobs", "/status", `${path}?x`]);
        break;
      case 1:
        sign.method = r.pick(["GET", "PUT", "post"]);
        break;
      case 2:
        sign.body = `${body} `;
        break;
      case 3:
        // Well past the 60 s window: the request takes a moment to arrive, which brings a future timestamp closer.
        sign.skewMs = r.pick([-1, 1]) * r.pick([70_000, 300_000, 1e12]);
        break;
      case 4:
        sign.tamper = { header: NONCE_HEADER, value: r.pick([null, "", r.chars(HEX, 31), "N".repeat(32)]) };
        break;
      case 5:
        sign.tamper = { header: TIMESTAMP_HEADER, value: r.pick([null, "", "abc", "-5", "1".repeat(13)]) };
        break;
      default:
        sign.replay = true;
        break;
    }
  }
  return {
    kind: "client",
    target: "builder",
    method,
    path,
    headers: r.chance(0.3) ? junkHeaders(r) : [],
    body: method === "GET" ? undefined : body,
    sign,
  };
}

function drawCases(fx: Fixtures): Case[] {
  const r = new Rng(SEED);
  const budget = { validJobs: 40, latest: 10 };
  const cases: Case[] = [];
  for (let i = 0; i < WORKER_CASES; i++) {
    const base = workerClientCase(r, fx);
    cases.push({ ...(r.chance(0.15) ? rawCase(r, "worker", base) : base), n: cases.length });
  }
  for (let i = 0; i < BUILDER_CASES; i++) {
    const base = builderClientCase(r, fx, budget);
    // Raw cases are never signed: their bytes are the point, not their signature.
    cases.push({ ...(r.chance(0.2) ? rawCase(r, "builder", { ...base, sign: undefined }) : base), n: cases.length });
  }
  return cases;
}

// ---------------------------------------------------------------------------------------------------------------
// Sending and judging.

interface Answer {
  status: number | null;
  headers: Record<string, string>;
  body: Buffer;
  /** The request's method: a HEAD answer has no body to judge. */
  method: string;
}

/** The path as node:http can send it: what it refuses (spaces, controls, non-Latin-1) %-encoded, the rest as is. */
function wirePath(path: string): string {
  return path.replace(/[^\x21-\x7e]/gu, (ch) => encodeURIComponent(ch));
}

/** One request on a connection of its own (Connection: close), the whole answer read within ANSWER_MS. */
function clientRequest(
  origin: string,
  method: string,
  path: string,
  headers: [string, string][],
  body: Uint8Array | string | undefined,
): Promise<Omit<Answer, "method">> {
  const { hostname, port, host } = new URL(origin);
  const bytes =
    body === undefined ? undefined : typeof body === "string" ? Buffer.from(body, "utf8") : Buffer.from(body);
  // As a flat list, so that repeated names stay repeated; Host and Content-Length are then the caller's to send.
  // HTTP/1.1 header values are bytes; node:http sends Latin-1 only, so anything past it becomes "?".
  const latin1 = (value: string) => value.replace(/[^\x00-\xff]/gu, "?");
  const flat = [
    "Host",
    host,
    ...headers.flatMap(([name, value]) => [name, latin1(value)]),
    ...(bytes ? ["Content-Length", String(bytes.byteLength)] : []),
  ];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      request.destroy();
      reject(new Error(`no complete answer within ${ANSWER_MS} ms`));
    }, ANSWER_MS);
    const request = http.request(
      { host: hostname, port: Number(port), method, path, headers: flat, agent: false },
      (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("error", (error) => {
          clearTimeout(timer);
          reject(error);
        });
        response.on("end", () => {
          clearTimeout(timer);
          const answerHeaders: Record<string, string> = {};
          for (const [name, value] of Object.entries(response.headers))
            answerHeaders[name] = Array.isArray(value) ? value.join(", ") : String(value);
          resolve({ status: response.statusCode ?? 0, headers: answerHeaders, body: Buffer.concat(chunks) });
        });
      },
    );
    request.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    request.end(bytes);
  });
}

let stack: TestStack;
let fx: Fixtures;
const sha256 = (bytes: Uint8Array) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

async function send(c: Case): Promise<Answer[]> {
  const origin = c.target === "worker" ? stack.registryUrl : stack.builder.url;
  if (c.kind === "raw") {
    const host = new URL(origin).host;
    const raw: RawAnswer = await rawRequest(origin, Buffer.from(c.text.replaceAll("{HOST}", host), "latin1"), {
      timeoutMs: ANSWER_MS,
      endAfterWrite: c.endAfterWrite,
      headRequest: c.headRequest,
    });
    return [{ ...raw, method: c.text.split(" ")[0] }];
  }
  const once = async (signature: Record<string, string> | null): Promise<Answer> => {
    const headers = [...c.headers, ...Object.entries(signature ?? {})];
    return {
      ...(await clientRequest(origin, sentMethod(c.method), wirePath(c.path), headers, c.body)),
      method: sentMethod(c.method),
    };
  };
  if (!c.sign) return [await once(null)];
  const signature = await signRequest(
    stack.secret,
    c.sign.method,
    c.sign.pathAndQuery,
    c.sign.body,
    Date.now() + c.sign.skewMs,
  );
  if (c.sign.tamper) {
    if (c.sign.tamper.value === null) delete signature[c.sign.tamper.header];
    else signature[c.sign.tamper.header] = c.sign.tamper.value;
  }
  const first = await once(signature);
  return c.sign.replay ? [first, await once(signature)] : [first];
}

type Verdict = string | null;

function registryError(answer: Answer): { verdict: Verdict; codes: string[] } {
  if (!/^application\/json\b/.test(answer.headers["content-type"] ?? "")) {
    return { verdict: `an error answer with Content-Type ${answer.headers["content-type"]}`, codes: [] };
  }
  if (answer.method === "HEAD") return { verdict: null, codes: [] };
  let body: unknown;
  try {
    body = JSON.parse(answer.body.toString("utf8"));
  } catch {
    return { verdict: "an error answer whose body is not JSON", codes: [] };
  }
  if (!isRegistryErrorBody(body)) return { verdict: "an error answer that is not a registry error body", codes: [] };
  const codes = body.errors.map((e) => e.code);
  const unknown = codes.filter((code) => !(code in KNOWN_CODES));
  return { verdict: unknown.length ? `unknown error codes ${unknown.join(", ")}` : null, codes };
}

/** 5xx only as a deliberate 503 BUILDER_BUSY, 429 only as TOOMANYREQUESTS, each with Retry-After. */
function statusVerdict(answer: Answer, codes: string[]): Verdict {
  const status = answer.status ?? 0;
  if (status >= 500 || status === 429) {
    if (status !== 503 && status !== 429) return `status ${status}`;
    if (answer.method !== "HEAD" && !codes.includes(status === 503 ? "BUILDER_BUSY" : "TOOMANYREQUESTS"))
      return `status ${status} with codes ${codes.join(", ")}`;
    if (!/^[1-9]\d*$/.test(answer.headers["retry-after"] ?? "")) return `status ${status} without Retry-After`;
  }
  return null;
}

function parseJsonBody(answer: Answer): unknown {
  try {
    return JSON.parse(answer.body.toString("utf8"));
  } catch {
    return undefined;
  }
}

function judgeWorker(c: Case, answer: Answer): Verdict {
  if (answer.status === null)
    return c.kind === "raw" && c.mayCloseSilently ? null : "the connection closed without an answer";
  const status = answer.status;
  if (!("docker-distribution-api-version" in answer.headers)) {
    // workerd's own refusal of a request its HTTP parser won't take: it never reached the worker.
    return [400, 431, 501].includes(status) ? null : `status ${status} from outside the worker`;
  }
  const declared = answer.headers["content-length"];
  if (answer.method !== "HEAD" && declared !== undefined && Number(declared) !== answer.body.byteLength) {
    return `Content-Length ${declared} on a body of ${answer.body.byteLength} bytes`;
  }
  if (answer.method === "HEAD" && answer.body.byteLength > 0) return "a body on HEAD";
  if (status >= 400) {
    const { verdict, codes } = registryError(answer);
    return verdict ?? statusVerdict(answer, codes);
  }
  if (status === 304) return answer.body.byteLength === 0 ? null : "a 304 with a body";
  if (status !== 200 && status !== 206) return `status ${status}`;
  const type = (answer.headers["content-type"] ?? "").split(";")[0].trim();
  const digest = answer.headers["docker-content-digest"];
  if (type === OCI_MANIFEST || type === DOCKER_MANIFEST) {
    if (!digest || !(digest in fx.manifests)) return `a manifest with Docker-Content-Digest ${digest}`;
    if (answer.method === "HEAD")
      return Number(declared) === fx.manifests[digest].byteLength ? null : "a manifest HEAD of the wrong length";
    return sha256(answer.body) === digest ? null : "a manifest whose bytes don't hash to its digest";
  }
  if (type === "application/octet-stream") {
    if (!digest || !(digest in fx.blobs)) return `a blob with Docker-Content-Digest ${digest}`;
    const whole = fx.blobs[digest];
    if (status === 200) {
      if (answer.method === "HEAD")
        return Number(declared) === whole.byteLength ? null : "a blob HEAD of the wrong length";
      return sha256(answer.body) === digest ? null : "a blob whose bytes don't hash to its digest";
    }
    const range = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(answer.headers["content-range"] ?? "");
    if (!range || Number(range[3]) !== whole.byteLength)
      return `a 206 with Content-Range ${answer.headers["content-range"]}`;
    // workerd hands a HEAD that asks for a WebSocket upgrade to the worker as GET, and drops the body of the answer.
    if (answer.method === "HEAD")
      return Number(declared) === Number(range[2]) - Number(range[1]) + 1 ? null : "a 206 HEAD of the wrong length";
    const expected = whole.subarray(Number(range[1]), Number(range[2]) + 1);
    return Buffer.compare(Buffer.from(expected), answer.body) === 0
      ? null
      : "a 206 whose bytes are not that range of the blob";
  }
  if (answer.method === "HEAD") return type ? null : "a 200 HEAD without Content-Type";
  if (type === OCI_INDEX) {
    const index = parseJsonBody(answer) as { schemaVersion?: unknown; manifests?: unknown } | undefined;
    return index?.schemaVersion === 2 && Array.isArray(index.manifests)
      ? null
      : "a referrers answer that is not an image index";
  }
  if (type === "application/json") {
    const value = parseJsonBody(answer);
    if (typeof value !== "object" || value === null) return "a 200 whose JSON is not an object";
    const v = value as Record<string, unknown>;
    if (Object.keys(v).length === 0) return null; // /v2/
    if (typeof v.name === "string" && Array.isArray(v.tags) && v.tags.every((t) => typeof t === "string")) return null;
    if (Array.isArray(v.builds)) return null;
    if (typeof v.imageKey === "string" && typeof v.phase === "string") return null;
    if (typeof v.revision === "string" && Array.isArray(v.packages)) return null; // /api/packages
    return `a 200 JSON answer of no route: ${answer.body.toString("utf8").slice(0, 200)}`;
  }
  if (type === "text/plain")
    return answer.body.toString("utf8").includes("container registry")
      ? null
      : "a text answer that is not the landing page";
  // The front page and its parts (worker/pages/), for an Accept that names text/html.
  if (type === "text/html") {
    const text = answer.body.toString("utf8");
    return text.startsWith("<!doctype html>") && text.includes("</html>")
      ? null
      : text.trim() === "" || text.trimStart().startsWith("<")
        ? null
        : "an HTML answer that is neither a page nor a part of one";
  }
  return `a 200 of type ${type}`;
}

function judgeBuilder(c: Case, answer: Answer): Verdict {
  if (answer.status === null)
    return c.kind === "raw" && c.mayCloseSilently ? null : "the connection closed without an answer";
  const status = answer.status;
  if (answer.method === "HEAD" && answer.body.byteLength > 0) return "a body on HEAD";
  if (status >= 400) {
    const { verdict, codes } = registryError(answer);
    return verdict ?? statusVerdict(answer, codes);
  }
  if (status !== 200) return `status ${status}`;
  if (answer.method === "HEAD") return null;
  const value = parseJsonBody(answer);
  if (typeof value !== "object" || value === null) return "a 200 whose body is not a JSON object";
  const v = value as Record<string, unknown>;
  if (v.ok === true || v.ready === true) return null; // /health, /ready
  if (typeof v.ready === "boolean" && typeof v.builds === "number" && typeof v.jobs === "object") return null; // /status
  if (typeof v.revision === "string" && typeof v.source === "string" && typeof v.ttlSeconds === "number") return null; // /resolve
  if (isJobRecord(value)) return null;
  return `a 200 of no route: ${answer.body.toString("utf8").slice(0, 200)}`;
}

/** For signed cases: whether a request that should have been refused was not, or the other way round. */
function signatureVerdict(c: Case, answers: Answer[]): Verdict {
  if (c.kind !== "client" || !c.sign) return null;
  const s = c.sign;
  // The builder checks the signature over the path and query as it parses them (a path that is no URL, `//[`, it
  // refuses before).
  let url: URL;
  try {
    url = new URL(wirePath(c.path), "http://b");
  } catch {
    return null;
  }
  const matches =
    s.method.toUpperCase() === sentMethod(c.method).toUpperCase() &&
    s.pathAndQuery === url.pathname + url.search &&
    s.body === (c.body ?? "") &&
    Math.abs(s.skewMs) < 55_000 &&
    !s.tamper;
  // Only the signed endpoints check signatures, and a body over 64 KiB is refused before they do.
  const route = url.pathname;
  const method = sentMethod(c.method);
  const signedRoute =
    ((route === "/jobs" || route === "/resolve") && method === "POST") || (route === "/status" && method === "GET");
  // Refused before the signature is looked at: a body over 64 KiB (413), headers over 16 KiB (431).
  if (!signedRoute || answers[0].status === 413 || answers[0].status === 431) return null;
  if (!matches && answers[0].status !== 401) return `a bad signature answered ${answers[0].status}`;
  if (matches && answers[0].status === 401) return `a good signature refused: ${answers[0].body.toString("utf8")}`;
  if (s.replay && answers[1].status !== 401) return `a replay answered ${answers[1].status}`;
  return null;
}

describe(`fuzzing the worker and the builder (seed ${SEED})`, () => {
  let cases: Case[];

  beforeAll(async () => {
    console.log(`fuzz seed ${SEED}; replay with FUZZ_SEED=${SEED} npx vitest run test/fuzz.test.ts`);
    stack = await startTestStack();
    const get = async (path: string, accept?: string) => {
      const response = await fetch(`${stack.registryUrl}${path}`, { headers: accept ? { Accept: accept } : {} });
      expect(response.status, path).toBe(200);
      return new Uint8Array(await response.arrayBuffer());
    };
    const oci = await get("/v2/hello/manifests/latest", OCI_MANIFEST);
    const docker = await get("/v2/hello/manifests/latest", DOCKER_MANIFEST);
    const manifest = JSON.parse(new TextDecoder().decode(oci)) as ImageManifest;
    const blobs: Record<string, Uint8Array> = {};
    for (const { digest } of [manifest.config, ...manifest.layers])
      blobs[digest] = await get(`/v2/hello/blobs/${digest}`);
    const list = (await (await fetch(`${stack.registryUrl}/api/builds`)).json()) as { builds: { revision: string }[] };
    fx = { manifests: { [sha256(oci)]: oci, [sha256(docker)]: docker }, blobs, revision: list.builds[0].revision };
    cases = drawCases(fx);
  }, 180_000);

  afterAll(async () => {
    await stack?.stop();
  });

  it(`answers ${WORKER_CASES} generated requests to the worker and ${BUILDER_CASES} to the builder with registry errors or valid answers, each within ${ANSWER_MS / 1000} s`, async () => {
    const failures: string[] = [];
    const tally = { worker: new Map<string, number>(), builder: new Map<string, number>() };
    let raw = 0;
    const started = performance.now();
    const runTarget = async (target: Target) => {
      const queue = cases.filter((c) => c.target === target);
      const worker = async () => {
        for (let c = queue.shift(); c; c = queue.shift()) {
          if (c.kind === "raw") raw++;
          let answers: Answer[];
          try {
            answers = await send(c);
          } catch (error) {
            const cause = (error as Error & { cause?: unknown }).cause;
            failures.push(
              `${describeCase(c)}\n  -> ${String((error as Error).message ?? error)}${cause ? ` (${String(cause)})` : ""}`,
            );
            continue;
          }
          for (const answer of answers) {
            const key = String(answer.status);
            tally[target].set(key, (tally[target].get(key) ?? 0) + 1);
            const verdict = (target === "worker" ? judgeWorker : judgeBuilder)(c, answer);
            if (verdict)
              failures.push(
                `${describeCase(c)}\n  -> ${verdict}: ${answer.status} ${JSON.stringify(answer.headers)} ${answer.body.toString("utf8").slice(0, 300)}`,
              );
          }
          const signature = signatureVerdict(c, answers);
          if (signature) failures.push(`${describeCase(c)}\n  -> ${signature}`);
        }
      };
      await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    };
    await Promise.all([runTarget("worker"), runTarget("builder")]);
    const seconds = (performance.now() - started) / 1000;
    const show = (m: Map<string, number>) =>
      [...m]
        .sort()
        .map(([status, n]) => `${status}: ${n}`)
        .join(", ");
    console.log(
      `fuzz seed ${SEED}: ${cases.length} cases (${raw} over raw sockets) in ${seconds.toFixed(1)} s\n` +
        `  worker answers by status  ${show(tally.worker)}\n  builder answers by status ${show(tally.builder)}`,
    );
    expect(
      failures,
      `seed ${SEED} (FUZZ_SEED=${SEED} replays it); ${failures.length} failures:\n${failures.slice(0, 30).join("\n")}`,
    ).toEqual([]);
    expect(cases.filter((c) => c.target === "worker")).toHaveLength(WORKER_CASES);
  }, 240_000);

  it("still serves hello with the right digests, the builder still answers, and nothing but hello was built", async () => {
    const response = await fetch(`${stack.registryUrl}/v2/hello/manifests/latest`, {
      headers: { Accept: OCI_MANIFEST },
    });
    expect(response.status).toBe(200);
    const bytes = new Uint8Array(await response.arrayBuffer());
    expect(sha256(bytes)).toBe(response.headers.get("docker-content-digest"));
    expect(bytes).toEqual(Object.values(fx.manifests).find((m) => sha256(m) === sha256(bytes)));
    const manifest = JSON.parse(new TextDecoder().decode(bytes)) as ImageManifest;
    for (const { digest } of [manifest.config, ...manifest.layers]) {
      const blob = await fetch(`${stack.registryUrl}/v2/hello/blobs/${digest}`);
      expect(blob.status).toBe(200);
      expect(sha256(new Uint8Array(await blob.arrayBuffer()))).toBe(digest);
    }
    expect(await (await fetch(`${stack.builder.url}/health`)).json()).toEqual({ ok: true });
    const counters = await stack.builderCounters();
    expect(counters.ready).toBe(true);
    expect(stack.builder.process.exitCode).toBeNull();
    // Jobs ended at evaluation (unknown packages) or were refused; the only image Nix built is hello.
    expect(stack.builds()).toBe(1);
    // No request failed inside the builder, and no answer broke off (the builder logs both as errors).
    expect(stack.logEvents("request-failed")).toEqual([]);
    expect(stack.logEvents("response-failed")).toEqual([]);
    expect(stack.workerLogLines.filter((line) => /failed: |Uncaught/.test(line))).toEqual([]);
  }, 60_000);
});
