// A local stack in a process of its own, for tests that kill that process: prints one JSON line with the stack's
// addresses once it is up, then runs until killed. Usage: stack-child.ts <scratch folder>
import { join } from "node:path";
import { startStack } from "../../scripts/local-stack.ts";
import { TEST_PKGS } from "./stack.ts";

const scratch = process.argv[2];
if (!scratch) throw new Error("usage: stack-child.ts <scratch folder>");
const stack = await startStack({
  pkgsPath: TEST_PKGS,
  port: 0,
  builderPort: 0,
  builderDataDir: join(scratch, "builder"),
  workerStateDir: join(scratch, "worker-state"),
});
console.log(JSON.stringify({ registryUrl: stack.registryUrl, builderUrl: stack.builder.url }));
