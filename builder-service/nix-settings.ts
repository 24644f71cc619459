// The builder's Nix settings: binary caches, parallelism and the time limit, from named environment variables,
// handed to every Nix command as NIX_CONFIG lines. At startup Nix itself reads them once (`probeNix`), so a value
// Nix rejects stops the builder with the variable's name instead of failing every build later.
import * as v from "valibot";
import {
  environment,
  help,
  readEnvironment,
  text,
  unlisted,
  wholeNumber,
  wholeNumberCheck,
  words,
  type Variable,
} from "./environment-variables.ts";
import { CommandNotFoundError, CommandTimeoutError, runCommand, type CommandResult } from "./time-limited-command.ts";

export interface NixSettings {
  /** Replaces Nix's list of binary caches; null keeps Nix's own (cache.nixos.org unless nix.conf says otherwise). */
  substituters: string[] | null;
  trustedPublicKeys: string[] | null;
  /** Added to the caches above: your own cache. */
  extraSubstituters: string[];
  extraTrustedPublicKeys: string[];
  /** Derivations built at once; 0 builds nothing (substitutes only). */
  maxJobs: number | "auto";
  /** Cores one build may use; 0 is all. */
  cores: number;
  /** Time limit of one Nix evaluation or build. */
  timeoutSeconds: number;
}

const DEFAULT_NIX_TIMEOUT_SECONDS = 600;

/** Which variable sets which Nix setting, for messages about a value Nix rejected. */
const VARIABLE_OF_SETTING: Record<string, string> = {
  substituters: "NIX_SUBSTITUTERS",
  "trusted-public-keys": "NIX_TRUSTED_PUBLIC_KEYS",
  "extra-substituters": "NIX_EXTRA_SUBSTITUTERS",
  "extra-trusted-public-keys": "NIX_EXTRA_TRUSTED_PUBLIC_KEYS",
  "max-jobs": "NIX_MAX_JOBS",
  cores: "NIX_CORES",
};

/** URL schemes Nix takes as a store (binary caches, other machines' stores). */
const STORE_URL = /^(https?|s3|file|ssh|ssh-ng|gs):\/\/\S+$/;
const CACHE_URL = "a binary cache URL (https://..., s3://..., file://...)";
/** A public key as Nix writes it: name:base64 of 32 bytes. */
const PUBLIC_KEY = /^[A-Za-z0-9._-]+:[A-Za-z0-9+/]{43}=$/;
const KEY = "a public key (name:base64, e.g. cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=)";

/** A problem for each word of the list that is not `what`; null (the variable unset) has none. */
const eachWord = <T extends string[] | null>(name: string, pattern: RegExp, what: string) =>
  v.rawCheck<T>(({ dataset, addIssue }) => {
    if (!dataset.typed || dataset.value === null) return;
    for (const word of dataset.value) {
      if (!pattern.test(word)) addIssue({ message: `${name}: ${JSON.stringify(word)} is not ${what}` });
    }
  });

/** A list that replaces Nix's own when set: null when unset; `none` is the empty list. */
function replacingList(
  pattern: RegExp,
  what: string,
  meaning: string,
  shownDefault: string,
): Variable<string[] | null> {
  return (name) =>
    v.pipe(
      text(),
      v.transform((raw) => (raw === "" ? null : raw === "none" ? [] : raw.split(/\s+/))),
      eachWord(name, pattern, what),
      help(meaning, shownDefault),
    );
}

/** A list added to Nix's own: empty when unset. */
function addedList(pattern: RegExp, what: string, meaning: string): Variable<string[]> {
  return (name) => v.pipe(words(), eachWord(name, pattern, what), help(meaning, null));
}

const TIMEOUT = { min: 1, max: 86_400 };
const MAX_JOBS = { min: 0, max: 1024 };

/** The Nix settings' variables, in the order --help lists them. */
export const NIX_VARIABLES = {
  NIX_TIMEOUT: wholeNumber({
    meaning:
      "time limit in seconds for one Nix command: an evaluation, a build, or copying a package set into the store; " +
      "Nixery's name, and NIX_TIMEOUT_SECONDS the older one of the same setting",
    fallback: DEFAULT_NIX_TIMEOUT_SECONDS,
    ...TIMEOUT,
  }),
  /** The builder's older name of NIX_TIMEOUT; null when unset. */
  NIX_TIMEOUT_SECONDS: (name: string) =>
    v.pipe(
      text(),
      wholeNumberCheck(name, TIMEOUT.min, TIMEOUT.max),
      v.transform((raw) => (raw === "" ? null : Number(raw))),
      unlisted(),
    ),
  NIX_SUBSTITUTERS: replacingList(
    STORE_URL,
    CACHE_URL,
    "binary caches Nix downloads from, space-separated; `none` for none, so everything is built here",
    "Nix's own, https://cache.nixos.org",
  ),
  NIX_TRUSTED_PUBLIC_KEYS: replacingList(
    PUBLIC_KEY,
    KEY,
    "keys the binary caches sign with, space-separated",
    "Nix's own, cache.nixos.org-1:...",
  ),
  NIX_EXTRA_SUBSTITUTERS: addedList(
    STORE_URL,
    CACHE_URL,
    "your own binary caches, added to NIX_SUBSTITUTERS (e.g. https://cache.example.com or s3://bucket?endpoint=...)",
  ),
  NIX_EXTRA_TRUSTED_PUBLIC_KEYS: addedList(
    PUBLIC_KEY,
    KEY,
    "the keys of NIX_EXTRA_SUBSTITUTERS (name:base64, as `nix key convert-secret-to-public` prints)",
  ),
  NIX_MAX_JOBS: (name: string) =>
    v.pipe(
      text(),
      wholeNumberCheck(name, MAX_JOBS.min, MAX_JOBS.max, ["auto"]),
      v.transform((raw): number | "auto" => (raw === "" || raw === "auto" ? "auto" : Number(raw))),
      help(
        "derivations Nix builds at once: `auto` (one per core) or a number; 0 builds nothing but each image's own " +
          "small metadata and only downloads from the caches: an image with a package no cache has is refused with " +
          "403 DENIED naming this variable",
        `auto; ${MAX_JOBS.min} to ${MAX_JOBS.max}`,
      ),
    ),
  NIX_CORES: wholeNumber({ meaning: "cores one build may use, 0 for all", fallback: 0, min: 0, max: 1024 }),
};

/**
 * Reads the settings from the environment. Problems are pushed to `problems`, each naming its variable, and then
 * there are no settings.
 */
export function readNixSettings(env: NodeJS.ProcessEnv, problems: string[]): NixSettings | null {
  const { values, problems: found } = readEnvironment(environment(NIX_VARIABLES), env);
  problems.push(...found);
  if (!values) return null;
  const { NIX_TIMEOUT: timeout, NIX_TIMEOUT_SECONDS: older } = values;
  const clashes: string[] = [];
  if (values.NIX_EXTRA_SUBSTITUTERS.length > 0 && values.NIX_EXTRA_TRUSTED_PUBLIC_KEYS.length === 0) {
    clashes.push(
      "NIX_EXTRA_SUBSTITUTERS is set but NIX_EXTRA_TRUSTED_PUBLIC_KEYS is not: Nix accepts nothing from a cache whose key it does not trust",
    );
  }
  // NIX_TIMEOUT is Nixery's name; NIX_TIMEOUT_SECONDS this builder's older one. Both may be set only if they agree.
  if (older !== null && (env.NIX_TIMEOUT ?? "").trim() !== "" && timeout !== older) {
    clashes.push(
      `NIX_TIMEOUT=${env.NIX_TIMEOUT} and NIX_TIMEOUT_SECONDS=${env.NIX_TIMEOUT_SECONDS} disagree; they are one setting: keep NIX_TIMEOUT`,
    );
  }
  problems.push(...clashes);
  if (clashes.length > 0) return null;
  return {
    substituters: values.NIX_SUBSTITUTERS,
    trustedPublicKeys: values.NIX_TRUSTED_PUBLIC_KEYS,
    extraSubstituters: values.NIX_EXTRA_SUBSTITUTERS,
    extraTrustedPublicKeys: values.NIX_EXTRA_TRUSTED_PUBLIC_KEYS,
    maxJobs: values.NIX_MAX_JOBS,
    cores: values.NIX_CORES,
    timeoutSeconds: older ?? timeout,
  };
}

/**
 * NIX_CONFIG for Nix commands: these settings, then whatever NIX_CONFIG the builder was started with (Nix reads
 * the lines in order, so an explicit NIX_CONFIG still wins: it is the escape hatch for any other Nix setting).
 */
export function nixConfig(settings: NixSettings, inherited: string | undefined): string {
  const lines = [`max-jobs = ${settings.maxJobs}`, `cores = ${settings.cores}`];
  if (settings.substituters) lines.push(`substituters = ${settings.substituters.join(" ")}`);
  if (settings.trustedPublicKeys) lines.push(`trusted-public-keys = ${settings.trustedPublicKeys.join(" ")}`);
  if (settings.extraSubstituters.length > 0) lines.push(`extra-substituters = ${settings.extraSubstituters.join(" ")}`);
  if (settings.extraTrustedPublicKeys.length > 0)
    lines.push(`extra-trusted-public-keys = ${settings.extraTrustedPublicKeys.join(" ")}`);
  if (inherited?.trim()) lines.push(inherited.trim());
  return lines.join("\n");
}

/** Nix's word for a build-users-group that does not exist: a warning at startup, the error of every build. */
export const MISSING_BUILD_USERS_GROUP =
  /(warning|error): the group '([^']+)' specified in 'build-users-group' does not exist/;

/** What to do about a build-users-group that does not exist (every build fails on it). */
export function missingBuildUsersGroupMessage(group: string): string {
  return (
    `Nix runs builds as members of the group '${group}' (build-users-group), which does not exist here, so every build ` +
    `fails: create the build users (a multi-user Nix does: nix-setup-systemd, or the upstream installer with --daemon), ` +
    `or for a single-user Nix run by root add 'build-users-group =' to NIX_CONFIG`
  );
}

export interface NixProbe {
  /** e.g. "2.26.3" */
  version: string;
}

export class NixSettingsError extends Error {}

/**
 * Starts Nix once with the builder's NIX_CONFIG: returns its version, or throws NixSettingsError naming the
 * variable whose value Nix refused (or NIX_CONFIG for a setting of its own), and for a build-users group that
 * does not exist (every build would fail on it).
 */
export async function probeNix(env: NodeJS.ProcessEnv, timeoutMs = 30_000): Promise<NixProbe> {
  let result: CommandResult;
  try {
    result = await runCommand("nix-instantiate", ["--eval", "--json", "-E", "builtins.nixVersion"], {
      label: "nix-instantiate --eval builtins.nixVersion",
      timeoutMs,
      env,
    });
  } catch (error) {
    if (error instanceof CommandTimeoutError) throw new NixSettingsError(`Nix does not start: ${error.message}`);
    if (error instanceof CommandNotFoundError) {
      throw new NixSettingsError(
        "nix-instantiate is not installed or not on PATH: install Nix (see the VM requirements in deploy/README.md)",
      );
    }
    throw error;
  }
  const { code, stdout, stderr } = result;
  const problems: string[] = [];
  for (const match of stderr.matchAll(/setting '([a-z-]+)'/g)) {
    const variable = VARIABLE_OF_SETTING[match[1]] ?? "NIX_CONFIG";
    const line =
      stderr
        .split("\n")
        .find((l) => l.includes(match[0]))
        ?.trim() ?? match[0];
    if (/unknown setting/.test(line))
      problems.push(`${variable}: Nix does not know the setting '${match[1]}' (${line})`);
    else if (/^error:/.test(line))
      problems.push(`${variable}: Nix refused its value: ${line.replace(/^error:\s*/, "")}`);
  }
  const group = MISSING_BUILD_USERS_GROUP.exec(stderr);
  if (group) problems.push(missingBuildUsersGroupMessage(group[2]));
  if (code !== 0 && problems.length === 0)
    problems.push(`Nix does not start: ${stderr.trim().split("\n").slice(-3).join(" ")}`);
  if (problems.length > 0) throw new NixSettingsError([...new Set(problems)].join("\n"));
  const version = JSON.parse(stdout) as unknown;
  if (typeof version !== "string") throw new NixSettingsError(`Nix printed no version: ${stdout.slice(0, 100)}`);
  return { version };
}

/** Whether Nix isolates builds: "true", "false" or "relaxed", as Nix's `sandbox` setting says; null if unknown. */
export type SandboxSetting = "true" | "false" | "relaxed";

/**
 * Nix's effective `sandbox` setting for the builder's commands (nix.conf, then NIX_CONFIG). Through the daemon
 * it is the daemon's nix.conf that counts, which `show-config` reads too. Null when Nix does not say.
 */
export async function probeNixSandbox(env: NodeJS.ProcessEnv, timeoutMs = 30_000): Promise<SandboxSetting | null> {
  try {
    // `show-config` exists from Nix 2.4 on (Nix 2.20 renamed it `config show` and kept the old name).
    const { code, stdout } = await runCommand("nix", ["--extra-experimental-features", "nix-command", "show-config"], {
      label: "nix show-config",
      timeoutMs,
      env,
    });
    if (code !== 0) return null;
    const value = /^sandbox = (\S+)$/m.exec(stdout)?.[1];
    return value === "true" || value === "false" || value === "relaxed" ? value : null;
  } catch (error) {
    if (error instanceof CommandTimeoutError || error instanceof CommandNotFoundError) return null;
    throw error;
  }
}

/** What the sandbox setting means for the builder's builds, and what to do when it is off. */
export function sandboxReport(setting: SandboxSetting | null): { ok: boolean; text: string } {
  switch (setting) {
    case "true":
      return { ok: true, text: "sandbox on" };
    case "relaxed":
      return {
        ok: false,
        text: "sandbox relaxed: derivations marked __noChroot build outside it; set sandbox = true in /etc/nix/nix.conf and restart nix-daemon",
      };
    case "false":
      return {
        ok: false,
        text:
          "sandbox OFF: package builds see the network and the host's files (Debian's nix.conf ships sandbox = false); " +
          "set sandbox = true in /etc/nix/nix.conf and restart nix-daemon (deploy/install-builder.sh does this where the sandbox works)",
      };
    default:
      return {
        ok: false,
        text: "sandbox unknown: `nix show-config` did not say; check that nix.conf has sandbox = true",
      };
  }
}
