// scripts/smoke.ts against a real stack: it passes on a working deployment, and names what to fix when the worker
// cannot reach the builder or the builder refuses the worker's signature. Images not built yet are asked for in the
// failing cases: a built one is served from the bucket without the builder.
import { join } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { PROJECT_ROOT, startBuilder } from "../scripts/local-stack.ts";
import { runAllowingFailure, startTestStack, TEST_PKGS, type TestStack } from "./support/stack.ts";

let stack: TestStack;

beforeAll(async () => {
  stack = await startTestStack();
}, 120_000);

afterAll(async () => {
  await stack?.stop();
});

const smoke = (...args: string[]) =>
  runAllowingFailure(join(PROJECT_ROOT, "node_modules/.bin/tsx"), [
    join(PROJECT_ROOT, "scripts/smoke.ts"),
    stack.registryUrl,
    ...args,
  ]);

it("passes on a working stack, with a line per check and the summary", async () => {
  const result = await smoke();
  expect(result.code, result.stderr).toBe(0);
  expect(result.stdout.match(/^✓ .* \(\d+\.\d\d s\)$/gm)).toHaveLength(3);
  expect(result.stdout).toMatch(
    new RegExp(
      `registry OK: ${stack.registryUrl} built and served hello \\(\\d+ layers, [\\d.]+ (B|KiB|MiB)\\) in [\\d.]+ s`,
    ),
  );
}, 60_000);

it("with the builder down: exits 1 pointing at BUILDER_URL and builder-service", async () => {
  await stack.builder.stop();
  try {
    const result = await smoke("--image", "coreutils");
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/^✓ .*\/v2\/ answers/m);
    expect(result.stdout).toMatch(/^✗ the worker reaches a builder/m);
    expect(result.stderr).toContain("check BUILDER_URL");
    expect(result.stderr).toContain("systemctl status builder-service");
    expect(result.stderr).toMatch(/under id [0-9a-f-]{36}/);
  } finally {
    await stack.restartBuilder(0);
  }
}, 60_000);

it("with a builder holding another BUILDER_SECRET: exits 1 saying the secrets must match", async () => {
  await stack.builder.stop();
  const builder = await startBuilder({
    pkgsPath: TEST_PKGS,
    builderPort: Number(new URL(stack.builder.url).port),
    builderDataDir: join(stack.scratch, "builder"),
    secret: "x".repeat(32),
    s3Env: stack.s3Env,
  });
  try {
    const result = await smoke("--image", "nano");
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/^✗ the worker reaches a builder/m);
    expect(result.stderr).toContain("BUILDER_SECRET must be the same on both sides");
    expect(result.stderr).toMatch(/under id [0-9a-f-]{36}/);
  } finally {
    await builder.stop();
  }
}, 60_000);
