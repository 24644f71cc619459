// The builder's configuration, all from the environment, checked at startup with errors that name the variable.
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { DEFAULT_LAYER_BUDGET } from "./layering.ts";

export interface BuilderConfig {
  host: string;
  port: number;
  secret: string;
  dataDir: string;
  nixDir: string;
  nixTimeoutSeconds: number;
  layerBudget: number;
  tagTtlSeconds: number;
  source:
    | { kind: "path"; path: string }
    | { kind: "channel"; channel: string; channelsUrl: string; archiveUrl: string };
}

/** One row per variable: the README's configuration table is written from the same facts. */
export const ENVIRONMENT_HELP: readonly [name: string, meaning: string][] = [
  ["BUILDER_SECRET", "required: the secret shared with the worker (at least 16 characters)"],
  ["BUILDER_HOST", "address to listen on (default 127.0.0.1)"],
  ["BUILDER_PORT", "port to listen on (default 8788)"],
  ["BUILDER_DATA_DIR", "where blobs and caches are kept (default ./.data/builder)"],
  ["NIXERY_PKGS_PATH", "serve this local package set (a folder with default.nix) instead of a channel"],
  ["NIXERY_CHANNEL", "the channel `latest` follows (default nixos-unstable)"],
  ["NIXERY_CHANNELS_URL", "channel service (default https://channels.nixos.org)"],
  ["NIXERY_ARCHIVE_URL", "source tarballs by commit (default https://github.com/NixOS/nixpkgs/archive)"],
  ["NIXERY_TAG_TTL_SECONDS", "how long a moving tag's resolution is reused (default 300)"],
  ["NIX_TIMEOUT_SECONDS", "time limit for one Nix evaluation or build (default 600)"],
  ["NIXERY_LAYER_BUDGET", `most layers per image, root filesystem included (default ${DEFAULT_LAYER_BUDGET}, 2 to 125)`],
];

export class ConfigError extends Error {}

function integer(env: NodeJS.ProcessEnv, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name}=${raw} is not a whole number from ${min} to ${max}`);
  }
  return value;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): BuilderConfig {
  const problems: string[] = [];
  const secret = env.BUILDER_SECRET ?? "";
  if (secret.length < 16) {
    problems.push(
      secret
        ? "BUILDER_SECRET is shorter than 16 characters; use a long random value (openssl rand -hex 32)"
        : "BUILDER_SECRET is not set; set it to the same value as the worker's BUILDER_SECRET (openssl rand -hex 32)",
    );
  }
  const numbers = (): Pick<BuilderConfig, "port" | "nixTimeoutSeconds" | "layerBudget" | "tagTtlSeconds"> => ({
    port: integer(env, "BUILDER_PORT", 8788, 0, 65535),
    nixTimeoutSeconds: integer(env, "NIX_TIMEOUT_SECONDS", 600, 1, 86_400),
    layerBudget: integer(env, "NIXERY_LAYER_BUDGET", DEFAULT_LAYER_BUDGET, 2, 125),
    tagTtlSeconds: integer(env, "NIXERY_TAG_TTL_SECONDS", 300, 1, 31_536_000),
  });
  let parsed: ReturnType<typeof numbers> | undefined;
  try {
    parsed = numbers();
  } catch (error) {
    problems.push((error as Error).message);
  }
  if (problems.length > 0 || !parsed) throw new ConfigError(problems.join("\n"));
  const source: BuilderConfig["source"] = env.NIXERY_PKGS_PATH
    ? { kind: "path", path: resolve(env.NIXERY_PKGS_PATH) }
    : {
        kind: "channel",
        channel: env.NIXERY_CHANNEL || "nixos-unstable",
        channelsUrl: env.NIXERY_CHANNELS_URL || "https://channels.nixos.org",
        archiveUrl: env.NIXERY_ARCHIVE_URL || "https://github.com/NixOS/nixpkgs/archive",
      };
  return {
    host: env.BUILDER_HOST || "127.0.0.1",
    secret,
    dataDir: resolve(env.BUILDER_DATA_DIR || ".data/builder"),
    nixDir: fileURLToPath(new URL("../nix/", import.meta.url)),
    source,
    ...parsed,
  };
}
