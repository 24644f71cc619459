// deploy/builder-service runs the builder as JavaScript (build/builder-service.mjs); tests that run that command
// build it first from the current sources, once per test process.
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { PROJECT_ROOT } from "../../scripts/local-stack.ts";

let built: Promise<unknown> | undefined;

export function buildBuilder(): Promise<unknown> {
  built ??= promisify(execFile)(process.execPath, [join(PROJECT_ROOT, "scripts/build-builder.mjs")], {
    cwd: PROJECT_ROOT,
  });
  return built;
}
