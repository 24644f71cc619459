// Issue "Production path": what a deployment is made of, checked without deploying anything: the
// builder-service command, the systemd unit, the Debian/Ubuntu install script (syntax and --dry-run only),
// the README's configuration table against the builder's own list, and `wrangler deploy --dry-run`.
import { execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ENVIRONMENT_HELP } from "../builder-service/config.ts";
import { PROJECT_ROOT } from "../scripts/local-stack.ts";
import { TEST_PKGS } from "./support/stack.ts";

const execFileAsync = promisify(execFile);
const WRAPPER = join(PROJECT_ROOT, "deploy/builder-service");
const INSTALLER = join(PROJECT_ROOT, "deploy/install-builder.sh");
const UNIT = join(PROJECT_ROOT, "deploy/builder-service.service");

async function run(command: string, args: string[], env: Record<string, string | undefined> = process.env, cwd = PROJECT_ROOT) {
  try {
    const { stdout, stderr } = await execFileAsync(command, args, { env, cwd, timeout: 60_000, maxBuffer: 16 * 1024 * 1024 });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

let scratch: string;

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "deployment-test-"));
});

afterAll(async () => {
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

describe("the builder-service command", () => {
  it("--help lists every setting, from any folder", async () => {
    const { code, stdout } = await run(WRAPPER, ["--help"], process.env, scratch);
    expect(code).toBe(0);
    expect(stdout).toContain("Usage: builder-service [--help | --check | --exit-with-stdin]");
    for (const [name] of ENVIRONMENT_HELP) expect(stdout).toContain(`  ${name} `);
  });

  it("is the package's bin", async () => {
    const pkg = JSON.parse(await readFile(join(PROJECT_ROOT, "package.json"), "utf8")) as { bin: Record<string, string> };
    expect(pkg.bin["builder-service"]).toBe("deploy/builder-service");
  });

  it("--check passes a good configuration and exits 0 without serving", async () => {
    const env = {
      PATH: process.env.PATH,
      BUILDER_SECRET: "a-secret-of-enough-length",
      BUILDER_DATA_DIR: join(scratch, "data"),
      NIXERY_PKGS_PATH: TEST_PKGS,
      NIX_CONFIG: "substituters =\nexperimental-features = nix-command",
    };
    const { code, stdout } = await run(WRAPPER, ["--check"], env);
    expect(code).toBe(0);
    expect(stdout).toMatch(/configuration OK\n {2}store: {2}local folder .*\n {2}source: .*\n {2}nix: {4}nix-build \(Nix\)/);
  });

  it("--check names what is missing and exits 2", async () => {
    const { code, stderr } = await run(WRAPPER, ["--check"], { PATH: process.env.PATH, BUILDER_STORE: "s3" });
    expect(code).toBe(2);
    for (const name of ["BUILDER_SECRET", "S3_ENDPOINT", "S3_BUCKET", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"]) {
      expect(stderr).toContain(name);
    }
  });
  it("--exit-with-stdin stops the builder when its parent's end of stdin closes (npm start killed outright)", async () => {
    const child = spawn(WRAPPER, ["--exit-with-stdin"], {
      env: {
        PATH: process.env.PATH,
        BUILDER_SECRET: "a-secret-of-enough-length",
        BUILDER_PORT: "0",
        BUILDER_DATA_DIR: join(scratch, "data-stdin"),
        NIXERY_PKGS_PATH: TEST_PKGS,
        NIX_CONFIG: "substituters =\nexperimental-features = nix-command",
      },
      stdio: ["pipe", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    for (let i = 0; i < 200 && !output.includes('"event":"listening"'); i++) await new Promise((r) => setTimeout(r, 50));
    expect(output).toContain('"event":"listening"');
    child.stdin.end();
    const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r("still running after 10 s"), 10_000))]);
    if (code === "still running after 10 s") child.kill("SIGKILL");
    expect(code).toBe(0);
    expect(output).toContain("standard input closed");
  });
});

describe("the systemd unit", () => {
  it("runs the command as nix-builder with the settings file, through nix-daemon, restarting on failure", async () => {
    const unit = await readFile(UNIT, "utf8");
    for (const line of [
      "User=nix-builder",
      "EnvironmentFile=/etc/nix-edge-registry/builder.env",
      "Environment=NIX_REMOTE=daemon",
      "ExecStart=/opt/nix-edge-registry/deploy/builder-service",
      "Restart=on-failure",
      "RestartPreventExitStatus=2",
      "StateDirectory=nix-edge-registry",
      "ProtectSystem=strict",
      "NoNewPrivileges=yes",
      "WantedBy=multi-user.target",
    ]) {
      expect(unit.split("\n")).toContain(line);
    }
    expect(unit).toMatch(/^After=.*nix-daemon\.socket/m);
  });

  it("passes systemd-analyze verify", async (context) => {
    if (!existsSync("/usr/bin/systemd-analyze")) context.skip();
    // Not installed here: point ExecStart at something that exists, and verify the rest.
    const copy = join(scratch, "builder-service.service");
    await writeFile(copy, (await readFile(UNIT, "utf8")).replace(/^ExecStart=.*$/m, "ExecStart=/bin/true"));
    const { code, stdout, stderr } = await run("systemd-analyze", ["verify", copy]);
    expect(`${stdout}${stderr}`.trim()).toBe("");
    expect(code).toBe(0);
  });
});

describe("the install script", () => {
  it("is valid bash", async () => {
    const { code, stderr } = await run("bash", ["-n", INSTALLER]);
    expect(stderr).toBe("");
    expect(code).toBe(0);
  });

  it("--dry-run shows every step and changes nothing", async () => {
    const watched = ["/etc/nix-edge-registry", "/opt/nix-edge-registry", "/etc/systemd/system/builder-service.service", "/usr/local/bin/builder-service"];
    const before = watched.map((path) => existsSync(path));
    const { code, stdout, stderr } = await run("bash", [INSTALLER, "--dry-run"]);
    expect(stderr).toBe("");
    expect(code).toBe(0);
    expect(watched.map((path) => existsSync(path))).toEqual(before);
    for (const step of [
      /would run: systemctl enable --now nix-daemon/,
      /nix-builder/,
      /npm ci --omit=dev/,
      /\/etc\/nix-edge-registry\/builder\.env/,
      /would run: install -m 0644 .*builder-service\.service \/etc\/systemd\/system\/builder-service\.service/,
      /would run: systemctl enable builder-service\.service/,
      /dry run: nothing was changed/,
    ]) {
      expect(stdout).toMatch(step);
    }
  });

  it("refuses unknown options", async () => {
    const { code, stderr } = await run("bash", [INSTALLER, "--bogus"]);
    expect(code).toBe(2);
    expect(stderr).toContain("unknown option --bogus");
  });
});

describe("the README", () => {
  it("has a Deployment section whose configuration table is the builder's own list, and the worker's settings", async () => {
    const readme = await readFile(join(PROJECT_ROOT, "README.md"), "utf8");
    const deployment = readme.slice(readme.indexOf("\n## Deployment\n"));
    expect(deployment.startsWith("\n## Deployment\n")).toBe(true);
    for (const [name, meaning] of ENVIRONMENT_HELP) expect(deployment).toContain(`| \`${name}\` | ${meaning} |`);
    for (const name of ["REGISTRY_BUCKET", "BUILDER_URL", "BUILDER_SECRET", "TAG_CACHE_SECONDS"]) expect(deployment).toContain(`| \`${name}\` |`);
    for (const command of ["npx wrangler r2 bucket create", "deploy/install-builder.sh", "npx wrangler deploy", "npx wrangler secret put BUILDER_SECRET", "docker pull"]) {
      expect(deployment).toContain(command);
    }
  });
});

describe("wrangler deploy --dry-run", () => {
  it("bundles the worker offline with its R2 binding and BUILDER_URL", async () => {
    const outdir = join(scratch, "dist");
    const env = { ...process.env, WRANGLER_SEND_METRICS: "false", WRANGLER_SEND_ERROR_REPORTS: "false", CLOUDFLARE_CF_FETCH_ENABLED: "false" };
    const { code, stdout, stderr } = await run(join(PROJECT_ROOT, "node_modules/.bin/wrangler"), ["deploy", "--dry-run", "--outdir", outdir], env);
    expect(code, stderr).toBe(0);
    expect(stdout).toContain("env.REGISTRY_BUCKET (nix-edge-registry)");
    expect(stdout).toContain("env.BUILDER_URL");
    expect(existsSync(join(outdir, "index.js"))).toBe(true);
    const pkg = JSON.parse(await readFile(join(PROJECT_ROOT, "package.json"), "utf8")) as { scripts: Record<string, string> };
    expect(pkg.scripts["deploy:check"]).toContain("wrangler deploy --dry-run --outdir dist");
  });
});
