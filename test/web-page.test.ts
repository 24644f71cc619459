// The front page, in a real browser: Debian's chromium driven by playwright-core, against a running registry (the
// worker in workerd, a builder with real Nix). Screenshots of each page go to docs/screenshots/ (linked from the
// README); axe-core, run in the same browser, checks each page for accessibility problems.
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PROJECT_ROOT } from "../scripts/local-stack.ts";
import { slowProgram } from "./support/slow-fixtures.ts";
import { startTestStack, TEST_PKGS, type TestStack } from "./support/stack.ts";

const CHROMIUM = "/usr/bin/chromium";
const SCREENSHOTS = join(PROJECT_ROOT, "docs/screenshots");
const SLOW_SECONDS = 5;

let stack: TestStack;
let browser: Browser;
let scratch: string;
const axeSource = readFile(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

interface BuildSummary {
  imageKey: string;
  packages: string[];
  phase: string;
}

async function builds(): Promise<BuildSummary[]> {
  return ((await (await fetch(`${stack.registryUrl}/api/builds`)).json()) as { builds: BuildSummary[] }).builds;
}

async function until<T>(
  what: string,
  check: () => Promise<T | null | undefined | false>,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Serious and critical accessibility violations axe-core finds on the page. */
async function accessibilityProblems(page: Page): Promise<string[]> {
  await page.addScriptTag({ content: await axeSource });
  const results = await page.evaluate<{
    violations: { id: string; impact: string | null; help: string; nodes: { target: string[] }[] }[];
  }>("axe.run(document, { resultTypes: ['violations'] })");
  return results.violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
}

async function screenshot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "web-page-"));
  const pkgsPath = join(scratch, "pkgs");
  await mkdir(pkgsPath);
  // test-pkgs, a slow package, and an alias (nixpkgs' way: present unless config.allowAliases is false).
  await writeFile(
    join(pkgsPath, "default.nix"),
    `{ system ? builtins.currentSystem, config ? {}, ... }@args:\nlet base = import ${TEST_PKGS} args;\nin base // {${slowProgram("slowtool", SLOW_SECONDS, String(Date.now()))}\n} // (if config.allowAliases or true then { greeter = base.greeting; } else { })\n`,
  );
  await mkdir(SCREENSHOTS, { recursive: true });
  stack = await startTestStack({ pkgsPath });
  // Two images that share their base layers, so the image page has something to show.
  for (const name of ["shell/hello", "shell/greeting"]) {
    expect((await fetch(`${stack.registryUrl}/v2/${name}/manifests/latest`)).status).toBe(200);
  }
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
}, 240_000);

afterAll(async () => {
  await browser?.close();
  await stack?.stop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

describe.skipIf(!existsSync(CHROMIUM))("the front page in chromium", () => {
  it("works without JavaScript: the usage, latest's revision, the recent builds, and the composer's answer", async () => {
    const context = await browser.newContext({ javaScriptEnabled: false });
    const page = await context.newPage();
    await page.goto(`${stack.registryUrl}/`);
    expect(await page.locator("h1").first().textContent()).toBe("Compose an image");
    const usage = await page.locator("#usage-title + ul").textContent();
    expect(usage).toMatch(/latest is [0-9a-z]{32,40};/);
    expect(await page.locator("table.builds tbody tr").count()).toBeGreaterThanOrEqual(2);
    await page.getByLabel("Packages").fill("shell hello");
    await page.getByRole("button", { name: "Show the pull command" }).click();
    await page.waitForURL(/packages=shell\+hello/);
    expect(await page.locator("#composed").textContent()).toContain(
      `docker run --rm -it ${stack.registryHost}/shell/hello bash`,
    );
    // Built already, so the builder knows its size.
    expect(((await page.locator("#composed .size").textContent()) ?? "").replace(/\s+/g, " ").trim()).toMatch(
      /^About \d+(\.\d)? (KiB|MiB) unpacked\.$/,
    );
    // The copy buttons need a script: without one they stay hidden, and the commands are plain, selectable text.
    expect(await page.locator("button.copy:visible").count()).toBe(0);
    await screenshot(page, "front-page-without-javascript");
    await context.close();
    // axe-core is a script: it checks the same page in a context that runs scripts.
    const checked = await browser.newPage();
    await checked.goto(page.url());
    expect(await accessibilityProblems(checked)).toEqual([]);
    await checked.close();
  });

  it("composes as you type: names checked against the package set, arm64 and a pinned tag, a copy button that copies", async () => {
    const context = await browser.newContext({ permissions: ["clipboard-read", "clipboard-write"] });
    const page = await context.newPage();
    await page.goto(`${stack.registryUrl}/`);
    await page.getByLabel("Packages").pressSequentially("shell hello");
    const composed = page.locator("#composed");
    await expect.poll(() => composed.textContent(), { timeout: 10_000 }).toContain(`${stack.registryHost}/shell/hello`);
    await page.getByLabel("System").selectOption("aarch64-linux");
    await page.getByLabel("Tag").fill("0123456789abcdef0123456789abcdef01234567");
    await expect
      .poll(() => composed.textContent(), { timeout: 10_000 })
      .toContain(`${stack.registryHost}/arm64/shell/hello:0123456789abcdef0123456789abcdef01234567`);
    // Each package is checked against the package set: an unknown name is flagged with the closest names, an alias
    // names the package it stands for.
    await page.getByLabel("System").selectOption("x86_64-linux");
    await page.getByLabel("Tag").fill("latest");
    await page.getByLabel("Packages").fill("hello helo greeter");
    const checks = composed.locator("ul.checks");
    const checksText = async () => ((await checks.textContent()) ?? "").replace(/\s+/g, " ");
    await expect.poll(checksText, { timeout: 20_000 }).toContain("helo is not in the package set; did you mean hello?");
    expect(await checksText()).toContain("greeter is an alias of greeting");
    expect(await checks.locator("li.found").allTextContents()).toEqual(
      expect.arrayContaining([expect.stringContaining("hello")]),
    );
    await screenshot(page, "front-page-name-checks");
    expect(await accessibilityProblems(page)).toEqual([]);
    // The same answer as JSON, for scripts.
    const api = (await (await fetch(`${stack.registryUrl}/api/packages?packages=helo+greeter`)).json()) as {
      packages: { name: string; status: string; suggestions?: string[]; aliasOf?: string }[];
    };
    expect(api.packages).toEqual([
      { name: "greeter", status: "found", attribute: "greeter", aliasOf: "greeting" },
      { name: "helo", status: "unknown", suggestions: ["hello"] },
    ]);
    // Names that are not repository names are flagged as such.
    await page.getByLabel("Packages").fill("Hello World!");
    await expect
      .poll(() => composed.locator("[role=alert]").textContent(), { timeout: 10_000 })
      .toContain("is not a repository name");
    await page.getByLabel("Packages").fill("shell hello");
    await page.getByLabel("System").selectOption("x86_64-linux");
    await page.getByLabel("Tag").fill("latest");
    const docker = `docker run --rm -it ${stack.registryHost}/shell/hello bash`;
    await expect.poll(() => composed.textContent(), { timeout: 10_000 }).toContain(docker);
    // Keyboard only: tab to the first copy button and press Enter.
    const copy = composed.getByRole("button", { name: "Copy the docker run command" });
    await copy.focus();
    await page.keyboard.press("Enter");
    await expect.poll(() => page.evaluate("navigator.clipboard.readText()"), { timeout: 5_000 }).toBe(docker);
    await screenshot(page, "front-page-composer");
    expect(await accessibilityProblems(page)).toEqual([]);
    await context.close();
  });

  it("follows a build live through its phases to done, then links the image page", async () => {
    const pull = fetch(`${stack.registryUrl}/v2/slowtool/manifests/latest`);
    const build = await until("the slowtool build to appear", async () =>
      (await builds()).find((b) => b.packages.includes("slowtool")),
    );
    const page = await browser.newPage();
    await page.goto(`${stack.registryUrl}/builds/${build.imageKey}`);
    const seen: string[] = [];
    let shot = false;
    let logSeen = "";
    await until(
      "the page to show the build done",
      async () => {
        const phase = (await page.locator('[data-field="phase"]').textContent())?.trim() ?? "";
        if (seen.at(-1) !== phase) seen.push(phase);
        if (phase === "building") {
          logSeen =
            (await page
              .locator('[data-field="log"]')
              .textContent()
              .catch(() => null)) ?? logSeen;
        }
        if (phase === "building" && !shot && logSeen.includes("slowtool")) {
          shot = true;
          await screenshot(page, "build-running");
          expect(await accessibilityProblems(page)).toEqual([]);
        }
        return phase === "done";
      },
      90_000,
    );
    expect((await pull).status).toBe(200);
    // It moved on its own (the page polls /api/builds/<key>): from building to done, never backwards.
    expect(seen).toContain("building");
    // While it built, the page showed the end of Nix's log, naming the derivation being built.
    expect(logSeen).toMatch(/building '\/nix\/store\/[0-9a-z]{32}-slowtool-1\.0\.drv'/);
    expect(seen.at(-1)).toBe("done");
    const order = ["queued", "evaluating", "building", "layering", "uploading", "done"];
    const positions = seen.filter((p) => order.includes(p)).map((p) => order.indexOf(p));
    expect(positions).toEqual([...positions].sort((a, b) => a - b));
    await expect.poll(() => page.getByRole("link", { name: /The image/ }).count(), { timeout: 10_000 }).toBe(1);
    await screenshot(page, "build-done");
    await page.close();
  });

  it("shows an image's layers with their store paths, and the layers another image shares", async () => {
    const all = await builds();
    const greeting = all.find((b) => b.packages.includes("greeting") && b.phase === "done");
    expect(greeting).toBeDefined();
    const page = await browser.newPage();
    await page.goto(`${stack.registryUrl}/images/${greeting!.imageKey}`);
    expect(await page.locator("h1").textContent()).toBe("Image shell/greeting");
    const rows = page.locator("table.layers tbody tr");
    expect(await rows.count()).toBeGreaterThan(3);
    const contents = await page.locator("table.layers tbody td:nth-child(3)").allTextContents();
    expect(contents.some((text) => /store paths: .*greeting/.test(text))).toBe(true);
    expect(contents.at(-1)).toMatch(/^root filesystem, with links to/);
    // shell/hello was built before it from the same shell packages: their layers are the same blobs.
    const shared = await page.locator("table.layers tbody td:nth-child(4) a").allTextContents();
    expect(shared).toContain("shell/hello");
    const own = await page
      .locator("table.layers tbody tr", { hasText: "greeting" })
      .first()
      .locator("td:nth-child(4)")
      .textContent();
    expect(own).toContain("none of the recent images");
    expect(await page.locator("pre.config").textContent()).toContain('"architecture": "amd64"');
    const facts = await page.locator("dl.facts").textContent();
    expect(facts).toMatch(/OCI manifest\s*sha256:[0-9a-f]{64}/);
    expect(facts).toMatch(/Docker manifest\s*sha256:[0-9a-f]{64}/);
    await screenshot(page, "image-page");
    expect(await accessibilityProblems(page)).toEqual([]);
    await page.close();
  });

  it("shows why a build failed, with the end of Nix's log", async () => {
    expect((await fetch(`${stack.registryUrl}/v2/broken/manifests/latest`)).status).toBe(500);
    const failed = await until("the failed build", async () =>
      (await builds()).find((b) => b.packages.includes("broken") && b.phase === "failed"),
    );
    const page = await browser.newPage();
    await page.goto(`${stack.registryUrl}/builds/${failed.imageKey}`);
    const failure = page.locator("section.failure");
    expect(await failure.locator("h2").textContent()).toBe("Why it failed");
    expect(await failure.textContent()).toContain("BUILD_FAILED");
    expect(await failure.locator("pre.log").textContent()).toContain(
      "error: this package is broken on purpose (test fixture)",
    );
    await screenshot(page, "build-failed");
    expect(await accessibilityProblems(page)).toEqual([]);
    await page.close();
  });
});
