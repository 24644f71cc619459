// The builder's configuration, all from the environment, checked at startup with errors that name the variable.
// Every problem is reported at once, so a new deployment is fixed in one edit, not one restart per variable.
import { existsSync } from "node:fs";
import { availableParallelism } from "node:os";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { DEFAULT_DENIED_ATTRIBUTES } from "../common/attribute-policy.ts";
import { ATTRIBUTE_PATH } from "../common/builder-api.ts";
import { DEFAULT_MAX_CLOSURE_BYTES, DEFAULT_MAX_QUEUE, type AdmissionConfig } from "./admission.ts";
import { DEFAULT_LAYER_BUDGET } from "./layering.ts";
import { NIX_SETTINGS_HELP, readNixSettings, type NixSettings } from "./nix-settings.ts";
import { isPopularityUrl } from "./popularity.ts";
import { CHANNEL_NAME } from "./sources/channel.ts";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** R2's and S3's smallest multipart part (all parts but the last); R2 also wants every part but the last equal. */
export const MIN_PART_SIZE_BYTES = 5 * MiB;
/** The largest single PUT, or part, R2 accepts: 5 MiB less than 5 GiB ("4.995 GiB"; S3's own limit is 5 GiB). */
export const MAX_SINGLE_PUT_BYTES = 5 * GiB - 5 * MiB;
export const DEFAULT_MULTIPART_THRESHOLD_BYTES = 64 * MiB;
export const DEFAULT_PART_SIZE_BYTES = 64 * MiB;

export interface S3StoreConfig {
  kind: "s3";
  /** Scheme, host and port only, e.g. https://<account id>.r2.cloudflarestorage.com. */
  endpoint: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  /** Blobs larger than this go up as multipart uploads. */
  multipartThresholdBytes: number;
  /** Size of every multipart part but the last. */
  partSizeBytes: number;
  /** Parts of one blob uploaded at once. */
  partConcurrency: number;
  /** Tries per S3 request (first try included) before a transient error is given up on. */
  maxAttempts: number;
}

export interface BuilderConfig {
  host: string;
  port: number;
  secret: string;
  dataDir: string;
  nixDir: string;
  /** Substituters, parallelism and the time limit for Nix (nix-settings.ts). */
  nix: NixSettings;
  /** How many builds at once, and which (admission.ts). */
  admission: AdmissionConfig;
  layerBudget: number;
  /**
   * Nixery-format popularity data for layering, if any (see popularity.ts): an http(s) URL or an absolute file
   * path, and the variable that named it (NIXERY_POPULARITY_PATH is the older name of NIX_POPULARITY_URL).
   */
  popularity: { source: string; setting: "NIX_POPULARITY_URL" | "NIXERY_POPULARITY_PATH" | "NIXERY_PKGS_PATH" } | null;
  tagTtlSeconds: number;
  source:
    | { kind: "path"; path: string }
    | { kind: "git"; url: string; branch: string | null }
    | { kind: "channel"; channel: string; channelsUrl: string; archiveUrl: string };
  store: S3StoreConfig;
}

/** One row per variable: the README's configuration table is written from the same facts. */
export const ENVIRONMENT_HELP: readonly [name: string, meaning: string][] = [
  ["BUILDER_SECRET", "required: the secret shared with the worker (at least 16 characters)"],
  ["BUILDER_HOST", "address to listen on (default 127.0.0.1)"],
  ["BUILDER_PORT", "port to listen on (default 8788)"],
  ["BUILDER_DATA_DIR", "where layers are spooled before upload and unfinished jobs are journalled (default ./.data/builder)"],
  ["BUILDER_MAX_BUILDS", "image builds run at once (default: half the cores, at least 1); more wait in a queue, in phase `queued`"],
  ["BUILDER_MAX_QUEUE", `builds waiting for their turn (default ${DEFAULT_MAX_QUEUE}, 0 to 10000); past it a new build is refused with 503 BUILDER_BUSY and Retry-After, and the worker tries the next builder`],
  ["BUILDER_MAX_CLOSURE_BYTES", `largest closure an image may have, the unpacked size of its store paths (default ${DEFAULT_MAX_CLOSURE_BYTES} = 8 GiB; 0: no limit); refused with 403 DENIED before anything is downloaded when the downloads alone are larger, else before layering`],
  ["NIXERY_PKGS_PATH", "serve this local package set (a folder with default.nix) instead of a channel; only the tag `latest`"],
  ["NIXERY_PKGS_REPO", "serve a package set from this git repository (https://, ssh://, file://) instead of a channel: tags are `latest`, branch and git tag names, and 40-hex commits; a bare mirror is kept under BUILDER_DATA_DIR/git"],
  ["NIXERY_PKGS_BRANCH", "with NIXERY_PKGS_REPO: the branch `latest` follows (default: the repository's default branch)"],
  ["NIXERY_CHANNEL", "the channel `latest` follows (default nixos-unstable)"],
  ["NIXERY_CHANNELS_URL", "channel service (default https://channels.nixos.org)"],
  ["NIXERY_ARCHIVE_URL", "source tarballs by commit (default https://github.com/NixOS/nixpkgs/archive)"],
  ["NIXERY_TAG_TTL_SECONDS", "how long a moving tag's resolution (latest, a channel, a branch) is reused before it is resolved again (default 300); commits are pinned forever"],
  ["NIXERY_DENY_ATTRIBUTES", `attribute names or paths never built, separated by commas or spaces, matched case-insensitively at any depth of a name (\`pkgscross.riscv64.hello\` reaches pkgsCross); replaces the default list: ${DEFAULT_DENIED_ATTRIBUTES.join(", ")}; \`none\` denies nothing. Refused with 403 DENIED, nothing built`],
  ["NIXERY_ALLOW_ATTRIBUTES", "if set, only these attribute paths and what is under them are built (e.g. `hello, python3Packages`), compared like NIXERY_DENY_ATTRIBUTES; the deny-list still applies"],
  ...NIX_SETTINGS_HELP,
  ["NIXPKGS_ALLOW_UNFREE", "nixpkgs' own switch, passed to Nix: `1` builds packages with unfree licenses (refused by default, with a message naming this variable)"],
  ["NIXPKGS_ALLOW_BROKEN", "nixpkgs' own switch: `1` builds packages marked broken (refused by default)"],
  ["NIXPKGS_ALLOW_INSECURE", "nixpkgs' own switch: `1` builds packages with known vulnerabilities (refused by default)"],
  ["NIXPKGS_ALLOW_UNSUPPORTED_SYSTEM", "nixpkgs' own switch: `1` builds packages whose meta.platforms leave out the image's system (refused by default)"],
  ["NIXERY_LAYER_BUDGET", `most layers per image, root filesystem included (default ${DEFAULT_LAYER_BUDGET}, 2 to 125)`],
  ["NIX_POPULARITY_URL", "popularity data for layering images with more store paths than NIXERY_LAYER_BUDGET, Nixery's format {\"name-version\": count}: an http(s) URL, downloaded at startup (a failed download stops the builder), or a file (default: popularity.json in NIXERY_PKGS_PATH if there is one, else none: such images keep their largest store paths in layers of their own and the rest in one; Nixery's name; NIXERY_POPULARITY_PATH is the older name of the same setting)"],
  ["S3_ENDPOINT", "required: the S3 API endpoint of the registry's bucket, without the bucket, e.g. https://ACCOUNT_ID.r2.cloudflarestorage.com (R2; npm start runs a local one)"],
  ["S3_BUCKET", "required: the bucket, the same one the worker's REGISTRY_BUCKET binding names"],
  ["S3_ACCESS_KEY_ID", "required: access key id (R2: an API token's Access Key ID, with Object Read & Write on the bucket)"],
  ["S3_SECRET_ACCESS_KEY", "required: the secret access key that goes with S3_ACCESS_KEY_ID"],
  ["S3_REGION", "signing region (default auto, which is what R2 wants)"],
  ["S3_MULTIPART_THRESHOLD_BYTES", "blobs larger than this are uploaded in parts (default 67108864 = 64 MiB; 5 MiB to 5 GiB less 5 MiB, R2's limit for one upload)"],
  ["S3_PART_SIZE_BYTES", "size of every part but the last (default 67108864 = 64 MiB; 5 MiB, R2's minimum, to 5 GiB less 5 MiB)"],
  ["S3_PART_CONCURRENCY", "parts of one blob uploaded at once (default 4, 1 to 32)"],
  ["S3_MAX_ATTEMPTS", "tries per request on 5xx, 429 and dropped connections, with exponential backoff (default 5, 1 to 20)"],
];

export class ConfigError extends Error {}

/** Reads whole-number variables, collecting problems instead of stopping at the first. */
function numberReader(env: NodeJS.ProcessEnv, problems: string[]) {
  return (name: string, fallback: number, min: number, max: number): number => {
    const raw = env[name];
    if (raw === undefined || raw === "") return fallback;
    const value = Number(raw);
    if (!Number.isInteger(value) || value < min || value > max) {
      problems.push(`${name}=${raw} is not a whole number from ${min} to ${max}`);
      return fallback;
    }
    return value;
  };
}

/** S3 bucket names as R2 and S3 accept them (3 to 63 characters: lower-case letters, digits, '-' and '.'). */
const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

function s3Config(env: NodeJS.ProcessEnv, problems: string[]): S3StoreConfig {
  const number = numberReader(env, problems);
  const required = (name: string, how: string): string => {
    const value = (env[name] ?? "").trim();
    if (!value) problems.push(`${name} is not set: ${how}`);
    return value;
  };
  let endpoint = required("S3_ENDPOINT", "the S3 API endpoint, for R2 https://<account id>.r2.cloudflarestorage.com");
  if (endpoint) {
    let url: URL | undefined;
    try {
      url = new URL(endpoint);
    } catch {
      problems.push(`S3_ENDPOINT=${endpoint} is not a URL; for R2 it is https://<account id>.r2.cloudflarestorage.com`);
    }
    if (url && url.protocol !== "https:" && url.protocol !== "http:") {
      problems.push(`S3_ENDPOINT=${endpoint} must start with https:// (or http:// for a local test server)`);
    } else if (url && (url.pathname.replace(/\/+$/, "") !== "" || url.search || url.hash)) {
      problems.push(
        `S3_ENDPOINT=${endpoint} has a path; give the endpoint without the bucket (https://${url.host}) and the bucket in S3_BUCKET`,
      );
    } else if (url) {
      endpoint = url.origin;
    }
  }
  const bucket = required("S3_BUCKET", "the bucket the worker's REGISTRY_BUCKET binding names (wrangler.toml)");
  if (bucket && !BUCKET_NAME.test(bucket)) {
    problems.push(`S3_BUCKET=${bucket} is not a bucket name (3 to 63 characters: a-z, 0-9, '-' and '.')`);
  }
  const accessKeyId = required("S3_ACCESS_KEY_ID", "an access key id (R2: create an API token with Object Read & Write)");
  const secretAccessKey = required("S3_SECRET_ACCESS_KEY", "the secret access key of S3_ACCESS_KEY_ID");
  const region = (env.S3_REGION ?? "").trim() || "auto";
  const multipartThresholdBytes = number(
    "S3_MULTIPART_THRESHOLD_BYTES",
    DEFAULT_MULTIPART_THRESHOLD_BYTES,
    MIN_PART_SIZE_BYTES,
    MAX_SINGLE_PUT_BYTES,
  );
  const partSizeBytes = number("S3_PART_SIZE_BYTES", DEFAULT_PART_SIZE_BYTES, MIN_PART_SIZE_BYTES, MAX_SINGLE_PUT_BYTES);
  const partConcurrency = number("S3_PART_CONCURRENCY", 4, 1, 32);
  const maxAttempts = number("S3_MAX_ATTEMPTS", 5, 1, 20);
  return {
    kind: "s3",
    endpoint,
    bucket,
    accessKeyId,
    secretAccessKey,
    region,
    multipartThresholdBytes,
    partSizeBytes,
    partConcurrency,
    maxAttempts,
  };
}

/** A branch name as git takes it (conservatively: no leading '-', no "..", no spaces or control characters). */
const BRANCH_NAME = /^(?!-)(?!.*\.\.)(?!.*\/\/)[A-Za-z0-9._\/+-]+(?<![./])$/;

function sourceConfig(env: NodeJS.ProcessEnv, problems: string[]): BuilderConfig["source"] {
  const path = (env.NIXERY_PKGS_PATH ?? "").trim();
  const repo = (env.NIXERY_PKGS_REPO ?? "").trim();
  const branch = (env.NIXERY_PKGS_BRANCH ?? "").trim();
  if (path && repo) {
    problems.push("NIXERY_PKGS_PATH and NIXERY_PKGS_REPO are both set; a builder serves one package source: unset one");
  }
  if (branch && !repo) problems.push("NIXERY_PKGS_BRANCH is set but NIXERY_PKGS_REPO is not; it names a branch of that repository");
  if (branch && !BRANCH_NAME.test(branch)) problems.push(`NIXERY_PKGS_BRANCH=${branch} is not a branch name`);
  if (repo.startsWith("-") || /\s/.test(repo)) {
    problems.push(`NIXERY_PKGS_REPO=${repo} is not a git URL (e.g. https://github.com/NixOS/nixpkgs or file:///srv/pkgs.git)`);
  }
  if (path) return { kind: "path", path: resolve(path) };
  if (repo) return { kind: "git", url: repo, branch: branch || null };
  const channel = env.NIXERY_CHANNEL || "nixos-unstable";
  if (!CHANNEL_NAME.test(channel)) {
    problems.push(`NIXERY_CHANNEL=${channel} is not a channel name (nixos-unstable, nixos-24.05, nixpkgs-unstable, ...)`);
  }
  return {
    kind: "channel",
    channel,
    channelsUrl: env.NIXERY_CHANNELS_URL || "https://channels.nixos.org",
    archiveUrl: env.NIXERY_ARCHIVE_URL || "https://github.com/NixOS/nixpkgs/archive",
  };
}

/** Attribute paths separated by commas or white space; each must be one (a.b.c). */
function attributeList(env: NodeJS.ProcessEnv, name: string, problems: string[]): string[] | null {
  const raw = (env[name] ?? "").trim();
  if (raw === "") return null;
  const entries = raw.split(/[\s,]+/).filter(Boolean);
  for (const entry of entries) {
    if (entry !== "none" && !ATTRIBUTE_PATH.test(entry)) problems.push(`${name}: ${JSON.stringify(entry)} is not an attribute path (e.g. pkgsCross or python3Packages.numpy)`);
  }
  return entries;
}

function admissionConfig(env: NodeJS.ProcessEnv, problems: string[]): AdmissionConfig {
  const number = numberReader(env, problems);
  const deny = attributeList(env, "NIXERY_DENY_ATTRIBUTES", problems);
  const allow = attributeList(env, "NIXERY_ALLOW_ATTRIBUTES", problems);
  if (allow?.includes("none")) problems.push("NIXERY_ALLOW_ATTRIBUTES=none would build nothing; unset it to build everything the deny-list allows");
  return {
    maxBuilds: number("BUILDER_MAX_BUILDS", Math.max(1, Math.floor(availableParallelism() / 2)), 1, 1024),
    maxQueue: number("BUILDER_MAX_QUEUE", DEFAULT_MAX_QUEUE, 0, 10_000),
    maxClosureBytes: number("BUILDER_MAX_CLOSURE_BYTES", DEFAULT_MAX_CLOSURE_BYTES, 0, Number.MAX_SAFE_INTEGER),
    attributes: {
      deny: deny === null ? DEFAULT_DENIED_ATTRIBUTES : deny.filter((entry) => entry !== "none"),
      allow,
    },
  };
}

/** NIX_POPULARITY_URL is Nixery's name; NIXERY_POPULARITY_PATH this builder's older one (files only). */
function popularityConfig(env: NodeJS.ProcessEnv, problems: string[]): BuilderConfig["popularity"] {
  const current = (env.NIX_POPULARITY_URL ?? "").trim();
  const old = (env.NIXERY_POPULARITY_PATH ?? "").trim();
  if (current && old && current !== old) {
    problems.push(`NIX_POPULARITY_URL=${current} and NIXERY_POPULARITY_PATH=${old} disagree; they are one setting: keep NIX_POPULARITY_URL`);
  }
  const setting = current ? "NIX_POPULARITY_URL" : "NIXERY_POPULARITY_PATH";
  const value = current || old;
  if (value) {
    if (isPopularityUrl(value)) {
      try {
        new URL(value);
      } catch {
        problems.push(`${setting}=${value} is not a URL`);
      }
      return { source: value, setting };
    }
    if (/^[a-z][a-z0-9+.-]*:\/\//i.test(value) && !value.toLowerCase().startsWith("file://")) {
      problems.push(`${setting}=${value}: give an http:// or https:// URL, or a file`);
      return null;
    }
    let file: string;
    try {
      file = value.toLowerCase().startsWith("file://") ? fileURLToPath(value) : resolve(value);
    } catch (error) {
      problems.push(`${setting}=${value}: ${(error as Error).message}`);
      return null;
    }
    if (!existsSync(file)) problems.push(`${setting}=${value}: there is no such file`);
    return { source: file, setting };
  }
  const beside = env.NIXERY_PKGS_PATH ? resolve(env.NIXERY_PKGS_PATH, "popularity.json") : null;
  return beside && existsSync(beside) ? { source: beside, setting: "NIXERY_PKGS_PATH" } : null;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): BuilderConfig {
  const problems: string[] = [];
  const number = numberReader(env, problems);
  const secret = env.BUILDER_SECRET ?? "";
  if (secret.length < 16) {
    problems.push(
      secret
        ? "BUILDER_SECRET is shorter than 16 characters; use a long random value (openssl rand -hex 32)"
        : "BUILDER_SECRET is not set; set it to the same value as the worker's BUILDER_SECRET (openssl rand -hex 32)",
    );
  }
  const port = number("BUILDER_PORT", 8788, 0, 65535);
  const nix = readNixSettings(env, problems);
  const admission = admissionConfig(env, problems);
  const layerBudget = number("NIXERY_LAYER_BUDGET", DEFAULT_LAYER_BUDGET, 2, 125);
  const tagTtlSeconds = number("NIXERY_TAG_TTL_SECONDS", 300, 1, 31_536_000);
  const popularity = popularityConfig(env, problems);

  // The builder writes into the registry's bucket, where the worker reads: there is no other place for blobs.
  const storeKind = (env.BUILDER_STORE ?? "").trim();
  if (storeKind !== "" && storeKind !== "s3") {
    problems.push(
      `BUILDER_STORE=${storeKind} is no longer a choice: the builder always writes into the registry's bucket through ` +
        "the S3 API (the S3_* settings; npm start runs a local S3 endpoint for its local R2). Remove BUILDER_STORE",
    );
  }
  const store = s3Config(env, problems);

  const source = sourceConfig(env, problems);

  if (problems.length > 0) throw new ConfigError(problems.join("\n"));
  return {
    host: env.BUILDER_HOST || "127.0.0.1",
    secret,
    dataDir: resolve(env.BUILDER_DATA_DIR || ".data/builder"),
    nixDir: fileURLToPath(new URL("../nix/", import.meta.url)),
    source,
    port,
    nix,
    admission,
    layerBudget,
    popularity,
    tagTtlSeconds,
    store,
  };
}
