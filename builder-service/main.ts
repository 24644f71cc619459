// The builder-service command: `builder-service [--help]`, configured by environment (see config.ts).
import { execFile } from "node:child_process";
import { access, constants } from "node:fs/promises";
import { promisify } from "node:util";
import { ConfigError, ENVIRONMENT_HELP, loadConfig, type BuilderConfig } from "./config.ts";
import { serveFetch } from "./http-adapter.ts";
import { ImageBuilder } from "./image-builder.ts";
import { LocalBlobStore } from "./local-store.ts";
import { jsonLogger } from "./log.ts";
import { NixRunner } from "./nix-runner.ts";
import { createBuilderHandler } from "./server.ts";
import { ChannelSource } from "./sources/channel.ts";
import { LocalPathSource } from "./sources/local-path.ts";
import type { PackageSource } from "./sources/package-source.ts";

const execFileAsync = promisify(execFile);

function usage(): string {
  const width = Math.max(...ENVIRONMENT_HELP.map(([name]) => name.length));
  return [
    "builder-service: builds container images with Nix for the nix-edge-registry worker.",
    "",
    "Usage: builder-service [--help]",
    "",
    "Configuration (environment variables):",
    ...ENVIRONMENT_HELP.map(([name, meaning]) => `  ${name.padEnd(width)}  ${meaning}`),
    "",
    "Endpoints: GET /health, GET /ready, and for the worker (signed): POST /resolve, POST /build, GET /blobs/<digest>.",
  ].join("\n");
}

async function createSource(config: BuilderConfig): Promise<PackageSource> {
  if (config.source.kind === "path") {
    const source = new LocalPathSource(config.source.path, config.tagTtlSeconds);
    await source.check();
    return source;
  }
  return new ChannelSource({
    defaultChannel: config.source.channel,
    channelsUrl: config.source.channelsUrl,
    archiveUrl: config.source.archiveUrl,
    ttlSeconds: config.tagTtlSeconds,
  });
}

async function main(): Promise<void> {
  if (process.argv.includes("--help") || process.argv.includes("-h")) {
    console.log(usage());
    return;
  }
  let config: BuilderConfig;
  try {
    config = loadConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(`builder-service: cannot start:\n${error.message}\n\nRun builder-service --help for every setting.`);
      process.exit(2);
    }
    throw error;
  }
  const log = jsonLogger;
  const store = new LocalBlobStore(`${config.dataDir}/store`);
  await store.init();
  const source = await createSource(config);
  const nix = new NixRunner({ nixDir: config.nixDir, timeoutSeconds: config.nixTimeoutSeconds });
  const builder = new ImageBuilder({ store, source, nix, log, layerBudget: config.layerBudget });
  const readiness = async (): Promise<string | null> => {
    try {
      await execFileAsync("nix-build", ["--version"]);
    } catch {
      return "nix-build is not available; install Nix";
    }
    try {
      await access(config.dataDir, constants.W_OK);
    } catch {
      return `the data folder ${config.dataDir} is not writable`;
    }
    return null;
  };
  const handler = createBuilderHandler({ secret: config.secret, store, source, builder, log, readiness });
  const server = serveFetch(handler, (error) => log.error("response-failed", { error: String(error) }));
  // Builds can take minutes; Node's default request timeout would cut them off.
  server.requestTimeout = 0;
  server.headersTimeout = 60_000;
  server.on("error", (error: NodeJS.ErrnoException) => {
    const reason =
      error.code === "EADDRINUSE"
        ? `port ${config.port} on ${config.host} is already in use; set BUILDER_PORT to a free port`
        : error.message;
    console.error(`builder-service: cannot listen: ${reason}`);
    process.exit(1);
  });
  server.listen(config.port, config.host, () => {
    const address = server.address();
    const port = typeof address === "object" && address ? address.port : config.port;
    log.info("listening", { url: `http://${config.host}:${port}`, store: store.description, source: source.description });
  });
  const stop = () => server.close(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((error) => {
  console.error(`builder-service: ${(error as Error).message}`);
  process.exit(1);
});
