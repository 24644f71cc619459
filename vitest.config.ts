import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Each file starts its own builder and worker; running files one at a time keeps 2 cores from thrashing.
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 180_000,
    reporters: ["default"],
    setupFiles: ["test/support/stale-connection-retry.ts"],
  },
});
