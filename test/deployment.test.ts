// Issue "Production path": what a deployment is made of, checked without deploying anything: the
// builder-service command (against a local bucket: the builder always writes into the registry's bucket through
// the S3 API), the systemd unit, the Debian/Ubuntu install script (syntax and --dry-run only), the README's
// configuration table against the builder's own list, and `wrangler deploy --dry-run`.
import { execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { configurationTable, ENVIRONMENT_HELP } from "../builder-service/config.ts";
import { OFFLINE_NIX_CONFIG, PROJECT_ROOT, startLocalBucket } from "../scripts/local-stack.ts";
import { buildBuilder } from "./support/built-builder.ts";
import { TEST_PKGS } from "./support/stack.ts";

const execFileAsync = promisify(execFile);
const WRAPPER = join(PROJECT_ROOT, "deploy/builder-service");
const INSTALLER = join(PROJECT_ROOT, "deploy/install-builder.sh");
const UNIT = join(PROJECT_ROOT, "deploy/builder-service.service");

async function run(
  command: string,
  args: string[],
  env: Record<string, string | undefined> = process.env,
  cwd = PROJECT_ROOT,
) {
  try {
    const { stdout, stderr } = await execFileAsync(command, args, {
      env,
      cwd,
      timeout: 60_000,
      maxBuffer: 16 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

let scratch: string;
/** A local bucket with its S3 endpoint, as R2 is for a deployed builder. */
let bucket: Awaited<ReturnType<typeof startLocalBucket>>;
// PATH for the install script's dry runs: it checks that systemctl exists (and never runs it in a dry run), so
// where there is none (a container), a stub stands in for it.
let installerPath: string;

beforeAll(async () => {
  await buildBuilder();
  scratch = await mkdtemp(join(tmpdir(), "deployment-test-"));
  bucket = await startLocalBucket(join(scratch, "bucket"));
  installerPath = process.env.PATH ?? "/usr/bin:/bin";
  if ((await run("sh", ["-c", "command -v systemctl"])).code !== 0) {
    await mkdir(join(scratch, "bin"));
    await writeFile(join(scratch, "bin/systemctl"), "#!/bin/sh\nexit 0\n", { mode: 0o755 });
    installerPath = `${join(scratch, "bin")}:${installerPath}`;
  }
});

/** Runs the install script with --dry-run and the given options, under a supported Node.js (so stderr holds only
 * what a test is about: this machine's Node 20 draws a warning, tested on its own). */
function dryRun(...args: string[]) {
  return dryRunUnderNode("22.22.0", ...args);
}

/** Runs the install script with --dry-run under a `node` that says it is `version`. Only the script's own version
 * questions get the pretended answer; everything else (npm, which is a node script) runs on the real Node. */
async function dryRunUnderNode(version: string, ...args: string[]) {
  const dir = join(scratch, `node-${version}`);
  if (!existsSync(dir)) {
    await mkdir(dir);
    const shim = `#!/bin/sh\ncase "$*" in\n  "-p process.versions.node") echo ${version} ;;\n  --version) echo v${version} ;;\n  *) exec ${process.execPath} "$@" ;;\nesac\n`;
    await writeFile(join(dir, "node"), shim, { mode: 0o755 });
  }
  // This machine's own nix.conf stays out of it unless a test names one.
  if (!args.includes("--nix-conf")) args = [...args, "--nix-conf", join(scratch, "no-nix.conf")];
  return run("bash", [INSTALLER, "--dry-run", ...args], { ...process.env, PATH: `${dir}:${installerPath}` });
}

afterAll(async () => {
  await bucket?.dispose();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

describe("the builder-service command", () => {
  it("--help lists every setting with its default, from any folder", async () => {
    const { code, stdout } = await run(WRAPPER, ["--help"], process.env, scratch);
    expect(code).toBe(0);
    expect(stdout).toContain(
      "Usage: builder-service [--help | --check | --collect-garbage [--dry-run] | --exit-with-stdin]",
    );
    const width = Math.max(...ENVIRONMENT_HELP.map(([name]) => name.length));
    for (const [name, meaning] of ENVIRONMENT_HELP) expect(stdout).toContain(`  ${name.padEnd(width)}  ${meaning}\n`);
    expect(stdout).toContain("(default: 8788; 0 to 65535)");
    expect((await run(WRAPPER, ["-h"], process.env, scratch)).stdout).toBe(stdout);
  });

  it("refuses an option it does not know, or an argument, with exit 2 and the valid options, and does not serve", async () => {
    // Everything needed to serve is set: a misspelt --check must not start a builder.
    const env = {
      PATH: process.env.PATH,
      BUILDER_SECRET: "a-secret-of-enough-length",
      BUILDER_DATA_DIR: join(scratch, "data-options"),
      NIXERY_PKGS_PATH: TEST_PKGS,
      NIX_CONFIG: OFFLINE_NIX_CONFIG,
      BUILDER_PORT: "0",
      ...bucket.s3Env,
    };
    for (const [args, problem] of [
      [["--chek"], "Unknown option '--chek'"],
      [["--check", "--verbose"], "Unknown option '--verbose'"],
      [["check"], "Unexpected argument 'check'"],
      [["--help=yes"], "--help"],
    ] as const) {
      const { code, stdout, stderr } = await run(WRAPPER, [...args], env);
      expect(code, args.join(" ")).toBe(2);
      expect(stderr).toContain(problem);
      expect(stderr).toContain("Valid options: --help (-h), --check, --exit-with-stdin");
      expect(stdout).toBe("");
    }
  });

  it("is the package's bin", async () => {
    const pkg = JSON.parse(await readFile(join(PROJECT_ROOT, "package.json"), "utf8")) as {
      bin: Record<string, string>;
    };
    expect(pkg.bin["builder-service"]).toBe("deploy/builder-service");
  });

  /** A working configuration: the offline test set, the local bucket, a data folder under `dataDir`. */
  const goodEnv = (dataDir: string) => ({
    PATH: process.env.PATH,
    BUILDER_SECRET: "a-secret-of-enough-length",
    BUILDER_DATA_DIR: join(scratch, dataDir),
    NIXERY_PKGS_PATH: TEST_PKGS,
    NIX_CONFIG: OFFLINE_NIX_CONFIG,
    ...bucket.s3Env,
  });

  it("--check passes a good configuration and exits 0 without serving", async () => {
    const { code, stdout } = await run(WRAPPER, ["--check"], goodEnv("data"));
    expect(code).toBe(0);
    const store = `S3 bucket ${bucket.s3Env.S3_BUCKET} at ${bucket.s3Env.S3_ENDPOINT}`;
    expect(stdout).toContain(`configuration OK\n  store:  ${store}\n`);
    expect(stdout).toMatch(/\n {2}source: .*\n {2}nix: {4}2\.\d+\S*, new enough for the package set `latest` serves/);
  });

  it("--check reports Nix's sandbox, and warns with what to do when it is off (Debian's nix.conf turns it off)", async () => {
    const on = await run(WRAPPER, ["--check"], {
      ...goodEnv("data-sandbox"),
      NIX_CONFIG: `${OFFLINE_NIX_CONFIG}\nsandbox = true`,
    });
    expect(on.code).toBe(0);
    expect(on.stdout).toMatch(/\n {2}nix: {4}2\.\d+\S*, new enough .*; sandbox on\n/);
    expect(on.stderr).not.toContain("warning");
    const off = await run(WRAPPER, ["--check"], {
      ...goodEnv("data-sandbox"),
      NIX_CONFIG: `${OFFLINE_NIX_CONFIG}\nsandbox = false`,
    });
    expect(off.code).toBe(0);
    expect(off.stdout).toContain("sandbox OFF");
    expect(off.stderr).toContain("builder-service: warning: Nix's sandbox OFF: package builds see the network");
    expect(off.stderr).toContain("set sandbox = true in /etc/nix/nix.conf and restart nix-daemon");
  });

  it("--check stops with exit 2 on a Nix setting that is wrong or that Nix refuses, naming the variable", async () => {
    const env = goodEnv("data-nix-settings");
    const wrong = await run(WRAPPER, ["--check"], { ...env, NIX_EXTRA_SUBSTITUTERS: "cache.example.com" });
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toContain('NIX_EXTRA_SUBSTITUTERS: "cache.example.com" is not a binary cache URL');
    const refused = await run(WRAPPER, ["--check"], {
      ...env,
      NIX_CONFIG: `${OFFLINE_NIX_CONFIG}\nmax-substitution-jobs-typo = 3`,
    });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain("NIX_CONFIG: Nix does not know the setting 'max-substitution-jobs-typo'");
  });

  it("--check names everything missing and exits 2: the secret and every S3 setting (the bucket is not optional)", async () => {
    const { code, stderr } = await run(WRAPPER, ["--check"], { PATH: process.env.PATH });
    expect(code).toBe(2);
    for (const name of ["BUILDER_SECRET", "S3_ENDPOINT", "S3_BUCKET", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"]) {
      expect(stderr).toContain(`${name} is not set`);
    }
  });

  it("--check refuses BUILDER_STORE=local, which no longer exists, saying what to do instead", async () => {
    const { code, stderr } = await run(WRAPPER, ["--check"], {
      ...goodEnv("data-local-store"),
      BUILDER_STORE: "local",
    });
    expect(code).toBe(2);
    expect(stderr).toContain("BUILDER_STORE=local is no longer a choice");
    expect(stderr).toContain("Remove BUILDER_STORE");
  });

  it("--exit-with-stdin stops the builder when its parent's end of stdin closes (npm start killed outright)", async () => {
    const child = spawn(WRAPPER, ["--exit-with-stdin"], {
      env: {
        PATH: process.env.PATH,
        BUILDER_SECRET: "a-secret-of-enough-length",
        BUILDER_PORT: "0",
        BUILDER_DATA_DIR: join(scratch, "data-stdin"),
        NIXERY_PKGS_PATH: TEST_PKGS,
        NIX_CONFIG: OFFLINE_NIX_CONFIG,
        ...bucket.s3Env,
      },
      stdio: ["pipe", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    for (let i = 0; i < 200 && !output.includes('"event":"listening"'); i++)
      await new Promise((r) => setTimeout(r, 50));
    expect(output).toContain('"event":"listening"');
    child.stdin.end();
    const code = await Promise.race([
      exited,
      new Promise<string>((r) => setTimeout(() => r("still running after 10 s"), 10_000)),
    ]);
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

  it("finds nix-build from the upstream installer (its profile) before the distribution's (/usr/bin)", async () => {
    const path = (await readFile(UNIT, "utf8")).match(/^Environment=PATH=(.*)$/m)?.[1].split(":") ?? [];
    expect(path).toContain("/nix/var/nix/profiles/default/bin");
    expect(path).toContain("/usr/bin");
    expect(path.indexOf("/nix/var/nix/profiles/default/bin")).toBeLessThan(path.indexOf("/usr/bin"));
    // The installer's own `builder-service --check` run, as nix-builder, searches the same way.
    const check = (await readFile(INSTALLER, "utf8")).match(/env -i PATH="([^"]*)"/)?.[1].split(":") ?? [];
    expect(check.indexOf("/nix/var/nix/profiles/default/bin")).toBeGreaterThanOrEqual(0);
    expect(check.indexOf("/nix/var/nix/profiles/default/bin")).toBeLessThan(check.indexOf("/usr/bin"));
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
    const watched = [
      "/etc/nix-edge-registry",
      "/opt/nix-edge-registry",
      "/etc/systemd/system/builder-service.service",
      "/usr/local/bin/builder-service",
    ];
    const before = watched.map((path) => existsSync(path));
    // As on a machine without Nix (this one may have an old nix-bin, which stops the script: tested below).
    const { code, stdout, stderr } = await dryRun("--nix-build", "none");
    expect(stderr).toBe("");
    expect(code).toBe(0);
    expect(watched.map((path) => existsSync(path))).toEqual(before);
    for (const step of [
      /would run: systemctl enable --now nix-daemon/,
      /nix-builder/,
      /npm ci --omit=dev --no-audit --no-fund && npm run --silent build:builder/,
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

  it("--help documents the options for testing, which work only with --dry-run", async () => {
    const help = await run("bash", [INSTALLER, "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("--os-release FILE   read FILE instead of /etc/os-release");
    expect(help.stdout).toContain("--nix-build none: as if no Nix were installed");
    expect(help.stdout).not.toContain("set -euo pipefail");
    expect(help.stdout).toContain("--nix-conf FILE     read FILE instead of /etc/nix/nix.conf");
    for (const option of [
      ["--os-release", "/etc/os-release"],
      ["--nix-build", "none"],
      ["--nix-conf", "/etc/nix/nix.conf"],
    ]) {
      const { code, stderr } = await run("bash", [INSTALLER, ...option]);
      expect(code).toBe(2);
      expect(stderr).toContain(`${option[0]} is for testing and works only with --dry-run`);
    }
  });
});

// Real /etc/os-release files of the systems the builder VM may run (Debian has no ID_LIKE).
const OS_RELEASE: Record<string, string> = {
  "Debian 12": `PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
`,
  "Debian 13": `PRETTY_NAME="Debian GNU/Linux 13 (trixie)"
NAME="Debian GNU/Linux"
VERSION_ID="13"
VERSION="13 (trixie)"
VERSION_CODENAME=trixie
DEBIAN_VERSION_FULL=13.1
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
`,
  "Debian sid": `PRETTY_NAME="Debian GNU/Linux forky/sid"
NAME="Debian GNU/Linux"
VERSION_CODENAME=forky
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
`,
  "Ubuntu 22.04": `PRETTY_NAME="Ubuntu 22.04.5 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
VERSION="22.04.5 LTS (Jammy Jellyfish)"
VERSION_CODENAME=jammy
ID=ubuntu
ID_LIKE=debian
HOME_URL="https://www.ubuntu.com/"
SUPPORT_URL="https://help.ubuntu.com/"
BUG_REPORT_URL="https://bugs.launchpad.net/ubuntu/"
PRIVACY_POLICY_URL="https://www.ubuntu.com/legal/terms-and-policies/privacy-policy"
UBUNTU_CODENAME=jammy
`,
  "Ubuntu 24.04": `PRETTY_NAME="Ubuntu 24.04.3 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
VERSION="24.04.3 LTS (Noble Numbat)"
VERSION_CODENAME=noble
ID=ubuntu
ID_LIKE=debian
HOME_URL="https://www.ubuntu.com/"
SUPPORT_URL="https://help.ubuntu.com/"
BUG_REPORT_URL="https://bugs.launchpad.net/ubuntu/"
PRIVACY_POLICY_URL="https://www.ubuntu.com/legal/terms-and-policies/privacy-policy"
UBUNTU_CODENAME=noble
LOGO=ubuntu-logo
`,
  "Linux Mint 22": `NAME="Linux Mint"
VERSION="22 (Wilma)"
ID=linuxmint
ID_LIKE="ubuntu debian"
PRETTY_NAME="Linux Mint 22"
VERSION_ID="22"
HOME_URL="https://www.linuxmint.com/"
SUPPORT_URL="https://forums.linuxmint.com/"
BUG_REPORT_URL="http://linuxmint-troubleshooting-guide.readthedocs.io/en/latest/"
PRIVACY_POLICY_URL="https://www.linuxmint.com/"
VERSION_CODENAME=wilma
UBUNTU_CODENAME=noble
`,
};

async function osRelease(system: string) {
  const file = join(scratch, `os-release-${system.replace(/\W+/g, "-")}`);
  await writeFile(file, OS_RELEASE[system]);
  return file;
}

/** A stand-in nix-build that reports `version` (from outside any Debian package: "another source"). */
async function fakeNixBuild(version: string) {
  const file = join(scratch, `nix-build-${version}`);
  await writeFile(file, `#!/bin/sh\necho "nix-build (Nix) ${version}"\n`, { mode: 0o755 });
  return file;
}

const APT_NIX = "would run: env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nix-setup-systemd";
const UPSTREAM_TOOLS = "would run: env DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl xz-utils";
const UPSTREAM_DOWNLOAD = /would run: curl -fsSL -o (\S+)\/install https:\/\/nixos\.org\/nix\/install\n/;
const UPSTREAM_RUN = /would run: sh (\S+)\/install --daemon --yes\n/;
const VERSION_CHECK =
  "would check: the installed nix-build (/nix/var/nix/profiles/default/bin first, then PATH) is Nix 2.18 or later";

describe("the install script gets Nix 2.18 or later, as current nixpkgs needs", () => {
  const cases = [
    {
      system: "Debian 13",
      way: "apt",
      reason:
        "==> Debian 13 ships Nix 2.26.3 (current nixpkgs needs 2.18 or later): using the distribution's Nix (apt: nix-setup-systemd",
    },
    {
      system: "Ubuntu 24.04",
      way: "apt",
      reason:
        "==> Ubuntu 24.04 ships Nix 2.18.1 (current nixpkgs needs 2.18 or later): using the distribution's Nix (apt: nix-setup-systemd",
    },
    {
      system: "Debian sid",
      way: "apt",
      reason:
        "==> Debian testing/unstable (Debian GNU/Linux forky/sid) ships Nix 2.18 or later, which current nixpkgs needs: using the distribution's Nix",
    },
    {
      system: "Debian 12",
      way: "upstream",
      reason:
        "==> Debian 12 ships Nix 2.8.0, older than the 2.18 current nixpkgs needs: using the upstream multi-user installer (https://nixos.org/nix/install --daemon)",
    },
    {
      system: "Ubuntu 22.04",
      way: "upstream",
      reason:
        "==> Ubuntu 22.04 ships Nix 2.6.0, older than the 2.18 current nixpkgs needs: using the upstream multi-user installer (https://nixos.org/nix/install --daemon)",
    },
    {
      system: "Linux Mint 22",
      way: "upstream",
      reason:
        "==> Linux Mint 22 is Debian-like but not Debian or Ubuntu, so which Nix it ships is unknown (current nixpkgs needs 2.18 or later): using the upstream multi-user installer",
    },
  ] as const;

  for (const { system, way, reason } of cases) {
    it(`on a clean ${system}: ${way === "apt" ? "the distribution's Nix" : "the upstream multi-user installer"}, and says why`, async () => {
      const { code, stdout, stderr } = await dryRun("--os-release", await osRelease(system), "--nix-build", "none");
      expect(stderr).toBe("");
      expect(code).toBe(0);
      expect(stdout).toContain(`==> system: ${OS_RELEASE[system].match(/^PRETTY_NAME="(.*)"$/m)?.[1]}\n`);
      expect(stdout).toContain(`${reason}`);
      // The Nix step, up to the next one.
      const nix = stdout.slice(stdout.indexOf("==> Nix\n"), stdout.indexOf("==> service user"));
      if (way === "apt") {
        expect(nix).toContain("would run: apt-get update -q\n");
        expect(nix).toContain(`${APT_NIX}\n`);
        expect(nix).not.toContain("nixos.org/nix/install");
        expect(nix).not.toContain("xz-utils");
      } else {
        expect(nix).not.toContain(APT_NIX);
        const tools = nix.indexOf(`${UPSTREAM_TOOLS}\n`);
        const download = nix.match(UPSTREAM_DOWNLOAD);
        const install = nix.match(UPSTREAM_RUN);
        expect(tools).toBeGreaterThan(nix.indexOf("would run: apt-get update -q\n"));
        expect(download?.index).toBeGreaterThan(tools);
        expect(install?.index).toBeGreaterThan(download?.index ?? Infinity);
        expect(install?.[1]).toBe(download?.[1]);
      }
      expect(nix.indexOf(VERSION_CHECK)).toBeGreaterThan(nix.indexOf(reason));
      expect(nix).toContain("would run: systemctl enable --now nix-daemon");
      expect(stdout).toContain("==> dry run: nothing was changed\n");
    });
  }

  it("keeps an installed Nix 2.18 or later whatever the system ships, and installs none", async () => {
    const nixBuild = await fakeNixBuild("2.24.9");
    const { code, stdout, stderr } = await dryRun(
      "--os-release",
      await osRelease("Debian 12"),
      "--nix-build",
      nixBuild,
    );
    expect(stderr).toBe("");
    expect(code).toBe(0);
    expect(stdout).toContain(`==> Nix 2.24.9 is installed (${nixBuild}): 2.18 or later, kept\n`);
    for (const line of [APT_NIX, UPSTREAM_TOOLS, "nixos.org/nix/install", "would check:"])
      expect(stdout).not.toContain(line);
    expect(stdout).toContain("==> dry run: nothing was changed\n");
  });

  describe("turns Nix's sandbox on where it is off, once a sandboxed build shows it works", () => {
    const SANDBOX_CHECK =
      "    would check: a one-step build with --option sandbox true through nix-daemon (Nix's sandbox works here)\n";
    const nixConf = async (name: string, text: string) => {
      const file = join(scratch, name);
      await writeFile(file, text);
      return file;
    };

    it("with the distribution's Nix, whose nix.conf says sandbox = false", async () => {
      const conf = join(scratch, "absent-nix.conf");
      const { code, stdout, stderr } = await dryRun(
        "--os-release",
        await osRelease("Debian 13"),
        "--nix-build",
        "none",
        "--nix-conf",
        conf,
      );
      expect(stderr).toBe("");
      expect(code).toBe(0);
      const check = stdout.indexOf(SANDBOX_CHECK);
      expect(check).toBeGreaterThan(stdout.indexOf("would run: systemctl enable --now nix-daemon"));
      expect(stdout.slice(check)).toContain(
        `    would set: sandbox = true in ${conf} (the distribution's nix.conf will say sandbox = false), then restart nix-daemon\n`,
      );
    });

    it("with a kept Nix whose nix.conf says sandbox = false", async () => {
      const conf = await nixConf(
        "off-nix.conf",
        "# see https://nixos.org/nix/manual/#sec-conf-file\nsandbox = false\n",
      );
      const { code, stdout } = await dryRun(
        "--os-release",
        await osRelease("Debian 12"),
        "--nix-build",
        await fakeNixBuild("2.24.9"),
        "--nix-conf",
        conf,
      );
      expect(code).toBe(0);
      expect(stdout).toContain(SANDBOX_CHECK);
      expect(stdout).toContain(
        `    would set: sandbox = true in ${conf} (it says sandbox = false), then restart nix-daemon\n`,
      );
    });

    it("and leaves it alone where it is on, by nix.conf or by Nix's default", async () => {
      const nixBuild = await fakeNixBuild("2.24.9");
      const on = await nixConf("on-nix.conf", "sandbox = true\n");
      const onRun = await dryRun(
        "--os-release",
        await osRelease("Debian 12"),
        "--nix-build",
        nixBuild,
        "--nix-conf",
        on,
      );
      expect(onRun.stdout).toContain(`==> Nix's sandbox is on (sandbox = true in ${on})\n`);
      const unset = await nixConf("unset-nix.conf", "build-users-group = nixbld\n");
      const unsetRun = await dryRun(
        "--os-release",
        await osRelease("Debian 12"),
        "--nix-build",
        nixBuild,
        "--nix-conf",
        unset,
      );
      expect(unsetRun.stdout).toContain(`==> Nix's sandbox is on (the default: ${unset} does not set it)\n`);
      for (const { stdout } of [onRun, unsetRun]) expect(stdout).not.toContain("would set: sandbox");
    });
  });

  it("stops at an older Nix from another source, and says how to upgrade it", async () => {
    const nixBuild = await fakeNixBuild("2.11.1");
    const { code, stdout, stderr } = await dryRun(
      "--os-release",
      await osRelease("Debian 13"),
      "--nix-build",
      nixBuild,
    );
    expect(code).toBe(1);
    expect(stderr).toContain(`Nix 2.11.1 is installed at ${nixBuild}, not from the distribution's packages`);
    expect(stderr).toContain("current nixpkgs needs Nix 2.18 or later");
    expect(stderr).toContain(`${scratch}/nix --extra-experimental-features nix-command upgrade-nix\n`);
    expect(stderr).toContain("systemctl daemon-reload && systemctl restart nix-daemon.service");
    expect(stdout).not.toContain("would run:");
    expect(stdout).not.toContain("dry run: nothing was changed");
  });

  it("on this machine with Debian's old nix-bin: says it is too old and what to remove, and removes nothing", async (context) => {
    // The real probe: nix-bin from dpkg, older than 2.18 (Debian 12's 2.8.0 here), and no upstream Nix.
    const dpkg = await run("dpkg-query", ["-W", "-f", "${Status} ${Version}", "nix-bin"]);
    const version = dpkg.stdout.match(/^install ok installed (?:\d+:)?(\d+)\.(\d+)(\.\d+)?/);
    const old = version !== null && (Number(version[1]) < 2 || (Number(version[1]) === 2 && Number(version[2]) < 18));
    if (!old || existsSync("/nix/var/nix/profiles/default/bin/nix-build")) context.skip();
    const nixVersion = `${version![1]}.${version![2]}${version![3] ?? ""}`;
    const { code, stdout, stderr } = await dryRun();
    expect(code).toBe(1);
    expect(stderr).toMatch(
      new RegExp(
        `Nix ${nixVersion.replaceAll(".", "\\.")} is installed from the distribution's packages \\(nix-bin: \\S*/nix-build\\)`,
      ),
    );
    expect(stderr).toContain("current nixpkgs needs Nix 2.18 or later: every nixpkgs build would fail with it");
    expect(stderr).toContain("This script does not remove it for you. Remove it, then run this script again");
    expect(stderr).toContain("\n    apt-get remove --purge nix-setup-systemd nix-bin\n");
    expect(stderr).toMatch(/refuses to run over what the old Nix left in \/nix .*\n {4}mv \/nix \/nix\.old/);
    // It stops before changing (or pretending to change) anything.
    expect(stdout).toContain("==> Nix\n");
    expect(stdout).not.toContain("would run:");
  });
});

describe("the install script asks for Node.js 22 or 24, the maintained LTS lines", () => {
  for (const version of ["22.22.0", "24.11.1"]) {
    it(`accepts Node.js ${version} without a word`, async () => {
      const { code, stdout, stderr } = await dryRunUnderNode(version, "--nix-build", "none");
      expect(stderr).toBe("");
      expect(code).toBe(0);
      expect(stdout).toContain(`==> node v${version}, npm `);
    });
  }

  it("goes on with Node.js 20, warning that it is past end of life and naming 22 and 24", async () => {
    const { code, stdout, stderr } = await dryRunUnderNode("20.19.5", "--nix-build", "none");
    expect(code).toBe(0);
    expect(stderr).toBe(
      "install-builder.sh: warning: Node.js 20.19.5 works, but Node.js 20 reached end of life on 2026-04-30 (no more security fixes): install Node.js 22 or 24 (NodeSource has both) and run this script again\n",
    );
    expect(stdout).toContain("==> node v20.19.5, npm ");
    expect(stdout).toContain("==> dry run: nothing was changed\n");
  });

  it("refuses Node.js 18 (Debian 12's own) before changing anything", async () => {
    const { code, stdout, stderr } = await dryRunUnderNode("18.19.0", "--nix-build", "none");
    expect(code).toBe(1);
    expect(stderr).toContain("Node.js 18.19.0 is too old: 22 or 24 is needed");
    expect(stdout).not.toContain("would run:");
  });
});

describe("the NixOS module", () => {
  const MODULE = join(PROJECT_ROOT, "deploy/nixos/builder.nix");

  it("parses with Nix 2.8, declares its options, and runs the builder with Node.js 22 by default", async () => {
    const parsed = await run("nix-instantiate", ["--parse", MODULE]);
    expect(parsed.stderr).not.toContain("error:");
    expect(parsed.code).toBe(0);
    expect(await readFile(MODULE, "utf8")).not.toContain("nodejs_20");
    // No nixpkgs offline, so no NixOS evaluation: the module is evaluated against its own defaults with the few
    // lib functions it uses, which catches a misspelt option or setting and shows the unit's command.
    const evaluation = join(scratch, "nixos-module.nix");
    await writeFile(
      evaluation,
      `let
  lib = {
    mkOption = option: option;
    mkEnableOption = name: { default = false; description = name; };
    mkIf = condition: value: if condition then value else { };
    mkOptionDefault = value: value;
    literalExpression = text: text;
    types = { path = "path"; str = "str"; int = "int"; bool = "bool"; package = "package"; attrsOf = t: "attrsOf"; oneOf = ts: "oneOf"; };
    inherit (builtins) any elem isBool mapAttrs;
    boolToString = b: if b then "true" else "false";
  };
  pkgs = { nodejs_20 = "/nix/store/nodejs-20"; nodejs_22 = "/nix/store/nodejs-22"; nodejs_24 = "/nix/store/nodejs-24"; };
  module = import (/. + ${JSON.stringify(MODULE)}) { inherit config lib pkgs; };
  options = module.options.services.nix-edge-registry-builder;
  config = {
    services.nix-edge-registry-builder = builtins.mapAttrs (name: option: option.default) options // { enable = true; settings = { BUILDER_PORT = 8788; }; };
    nix = { package = "/nix/store/nix"; settings.allowed-users = [ "*" ]; };
  };
in { options = builtins.attrNames options; inherit (module) config; }
`,
    );
    const evaluated = await run("nix-instantiate", ["--eval", "--strict", "--json", evaluation]);
    expect(evaluated.code, evaluated.stderr).toBe(0);
    const { options, config } = JSON.parse(evaluated.stdout) as {
      options: string[];
      config: {
        assertions: { assertion: boolean }[];
        nix: { settings: { sandbox: boolean; "allowed-users": string[] } };
        systemd: {
          services: Record<
            "builder-service" | "builder-gc",
            { environment: Record<string, string>; serviceConfig: Record<string, unknown> }
          >;
          timers: { "builder-gc": { timerConfig: Record<string, unknown> } };
        };
      };
    };
    expect(options).toEqual([
      "dataDir",
      "enable",
      "environmentFile",
      "gcSchedule",
      "group",
      "nodejs",
      "settings",
      "source",
      "user",
    ]);
    expect(config.assertions.every((a) => a.assertion)).toBe(true);
    expect(config.nix.settings.sandbox).toBe(true);
    expect(config.nix.settings["allowed-users"]).toContain("nix-builder");
    const service = config.systemd.services["builder-service"];
    expect(service.serviceConfig.ExecStart).toBe(
      "/nix/store/nodejs-22/bin/node --enable-source-maps /opt/nix-edge-registry/build/builder-service.mjs",
    );
    // The file the command names is where npm run build:builder puts it (deploy/builder-service runs the same).
    await buildBuilder();
    expect(existsSync(join(PROJECT_ROOT, "build/builder-service.mjs"))).toBe(true);
    expect(await readFile(join(PROJECT_ROOT, "deploy/builder-service"), "utf8")).toContain(
      'main="$root/build/builder-service.mjs"',
    );
    expect(service.serviceConfig).toMatchObject({
      User: "nix-builder",
      Group: "nix-builder",
      EnvironmentFile: "/etc/nix-edge-registry/builder.env",
      RestartPreventExitStatus: 2,
    });
    expect(service.environment).toMatchObject({
      BUILDER_DATA_DIR: "/var/lib/nix-edge-registry",
      NIX_REMOTE: "daemon",
      BUILDER_PORT: "8788",
    });
    // The bucket's garbage collection, daily, with the builder's settings.
    const gc = config.systemd.services["builder-gc"];
    expect(gc.serviceConfig).toMatchObject({
      Type: "oneshot",
      User: "nix-builder",
      EnvironmentFile: "/etc/nix-edge-registry/builder.env",
      ExecStart:
        "/nix/store/nodejs-22/bin/node --enable-source-maps /opt/nix-edge-registry/build/builder-service.mjs --collect-garbage",
    });
    expect(gc.environment).toMatchObject({ BUILDER_PORT: "8788" });
    expect(config.systemd.timers["builder-gc"].timerConfig).toMatchObject({ OnCalendar: "*-*-* 03:00:00" });
  });
});

describe("the README", () => {
  it("has a Deployment section whose configuration table is the builder's own list, and the worker's settings", async () => {
    const readme = await readFile(join(PROJECT_ROOT, "README.md"), "utf8");
    const deployment = readme.slice(readme.indexOf("\n## Deployment\n"));
    expect(deployment.startsWith("\n## Deployment\n")).toBe(true);
    // The builder's table is what the code generates, row for row (configurationTable() in builder-service/config.ts).
    const table = deployment.slice(deployment.indexOf("| variable | meaning |"));
    expect(table.slice(0, table.indexOf("\n\n"))).toBe(configurationTable());
    for (const name of [
      "REGISTRY_BUCKET",
      "BUILDER_URL",
      "BUILDER_SECRET",
      "TAG_CACHE_SECONDS",
      "BUILDER_STALE_SECONDS",
      "BUILD_COORDINATOR",
    ]) {
      expect(deployment).toContain(`| \`${name}\` |`);
    }
    expect(readme.split("\n").slice(0, 20).join("\n")).toContain("[deploy/README.md](deploy/README.md)");
    expect(deployment).toContain("[deploy/README.md](deploy/README.md)");
  });
});

describe("the deployment guide, deploy/README.md", () => {
  const GUIDE = join(PROJECT_ROOT, "deploy/README.md");

  it("walks from an empty account to a pull, in order", async () => {
    const guide = await readFile(GUIDE, "utf8");
    const steps = [
      "npx wrangler r2 bucket create",
      "deploy/install-builder.sh",
      "npx wrangler deploy",
      "npx wrangler secret put BUILDER_SECRET",
      "docker pull",
      "npm run smoke",
    ];
    // Each command is found after the one before it.
    let from = 0;
    for (const command of steps) {
      const at = guide.indexOf(command, from);
      expect(at, `${command} after position ${from}`).toBeGreaterThanOrEqual(0);
      from = at + command.length;
    }
  });

  it("uses only wrangler commands and flags the pinned wrangler has", async () => {
    // Each command line's words, up to a comment or the end of its code span.
    const lines = [...(await readFile(GUIDE, "utf8")).matchAll(/npx wrangler(.*?)(?=`|#|$)/gm)].map((m) =>
      m[1].trim().split(/\s+/).filter(Boolean),
    );
    expect(lines.length).toBeGreaterThanOrEqual(5);
    for (const words of lines)
      expect(words.length, "an `npx wrangler` with nothing after it on its line").toBeGreaterThan(0);

    // `wrangler <path> --help`, once per path, a few at a time (each starts a Node process, about a second).
    const env = {
      ...process.env,
      WRANGLER_SEND_METRICS: "false",
      WRANGLER_SEND_ERROR_REPORTS: "false",
      CLOUDFLARE_CF_FETCH_ENABLED: "false",
    };
    const helps = new Map<string, Promise<{ code: number; stdout: string; stderr: string }>>();
    let running = 0;
    const waiting: (() => void)[] = [];
    const help = (path: string[]) => {
      const key = path.join(" ");
      if (!helps.has(key)) {
        helps.set(
          key,
          (async () => {
            if (running >= 4) await new Promise<void>((resolve) => waiting.push(resolve));
            running++;
            try {
              return await run(join(PROJECT_ROOT, "node_modules/.bin/wrangler"), [...path, "--help"], env);
            } finally {
              running--;
              waiting.shift()?.();
            }
          })(),
        );
      }
      return helps.get(key)!;
    };
    const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

    const problems = (
      await Promise.all(
        lines.map(async (words) => {
          // The subcommand path: the longest run of leading words that each help lists as a command of the one before.
          const path: string[] = [];
          for (;;) {
            const next = words[path.length];
            const listed = new RegExp(`^\\s+wrangler ${escape([...path, next].join(" "))}(\\s|$)`, "m");
            if (next === undefined || next.startsWith("-") || !listed.test((await help(path)).stdout)) break;
            path.push(next);
          }
          const command = `wrangler ${words.join(" ")}`;
          if (path.length === 0) return [`${command}: \`${words[0]}\` is not a wrangler command`];
          const { code, stdout, stderr } = await help(path);
          if (code !== 0) return [`wrangler ${path.join(" ")} --help exited ${code}: ${stderr}`];
          // Help for a path wrangler does not know is its parent's, so the usage line must name the whole path.
          if (!stdout.startsWith(`wrangler ${path.join(" ")}\n`) && !stdout.startsWith(`wrangler ${path.join(" ")} `)) {
            return [`wrangler ${path.join(" ")} --help does not describe that command`];
          }
          // A group of commands (`r2 bucket`) does nothing itself: a word after it must be one of its commands.
          if (new RegExp(`^\\s+wrangler ${escape(path.join(" "))} \\S`, "m").test(stdout)) {
            return [`${command}: \`${words[path.length] ?? ""}\` is not a command of wrangler ${path.join(" ")}`];
          }
          return words
            .filter((word) => word.startsWith("-"))
            .map((word) => word.split("=")[0])
            .filter((flag) => !new RegExp(`(^|[\\s,])${escape(flag)}([\\s,]|$)`, "m").test(stdout))
            .map((flag) => `${command}: wrangler ${path.join(" ")} has no ${flag}`);
        }),
      )
    ).flat();
    expect(problems).toEqual([]);
  }, 180_000); // about 15 s on 2 idle cores; a loaded machine takes three times that
});

describe("wrangler deploy --dry-run", () => {
  it("bundles the worker offline with its R2 binding, BUILDER_URL and its build coordinators", async () => {
    const outdir = join(scratch, "dist");
    const env = {
      ...process.env,
      WRANGLER_SEND_METRICS: "false",
      WRANGLER_SEND_ERROR_REPORTS: "false",
      CLOUDFLARE_CF_FETCH_ENABLED: "false",
    };
    const { code, stdout, stderr } = await run(
      join(PROJECT_ROOT, "node_modules/.bin/wrangler"),
      ["deploy", "--dry-run", "--outdir", outdir],
      env,
    );
    expect(code, stderr).toBe(0);
    expect(stdout).toContain("env.REGISTRY_BUCKET (nix-edge-registry)");
    expect(stdout).toContain("env.BUILDER_URL");
    expect(stdout).toContain("env.BUILD_COORDINATOR (BuildCoordinator)");
    expect(existsSync(join(outdir, "index.js"))).toBe(true);
    const pkg = JSON.parse(await readFile(join(PROJECT_ROOT, "package.json"), "utf8")) as {
      scripts: Record<string, string>;
    };
    expect(pkg.scripts["deploy:check"]).toContain("wrangler deploy --dry-run --outdir dist");
  });
});
