// The builder's configuration, all from the environment, checked at startup with errors that name the variable.
// Every problem is reported at once, so a new deployment is fixed in one edit, not one restart per variable.
// Each variable is described once, as a schema that also says what it does and its default (config-variables.ts):
// `builder-service --help` and the README's configuration table are written from those descriptions.
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type * as v from "valibot";
import type { AdmissionConfig } from "./admission.ts";
import type { GcSettings } from "./gc/policy.ts";
import { BUILDER_ENVIRONMENT, CONFIGURATION, DEFAULT_CHANNEL } from "./config-variables.ts";
import { helpRows, readEnvironment } from "./environment-variables.ts";
import { readNixSettings, type NixSettings } from "./nix-settings.ts";
import { CHANNEL_NAME } from "./sources/channel.ts";

export { MAX_SINGLE_PUT_BYTES, MIN_PART_SIZE_BYTES } from "./config-variables.ts";

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
  /** Blocks of a layer compressed at once (block-compression.ts). */
  compressionThreads: number;
  /** Layers of downloaded store paths written while Nix downloads the rest (BUILDER_EARLY_LAYERS). */
  earlyLayers: boolean;
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
  /** What --collect-garbage removes (gc/policy.ts). */
  gc: GcSettings;
  /** Largest the Nix store may grow before it is collected after a build; 0: no limit (nix-store-limit.ts). */
  nixStoreMaxBytes: number;
}

export class ConfigError extends Error {}

/** One row per listed variable: what --help prints, and the README's configuration table. */
export const ENVIRONMENT_HELP: readonly [name: string, meaning: string][] = helpRows(CONFIGURATION);

/** The README's configuration table, as a test compares it. */
export const configurationTable = (): string =>
  [
    "| variable | meaning |",
    "|---|---|",
    ...ENVIRONMENT_HELP.map(([name, meaning]) => `| \`${name}\` | ${meaning} |`),
  ].join("\n");

/** What variables say together; each alone is its schema's to check. Read from the text, so all are said at once. */
function relationProblems(env: NodeJS.ProcessEnv): string[] {
  const [path, repo, branch, channel, popularity, olderPopularity] = [
    "NIXERY_PKGS_PATH",
    "NIXERY_PKGS_REPO",
    "NIXERY_PKGS_BRANCH",
    "NIXERY_CHANNEL",
    "NIX_POPULARITY_URL",
    "NIXERY_POPULARITY_PATH",
  ].map((name) => (env[name] ?? "").trim());
  const problems: string[] = [];
  if (path && repo)
    problems.push("NIXERY_PKGS_PATH and NIXERY_PKGS_REPO are both set; a builder serves one package source: unset one");
  if (branch && !repo)
    problems.push("NIXERY_PKGS_BRANCH is set but NIXERY_PKGS_REPO is not; it names a branch of that repository");
  if (!path && !repo && !CHANNEL_NAME.test(channel || DEFAULT_CHANNEL)) {
    problems.push(
      `NIXERY_CHANNEL=${channel} is not a channel name (nixos-unstable, nixos-24.05, nixpkgs-unstable, ...)`,
    );
  }
  if (popularity && olderPopularity && popularity !== olderPopularity) {
    problems.push(
      `NIX_POPULARITY_URL=${popularity} and NIXERY_POPULARITY_PATH=${olderPopularity} disagree; they are one setting: keep NIX_POPULARITY_URL`,
    );
  }
  return problems;
}

type BuilderVariables = v.InferOutput<typeof BUILDER_ENVIRONMENT>;

function sourceOf(values: BuilderVariables): BuilderConfig["source"] {
  if (values.NIXERY_PKGS_PATH) return { kind: "path", path: resolve(values.NIXERY_PKGS_PATH) };
  if (values.NIXERY_PKGS_REPO)
    return { kind: "git", url: values.NIXERY_PKGS_REPO, branch: values.NIXERY_PKGS_BRANCH || null };
  return {
    kind: "channel",
    channel: values.NIXERY_CHANNEL,
    channelsUrl: values.NIXERY_CHANNELS_URL,
    archiveUrl: values.NIXERY_ARCHIVE_URL,
  };
}

/** NIX_POPULARITY_URL is Nixery's name; NIXERY_POPULARITY_PATH this builder's older one. Else the package set's file. */
function popularityOf(values: BuilderVariables): BuilderConfig["popularity"] {
  if (values.NIX_POPULARITY_URL) return { source: values.NIX_POPULARITY_URL, setting: "NIX_POPULARITY_URL" };
  if (values.NIXERY_POPULARITY_PATH)
    return { source: values.NIXERY_POPULARITY_PATH, setting: "NIXERY_POPULARITY_PATH" };
  const beside = values.NIXERY_PKGS_PATH ? resolve(values.NIXERY_PKGS_PATH, "popularity.json") : null;
  return beside && existsSync(beside) ? { source: beside, setting: "NIXERY_PKGS_PATH" } : null;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): BuilderConfig {
  const { values, problems } = readEnvironment(BUILDER_ENVIRONMENT, env);
  const nix = readNixSettings(env, problems);
  problems.push(...relationProblems(env));
  if (values === null || nix === null || problems.length > 0) throw new ConfigError(problems.join("\n"));
  return {
    host: values.BUILDER_HOST,
    secret: values.BUILDER_SECRET,
    dataDir: resolve(values.BUILDER_DATA_DIR),
    nixDir: fileURLToPath(new URL("../nix/", import.meta.url)),
    source: sourceOf(values),
    port: values.BUILDER_PORT,
    nix,
    admission: {
      maxBuilds: values.BUILDER_MAX_BUILDS,
      maxQueue: values.BUILDER_MAX_QUEUE,
      maxClosureBytes: values.BUILDER_MAX_CLOSURE_BYTES,
      attributes: { deny: values.NIXERY_DENY_ATTRIBUTES, allow: values.NIXERY_ALLOW_ATTRIBUTES },
    },
    layerBudget: values.NIXERY_LAYER_BUDGET,
    compressionThreads: values.BUILDER_COMPRESSION_THREADS,
    earlyLayers: values.BUILDER_EARLY_LAYERS === 1,
    popularity: popularityOf(values),
    tagTtlSeconds: values.NIXERY_TAG_TTL_SECONDS,
    store: {
      kind: "s3",
      endpoint: values.S3_ENDPOINT,
      bucket: values.S3_BUCKET,
      accessKeyId: values.S3_ACCESS_KEY_ID,
      secretAccessKey: values.S3_SECRET_ACCESS_KEY,
      region: values.S3_REGION,
      multipartThresholdBytes: values.S3_MULTIPART_THRESHOLD_BYTES,
      partSizeBytes: values.S3_PART_SIZE_BYTES,
      partConcurrency: values.S3_PART_CONCURRENCY,
      maxAttempts: values.S3_MAX_ATTEMPTS,
    },
    gc: {
      graceMs: values.GC_GRACE_SECONDS * 1000,
      oldRevisionKeepMs: values.GC_OLD_REVISION_KEEP_SECONDS * 1000,
      oldRevisionUnpulledMs: values.GC_OLD_REVISION_UNPULLED_SECONDS * 1000,
      keepPinned: values.GC_KEEP_PINNED === 1,
    },
    nixStoreMaxBytes: values.BUILDER_NIX_STORE_MAX_BYTES,
  };
}
