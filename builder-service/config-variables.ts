// Every environment variable of the builder, each described once (environment-variables.ts says how): its check,
// its value, what it does and its default. CONFIGURATION lists them in the order `builder-service --help` and the
// README's configuration table do; config.ts makes the builder's configuration of them.
//
// Long because it is a table: many variables, each a few lines.
import { existsSync } from "node:fs";
import { availableParallelism } from "node:os";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as v from "valibot";
import { DEFAULT_DENIED_ATTRIBUTES } from "../common/attribute-policy.ts";
import { ATTRIBUTE_PATH } from "../common/builder-api.ts";
import { DEFAULT_MAX_CLOSURE_BYTES, DEFAULT_MAX_QUEUE } from "./admission.ts";
import {
  environment,
  help,
  optionalText,
  requiredText,
  text,
  unlisted,
  wholeNumber,
  words,
  type Variable,
} from "./environment-variables.ts";
import { DEFAULT_LAYER_BUDGET } from "./layering.ts";
import { NIX_VARIABLES } from "./nix-settings.ts";
import { isPopularityUrl } from "./popularity.ts";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** R2's and S3's smallest multipart part (all parts but the last); R2 also wants every part but the last equal. */
export const MIN_PART_SIZE_BYTES = 5 * MiB;
/** The largest single PUT, or part, R2 accepts: 5 MiB less than 5 GiB ("4.995 GiB"; S3's own limit is 5 GiB). */
export const MAX_SINGLE_PUT_BYTES = 5 * GiB - 5 * MiB;
const DEFAULT_MULTIPART_THRESHOLD_BYTES = 64 * MiB;
const DEFAULT_PART_SIZE_BYTES = 64 * MiB;

export const DEFAULT_CHANNEL = "nixos-unstable";

/** Taken as it is, not trimmed: it must equal the worker's to the byte. */
const secret: Variable<string> = (name) =>
  v.pipe(
    v.optional(v.string(), ""),
    v.nonEmpty(`${name} is not set; set it to the same value as the worker's BUILDER_SECRET (openssl rand -hex 32)`),
    v.minLength(16, `${name} is shorter than 16 characters; use a long random value (openssl rand -hex 32)`),
    help("the secret shared with the worker (at least 16 characters)", "required"),
  );

/** Attribute paths (a.b.c) separated by commas or white space, or `none`: for a deny-list nothing, for an allow-list a mistake. */
function attributePaths(name: string, none: "nothing" | "refused") {
  return v.pipe(
    words(true),
    v.rawCheck<string[]>(({ dataset, addIssue }) => {
      if (!dataset.typed) return;
      for (const entry of dataset.value) {
        if (entry !== "none" && !ATTRIBUTE_PATH.test(entry)) {
          addIssue({
            message: `${name}: ${JSON.stringify(entry)} is not an attribute path (e.g. pkgsCross or python3Packages.numpy)`,
          });
        }
      }
      if (none === "refused" && dataset.value.includes("none")) {
        addIssue({ message: `${name}=none would build nothing; unset it to build everything the deny-list allows` });
      }
    }),
  );
}

/** A branch name as git takes it (conservatively: no leading '-', no "..", no spaces or control characters). */
const BRANCH_NAME = /^(?!-)(?!.*\.\.)(?!.*\/\/)[A-Za-z0-9._/+-]+(?<![./])$/;

/** Popularity data: an http(s) URL, or a file (a path or a file:// URL) that exists; null when unset. */
const popularitySource = (name: string) =>
  v.pipe(
    text(),
    v.rawTransform<string, string | null>(({ dataset: { value }, addIssue, NEVER }) => {
      if (value === "") return null;
      if (isPopularityUrl(value)) {
        if (URL.canParse(value)) return value;
        addIssue({ message: `${name}=${value} is not a URL` });
        return NEVER;
      }
      if (/^[a-z][a-z0-9+.-]*:\/\//i.test(value) && !value.toLowerCase().startsWith("file://")) {
        addIssue({ message: `${name}=${value}: give an http:// or https:// URL, or a file` });
        return NEVER;
      }
      let file: string;
      try {
        file = value.toLowerCase().startsWith("file://") ? fileURLToPath(value) : resolve(value);
      } catch (error) {
        addIssue({ message: `${name}=${value}: ${(error as Error).message}` });
        return NEVER;
      }
      if (existsSync(file)) return file;
      addIssue({ message: `${name}=${value}: there is no such file` });
      return NEVER;
    }),
  );

/** S3 bucket names as R2 and S3 accept them (3 to 63 characters: lower-case letters, digits, '-' and '.'). */
const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

/** Scheme, host and port: an endpoint with a path would put the bucket in the wrong place. */
const endpointOrigin = (name: string) =>
  v.rawTransform<string, string>(({ dataset: { value }, addIssue, NEVER }) => {
    const url = URL.canParse(value) ? new URL(value) : null;
    if (!url)
      addIssue({
        message: `${name}=${value} is not a URL; for R2 it is https://<account id>.r2.cloudflarestorage.com`,
      });
    else if (url.protocol !== "https:" && url.protocol !== "http:") {
      addIssue({ message: `${name}=${value} must start with https:// (or http:// for a local test server)` });
    } else if (url.pathname.replace(/\/+$/, "") !== "" || url.search || url.hash) {
      addIssue({
        message: `${name}=${value} has a path; give the endpoint without the bucket (https://${url.host}) and the bucket in S3_BUCKET`,
      });
    } else return url.origin;
    return NEVER;
  });

const NIXPKGS_SWITCH =
  (meaning: string): Variable<string> =>
  () =>
    v.pipe(text(), help(meaning, null));

/** The service: where it listens, how much it builds at once, from which package set, and which names. */
const SERVICE_VARIABLES = {
  BUILDER_SECRET: secret,
  BUILDER_HOST: optionalText("address to listen on", "127.0.0.1"),
  BUILDER_PORT: wholeNumber({ meaning: "port to listen on", fallback: 8788, min: 0, max: 65535 }),
  BUILDER_DATA_DIR: optionalText(
    "where layers are spooled before upload and unfinished jobs are journalled",
    "./.data/builder",
  ),
  BUILDER_MAX_BUILDS: wholeNumber({
    meaning: "image builds run at once; more wait in a queue, in phase `queued`",
    fallback: { value: Math.max(1, Math.floor(availableParallelism() / 2)), shown: "half the cores, at least 1" },
    min: 1,
    max: 1024,
  }),
  BUILDER_MAX_QUEUE: wholeNumber({
    meaning:
      "builds waiting for their turn; past it a new build is refused with 503 BUILDER_BUSY and Retry-After, and the worker tries the next builder",
    fallback: DEFAULT_MAX_QUEUE,
    min: 0,
    max: 10_000,
  }),
  BUILDER_MAX_CLOSURE_BYTES: wholeNumber({
    meaning:
      "largest closure an image may have, the unpacked size of its store paths, 0 for no limit; refused with 403 DENIED " +
      "before anything is downloaded when the downloads alone are larger, else before layering",
    fallback: DEFAULT_MAX_CLOSURE_BYTES,
    min: 0,
    max: Number.MAX_SAFE_INTEGER,
    bytes: true,
  }),
  NIXERY_PKGS_PATH: () =>
    v.pipe(
      text(),
      help(
        "serve this local package set (a folder with default.nix) instead of a channel; only the tag `latest`",
        null,
      ),
    ),
  NIXERY_PKGS_REPO: (name: string) =>
    v.pipe(
      text(),
      v.check(
        (repo) => !repo.startsWith("-") && !/\s/.test(repo),
        (issue) =>
          `${name}=${String(issue.input)} is not a git URL (e.g. https://github.com/NixOS/nixpkgs or file:///srv/pkgs.git)`,
      ),
      help(
        "serve a package set from this git repository (https://, ssh://, file://) instead of a channel: tags are `latest`, " +
          "branch and git tag names, and 40-hex commits; a bare mirror is kept under BUILDER_DATA_DIR/git",
        null,
      ),
    ),
  NIXERY_PKGS_BRANCH: (name: string) =>
    v.pipe(
      text(),
      v.check(
        (branch) => branch === "" || BRANCH_NAME.test(branch),
        (issue) => `${name}=${String(issue.input)} is not a branch name`,
      ),
      help("with NIXERY_PKGS_REPO: the branch `latest` follows", "the repository's default branch"),
    ),
  // Checked only where it is used, with neither NIXERY_PKGS_PATH nor NIXERY_PKGS_REPO (see relationProblems).
  NIXERY_CHANNEL: optionalText("the channel `latest` follows", DEFAULT_CHANNEL),
  NIXERY_CHANNELS_URL: optionalText("channel service", "https://channels.nixos.org"),
  NIXERY_ARCHIVE_URL: optionalText("source tarballs by commit", "https://github.com/NixOS/nixpkgs/archive"),
  NIXERY_TAG_TTL_SECONDS: wholeNumber({
    meaning:
      "seconds a moving tag's resolution (latest, a channel, a branch) is reused before it is resolved again; commits are pinned forever",
    fallback: 300,
    min: 1,
    max: 31_536_000,
  }),
  NIXERY_DENY_ATTRIBUTES: (name: string) =>
    v.pipe(
      attributePaths(name, "nothing"),
      v.transform((entries) =>
        entries.length === 0 ? DEFAULT_DENIED_ATTRIBUTES : entries.filter((entry) => entry !== "none"),
      ),
      help(
        "attribute names or paths never built, separated by commas or spaces, matched case-insensitively at any depth of a " +
          "name (`pkgscross.riscv64.hello` reaches pkgsCross); a list replaces the default one, and `none` denies nothing. " +
          "Refused with 403 DENIED, nothing built",
        DEFAULT_DENIED_ATTRIBUTES.join(", "),
      ),
    ),
  NIXERY_ALLOW_ATTRIBUTES: (name: string) =>
    v.pipe(
      attributePaths(name, "refused"),
      v.transform((entries) => (entries.length === 0 ? null : entries)),
      help(
        "if set, only these attribute paths and what is under them are built (e.g. `hello, python3Packages`), compared " +
          "like NIXERY_DENY_ATTRIBUTES; the deny-list still applies",
        null,
      ),
    ),
};

/** nixpkgs' own switches: not read by the builder, they reach Nix through its environment. */
const NIXPKGS_SWITCHES = {
  NIXPKGS_ALLOW_UNFREE: NIXPKGS_SWITCH(
    "nixpkgs' own switch, passed to Nix: `1` builds packages with unfree licenses (refused by default, with a message naming this variable)",
  ),
  NIXPKGS_ALLOW_BROKEN: NIXPKGS_SWITCH("nixpkgs' own switch: `1` builds packages marked broken (refused by default)"),
  NIXPKGS_ALLOW_INSECURE: NIXPKGS_SWITCH(
    "nixpkgs' own switch: `1` builds packages with known vulnerabilities (refused by default)",
  ),
  NIXPKGS_ALLOW_UNSUPPORTED_SYSTEM: NIXPKGS_SWITCH(
    "nixpkgs' own switch: `1` builds packages whose meta.platforms leave out the image's system (refused by default)",
  ),
};

/** How images are laid out, and the bucket they go to. */
const IMAGE_VARIABLES = {
  NIXERY_LAYER_BUDGET: wholeNumber({
    meaning: "most layers per image, root filesystem included",
    fallback: DEFAULT_LAYER_BUDGET,
    min: 2,
    max: 125,
  }),
  BUILDER_COMPRESSION_THREADS: wholeNumber({
    meaning:
      "1 MiB blocks of a layer compressed at once, each on a thread of its own; changes build speed and memory (2 MiB a thread), never the bytes",
    fallback: { value: Math.max(1, availableParallelism()), shown: "the number of cores" },
    min: 1,
    max: 256,
  }),
  BUILDER_EARLY_LAYERS: wholeNumber({
    meaning:
      "`1` writes the layers of store paths Nix has downloaded while it downloads the rest, for images whose closure needs nothing built (only when Nix's plan builds nothing but the image's metadata); `0` waits for the whole build",
    fallback: 1,
    min: 0,
    max: 1,
  }),
  NIX_POPULARITY_URL: (name: string) =>
    v.pipe(
      popularitySource(name),
      help(
        "popularity data for layering images with more store paths than NIXERY_LAYER_BUDGET, Nixery's format " +
          '{"name-version": count}: an http(s) URL, downloaded at startup (a failed download stops the builder), or a file; ' +
          "Nixery's name, and NIXERY_POPULARITY_PATH the older one of the same setting",
        "popularity.json in NIXERY_PKGS_PATH if there is one, else none: such images keep their largest store paths in " +
          "layers of their own and the rest in one",
      ),
    ),
  /** The older name of NIX_POPULARITY_URL (files only, then). */
  NIXERY_POPULARITY_PATH: (name: string) => v.pipe(popularitySource(name), unlisted()),
  /** Retired: the builder always writes into the registry's bucket. */
  BUILDER_STORE: (name: string) =>
    v.pipe(
      text(),
      v.check(
        (kind) => kind === "" || kind === "s3",
        (issue) =>
          `${name}=${String(issue.input)} is no longer a choice: the builder always writes into the registry's bucket through ` +
          `the S3 API (the S3_* settings; npm start runs a local S3 endpoint for its local R2). Remove ${name}`,
      ),
      unlisted(),
    ),
  S3_ENDPOINT: (name: string) =>
    v.pipe(
      requiredText(
        "the S3 API endpoint of the registry's bucket, without the bucket, e.g. https://ACCOUNT_ID.r2.cloudflarestorage.com (R2; npm start runs a local one)",
        "the S3 API endpoint, for R2 https://<account id>.r2.cloudflarestorage.com",
      )(name),
      endpointOrigin(name),
    ),
  S3_BUCKET: (name: string) =>
    v.pipe(
      requiredText(
        "the bucket, the same one the worker's REGISTRY_BUCKET binding names",
        "the bucket the worker's REGISTRY_BUCKET binding names (wrangler.toml)",
      )(name),
      v.regex(
        BUCKET_NAME,
        (issue) => `${name}=${issue.input} is not a bucket name (3 to 63 characters: a-z, 0-9, '-' and '.')`,
      ),
    ),
  S3_ACCESS_KEY_ID: requiredText(
    "access key id (R2: an API token's Access Key ID, with Object Read & Write on the bucket)",
    "an access key id (R2: create an API token with Object Read & Write)",
  ),
  S3_SECRET_ACCESS_KEY: requiredText(
    "the secret access key that goes with S3_ACCESS_KEY_ID",
    "the secret access key of S3_ACCESS_KEY_ID",
  ),
  S3_REGION: optionalText("signing region; R2 wants `auto`", "auto"),
  S3_MULTIPART_THRESHOLD_BYTES: wholeNumber({
    meaning: "blobs larger than this are uploaded in parts; at most R2's limit for one upload",
    fallback: DEFAULT_MULTIPART_THRESHOLD_BYTES,
    min: MIN_PART_SIZE_BYTES,
    max: MAX_SINGLE_PUT_BYTES,
    bytes: true,
  }),
  S3_PART_SIZE_BYTES: wholeNumber({
    meaning: "size of every part but the last; at least R2's minimum, at most its limit for one upload",
    fallback: DEFAULT_PART_SIZE_BYTES,
    min: MIN_PART_SIZE_BYTES,
    max: MAX_SINGLE_PUT_BYTES,
    bytes: true,
  }),
  S3_PART_CONCURRENCY: wholeNumber({ meaning: "parts of one blob uploaded at once", fallback: 4, min: 1, max: 32 }),
  S3_MAX_ATTEMPTS: wholeNumber({
    meaning: "tries per request on 5xx, 429 and dropped connections, with exponential backoff",
    fallback: 5,
    min: 1,
    max: 20,
  }),
};

const DAY_SECONDS = 86_400;

/** What the garbage collection (builder-service --collect-garbage, gc/) removes, and the builder's disk. */
const GC_VARIABLES = {
  GC_GRACE_SECONDS: wholeNumber({
    meaning:
      "--collect-garbage removes no unreferenced blob, manifest, record or marker younger than this (a build in progress " +
      "uploads its layers before its image exists)",
    fallback: { value: DAY_SECONDS, shown: `${DAY_SECONDS} = 1 day` },
    min: 0,
    max: 365 * DAY_SECONDS,
  }),
  GC_OLD_REVISION_KEEP_SECONDS: wholeNumber({
    meaning:
      "an image of an old revision (one no moving tag resolves to now) is removed once built at least this long ago " +
      "and not pulled for GC_OLD_REVISION_UNPULLED_SECONDS; the current revision of every moving tag is always kept",
    fallback: { value: 30 * DAY_SECONDS, shown: `${30 * DAY_SECONDS} = 30 days` },
    min: 0,
    max: 3650 * DAY_SECONDS,
  }),
  GC_OLD_REVISION_UNPULLED_SECONDS: wholeNumber({
    meaning:
      "see GC_OLD_REVISION_KEEP_SECONDS; a pull is recorded by the worker at most once a day per isolate (pulls/ in the bucket)",
    fallback: { value: 7 * DAY_SECONDS, shown: `${7 * DAY_SECONDS} = 7 days` },
    min: 0,
    max: 3650 * DAY_SECONDS,
  }),
  GC_KEEP_PINNED: wholeNumber({
    meaning:
      "`1` keeps the images of every commit pulled by its 40-hex commit for good; `0` lets them expire like old revisions",
    fallback: 1,
    min: 0,
    max: 1,
  }),
  BUILDER_NIX_STORE_MAX_BYTES: wholeNumber({
    meaning:
      "after each build, when the Nix store's valid paths add up to more than this, `nix-store --gc --max-freed` frees " +
      "what is not rooted (running builds are) down to 80% of it; 0 for no limit",
    fallback: 0,
    min: 0,
    max: Number.MAX_SAFE_INTEGER,
    bytes: true,
  }),
};

/** Every variable the builder reads, in the order --help and the README list them. */
export const CONFIGURATION = environment({
  ...SERVICE_VARIABLES,
  ...NIX_VARIABLES,
  ...NIXPKGS_SWITCHES,
  ...IMAGE_VARIABLES,
  ...GC_VARIABLES,
});

/** What the builder reads itself; the NIX_* variables are nix-settings.ts's. */
export const BUILDER_ENVIRONMENT = environment({
  ...SERVICE_VARIABLES,
  ...NIXPKGS_SWITCHES,
  ...IMAGE_VARIABLES,
  ...GC_VARIABLES,
});
