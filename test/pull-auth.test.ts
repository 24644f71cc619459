// Pull authentication (worker/pull-auth.ts), with real clients. One stack, its worker started with PULL_CREDENTIALS
// set (two users) and, to show that the combination is refused, a blob redirect to a public bucket domain. Beside
// it, in this file's Miniflare, three more copies of the worker on the same bucket: wrangler.toml's settings (auth
// off, the default), a secret with a short password, and PULL_AUTH=on without the secret (both must let nobody in).
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { Miniflare, type MiniflareOptions } from "miniflare";
import { chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OCI_MANIFEST } from "../common/media-types.ts";
import { PROJECT_ROOT } from "../scripts/local-stack.ts";
import { forwardWorkerdOutput } from "../scripts/workerd-process.ts";
import { parseBlobRedirect } from "../worker/blob-redirect.ts";
import { parsePullAuth, pullAuthOf } from "../worker/pull-credentials.ts";
import { issueToken, type Access } from "../worker/pull-tokens.ts";
import { has, startContainerd, startDockerd } from "./support/daemons.ts";
import { bundledWorker } from "./support/bundled-worker.ts";
import { startHttpFront } from "./support/http-front.ts";
import { podmanStorage, run, runAllowingFailure, startTestStack, type TestStack } from "./support/stack.ts";

const ALICE = { user: "alice", password: "correct-horse-battery-staple-1" };
const CI = { user: "ci.bot", password: "Zm9vYmFyYmF6cXV4cXV1eA==" };
const CREDENTIALS = `${ALICE.user}:${ALICE.password}\n${CI.user}:${CI.password}`;
const IMAGE = "hello";
const CHROMIUM = "/usr/bin/chromium";

let stack: TestStack;
let scratch: string;
let host: string;
let side: { miniflare: Miniflare; urls: Record<string, string>; logLines: string[]; bundleDir: string };
/** The manifest of IMAGE:latest, fetched with credentials. */
let manifest: { config: { digest: string }; layers: { digest: string; size: number }[] };

const basic = ({ user, password }: { user: string; password: string }) =>
  `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;

async function tokenFor(scope: string | string[], who = ALICE): Promise<string> {
  const query = new URLSearchParams({ service: host });
  for (const s of [scope].flat()) query.append("scope", s);
  const response = await fetch(`${stack.registryUrl}/token?${query}`, { headers: { Authorization: basic(who) } });
  expect(response.status).toBe(200);
  return ((await response.json()) as { token: string }).token;
}

/** A token's claims, read without checking it (the registry checks). */
function claimsOf(token: string): { sub: string; aud: string; exp: number; iat: number; access: Access[] } {
  return JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString()) as ReturnType<typeof claimsOf>;
}

async function startSideWorkers(): Promise<typeof side> {
  const bundleDir = await mkdtemp(join(scratch, "bundle-"));
  const instance = await bundledWorker(bundleDir);
  const names = ["default-settings", "short-password", "on-without-secret"];
  const registry = (name: string, vars: Record<string, string>) =>
    instance(name, { BUILDER_URL: stack.builder.url, BUILDER_SECRET: stack.secret, ...vars });
  const logLines: string[] = [];
  const miniflare = new Miniflare({
    workers: [
      registry(names[0], {}),
      registry(names[1], { PULL_CREDENTIALS: `${ALICE.user}:${ALICE.password} bob:tooshort` }),
      registry(names[2], { PULL_AUTH: "on" }),
    ],
    r2Persist: join(stack.workerStateDir, "v3", "r2"),
    host: "127.0.0.1",
    port: 0,
    handleRuntimeStdio: (stdout: Readable, stderr: Readable) =>
      forwardWorkerdOutput(stdout, stderr, (line) => logLines.push(line)),
  } as MiniflareOptions);
  await miniflare.ready;
  const urls: Record<string, string> = {};
  for (const name of names) urls[name] = (await miniflare.unsafeGetDirectURL(name)).origin;
  return { miniflare, urls, logLines, bundleDir };
}

beforeAll(async () => {
  scratch = await mkdtemp("/tmp/pull-auth-");
  stack = await startTestStack({
    workerVars: {
      PULL_CREDENTIALS: CREDENTIALS,
      BLOB_REDIRECT_MIN_BYTES: "1",
      BLOB_REDIRECT_URL: "https://blobs.example.invalid",
    },
  });
  host = stack.registryHost;
  const response = await fetch(`${stack.registryUrl}/v2/${IMAGE}/manifests/latest`, {
    headers: { Accept: OCI_MANIFEST, Authorization: basic(ALICE) },
  });
  expect(response.status).toBe(200);
  manifest = (await response.json()) as typeof manifest;
  side = await startSideWorkers();
}, 240_000);

afterAll(async () => {
  await side?.miniflare.dispose();
  await stack?.stop();
  if (side) await rm(side.bundleDir, { recursive: true, force: true });
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

/** JSON lines of a log with this event. */
function events(lines: string[], event: string): Record<string, unknown>[] {
  return lines
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((entry) => entry.event === event);
}

describe("without credentials", () => {
  it("answers /v2/ 401 with the token flow's challenge, and a repository's routes with its scope", async () => {
    const base = await fetch(`${stack.registryUrl}/v2/`);
    expect(base.status).toBe(401);
    expect(base.headers.get("www-authenticate")).toBe(`Bearer realm="${stack.registryUrl}/token",service="${host}"`);
    const body = (await base.json()) as { errors: { code: string; message: string }[] };
    expect(body.errors[0].code).toBe("UNAUTHORIZED");
    expect(body.errors[0].message).toContain(`docker login ${host}`);

    for (const method of ["GET", "HEAD"]) {
      for (const path of [
        `/v2/shell/hello/manifests/latest`,
        `/v2/shell/hello/blobs/${manifest.config.digest}`,
        `/v2/shell/hello/tags/list`,
      ]) {
        const response = await fetch(`${stack.registryUrl}${path}`, { method });
        expect({ path, method, status: response.status }).toEqual({ path, method, status: 401 });
        expect(response.headers.get("www-authenticate")).toBe(
          `Bearer realm="${stack.registryUrl}/token",service="${host}",scope="repository:shell/hello:pull"`,
        );
        expect(response.headers.get("content-type")).toBe("application/json");
      }
    }
  });

  it("answers a name outside the grammar 401 too, with no scope in the challenge, and 404 once authenticated", async () => {
    for (const name of ["a%0d%0aSet-Cookie:%20x", "a%22b", "HELLO"]) {
      const url = `${stack.registryUrl}/v2/${name}/manifests/latest`;
      const response = await fetch(url);
      expect({ name, status: response.status }).toEqual({ name, status: 401 });
      expect(response.headers.get("www-authenticate")).toBe(
        `Bearer realm="${stack.registryUrl}/token",service="${host}"`,
      );
      const authenticated = await fetch(url, { headers: { Authorization: basic(ALICE) } });
      expect({ name, status: authenticated.status }).toEqual({ name, status: 404 });
      expect(((await authenticated.json()) as { errors: { code: string }[] }).errors[0].code).toBe("NAME_INVALID");
    }
  });

  it("serves nothing a pull with credentials left in the location's cache or the isolate", async () => {
    const digest = manifest.layers[0].digest;
    const withCredentials = await fetch(`${stack.registryUrl}/v2/${IMAGE}/blobs/${digest}`, {
      headers: { Authorization: basic(ALICE) },
    });
    expect(withCredentials.status).toBe(200);
    await withCredentials.arrayBuffer();
    for (const path of [`/v2/${IMAGE}/blobs/${digest}`, `/v2/${IMAGE}/manifests/latest`]) {
      expect((await fetch(`${stack.registryUrl}${path}`)).status).toBe(401);
    }
  });

  it("refuses skopeo, saying it is unauthorized", async () => {
    const skopeo = await runAllowingFailure("skopeo", [
      "inspect",
      "--tls-verify=false",
      `docker://${host}/${IMAGE}:latest`,
    ]);
    expect(skopeo.code).not.toBe(0);
    expect(skopeo.stderr).toMatch(/unauthorized|authentication required/i);
  });
});

describe("the token endpoint", () => {
  it("gives a five-minute token for pull, with Basic credentials, for each of the users", async () => {
    for (const who of [ALICE, CI]) {
      const before = Math.floor(Date.now() / 1000);
      const response = await fetch(
        `${stack.registryUrl}/token?service=${host}&scope=repository:${IMAGE}:pull&offline_token=true&client_id=test`,
        { headers: { Authorization: basic(who) } },
      );
      expect(response.status).toBe(200);
      expect(response.headers.get("cache-control")).toBe("no-store");
      const answer = (await response.json()) as Record<string, unknown>;
      expect(Object.keys(answer).sort()).toEqual(["access_token", "expires_in", "issued_at", "token"]);
      expect(answer.access_token).toBe(answer.token);
      expect(answer.expires_in).toBe(300);
      const claims = claimsOf(answer.token as string);
      expect(claims.sub).toBe(who.user);
      expect(claims.aud).toBe(host);
      expect(claims.iat).toBeGreaterThanOrEqual(before);
      expect(claims.exp - claims.iat).toBe(300);
      expect(claims.access).toEqual([{ type: "repository", name: IMAGE, actions: ["pull"] }]);
    }
  });

  it("grants pull only: push and catalog scopes are left out, several repositories are granted", async () => {
    const token = await tokenFor([
      "repository:shell/hello:pull,push",
      "repository:other:push",
      "registry:catalog:*",
      `repository:${IMAGE}:pull repository:arm64/hello:*`,
    ]);
    expect(claimsOf(token).access.map((a) => `${a.name}:${a.actions.join(",")}`)).toEqual([
      "arm64/hello:pull",
      "hello:pull",
      "shell/hello:pull",
    ]);
  });

  it("takes OAuth2's password grant (POST), naming the scope granted; refuses other grants", async () => {
    const form = new URLSearchParams({
      grant_type: "password",
      username: CI.user,
      password: CI.password,
      service: host,
      client_id: "containerd-client",
      scope: `repository:${IMAGE}:pull,push`,
    });
    const response = await fetch(`${stack.registryUrl}/token`, { method: "POST", body: form });
    expect(response.status).toBe(200);
    const answer = (await response.json()) as { access_token: string; scope: string; expires_in: number };
    expect(answer.scope).toBe(`repository:${IMAGE}:pull`);
    expect(claimsOf(answer.access_token).sub).toBe(CI.user);

    form.set("password", "not-the-password-of-ci");
    const wrong = await fetch(`${stack.registryUrl}/token`, { method: "POST", body: form });
    expect(wrong.status).toBe(401);
    const refresh = await fetch(`${stack.registryUrl}/token`, {
      method: "POST",
      body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: "x", service: host }),
    });
    expect(refresh.status).toBe(400);
    expect(((await refresh.json()) as { errors: { message: string }[] }).errors[0].message).toMatch(/grant_type/);
  });

  it("refuses wrong, unknown and missing credentials with 401 and a Basic challenge", async () => {
    const cases: [string, Record<string, string>][] = [
      ["wrong password", { Authorization: basic({ user: ALICE.user, password: CI.password }) }],
      ["unknown user", { Authorization: basic({ user: "mallory", password: ALICE.password }) }],
      ["another user's password", { Authorization: basic({ user: CI.user, password: ALICE.password }) }],
      ["none", {}],
      ["not Basic", { Authorization: "Digest abc" }],
    ];
    for (const [what, headers] of cases) {
      const response = await fetch(`${stack.registryUrl}/token?service=${host}&scope=repository:hello:pull`, {
        headers,
      });
      expect({ what, status: response.status }).toEqual({ what, status: 401 });
      expect(response.headers.get("www-authenticate")).toBe(`Basic realm="${host}", charset="UTF-8"`);
      const body = (await response.json()) as { errors: { code: string; message: string }[] };
      expect(body.errors[0].code).toBe("UNAUTHORIZED");
    }
    const refusals = events(stack.workerLogLines, "pull-auth-refused");
    expect(refusals.map((r) => r.user)).toEqual(expect.arrayContaining(["alice", "mallory", "ci.bot"]));
    // The log names users, never a password.
    expect(stack.workerLogLines.join("\n")).not.toContain(ALICE.password);
  });
});

describe("tokens at the registry's routes", () => {
  it("lets a token pull the repositories it names, and answers another with insufficient_scope", async () => {
    const token = await tokenFor(`repository:${IMAGE}:pull`);
    const ok = await fetch(`${stack.registryUrl}/v2/${IMAGE}/manifests/latest`, {
      headers: { Authorization: `Bearer ${token}`, Accept: OCI_MANIFEST },
    });
    expect(ok.status).toBe(200);
    expect((await fetch(`${stack.registryUrl}/v2/`, { headers: { Authorization: `Bearer ${token}` } })).status).toBe(
      200,
    );
    const other = await fetch(`${stack.registryUrl}/v2/shell/hello/manifests/latest`, {
      headers: { Authorization: `Bearer ${token}` },
    });
    expect(other.status).toBe(401);
    expect(other.headers.get("www-authenticate")).toBe(
      `Bearer realm="${stack.registryUrl}/token",service="${host}",scope="repository:shell/hello:pull",error="insufficient_scope"`,
    );
  });

  it("refuses an expired, a tampered, another service's and another key's token with 401 invalid_token", async () => {
    const auth = await pullAuthOf({ PULL_CREDENTIALS: CREDENTIALS });
    if (auth.state !== "on") throw new Error(`settings ${auth.state}`);
    const access: Access[] = [{ type: "repository", name: IMAGE, actions: ["pull"] }];
    const now = Math.floor(Date.now() / 1000);
    // Made as the worker makes them (same secret, same derivation): a token in its time is accepted.
    const fresh = await issueToken(auth.tokenKey, { user: "alice", service: host, access, now: now - 200 });
    const expired = await issueToken(auth.tokenKey, { user: "alice", service: host, access, now: now - 301 });
    const elsewhere = await issueToken(auth.tokenKey, { user: "alice", service: "registry.example.com", access });
    const otherSecret = await pullAuthOf({ PULL_CREDENTIALS: `alice:${"x".repeat(20)}` });
    if (otherSecret.state !== "on") throw new Error(`settings ${otherSecret.state}`);
    const otherKey = await issueToken(otherSecret.tokenKey, { user: "alice", service: host, access });
    // Another repository's name put into a genuine token, its signature kept.
    const genuine = await tokenFor("repository:shell/hello:pull");
    const [header, payload, signature] = genuine.split(".");
    const claims = JSON.parse(Buffer.from(payload, "base64url").toString()) as { access: Access[] };
    claims.access = access;
    const tampered = `${header}.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.${signature}`;
    const noneAlg = `${Buffer.from('{"alg":"none","typ":"JWT"}').toString("base64url")}.${payload}.`;

    const url = `${stack.registryUrl}/v2/${IMAGE}/manifests/latest`;
    const accepted = await fetch(url, { headers: { Authorization: `Bearer ${fresh.token}` } });
    expect(accepted.status).toBe(200);
    for (const [what, token, reason] of [
      ["expired", expired.token, /expired/],
      ["another service", elsewhere.token, /another service/],
      ["another key", otherKey.token, /signature/],
      ["tampered", tampered, /signature/],
      ["alg none", noneAlg, /malformed/],
      ["garbage", "x".repeat(100), /malformed/],
    ] as const) {
      const response = await fetch(url, { headers: { Authorization: `Bearer ${token}` } });
      expect({ what, status: response.status }).toEqual({ what, status: 401 });
      expect(response.headers.get("www-authenticate")).toMatch(/,error="invalid_token"$/);
      const message = ((await response.json()) as { errors: { message: string }[] }).errors[0].message;
      expect({ what, message }).toEqual({ what, message: expect.stringMatching(reason) });
    }
  });

  it("answers malformed Authorization headers 401 with a registry error, never a 500", async () => {
    const b64 = (bytes: number[] | string) => Buffer.from(bytes as never).toString("base64");
    const values = [
      "Basic",
      "Basic !!!",
      `Basic ${b64("no-colon")}`,
      `Basic ${b64([0xff, 0xfe, 0x3a, 0x80])}`,
      `Basic ${b64(":")}`,
      `Basic ${"A".repeat(20_000)}`,
      "Bearer",
      "Bearer ..",
      "Bearer a.b.c",
      `Bearer ${"x.".repeat(3000)}x`,
      "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.%%%.abc",
      "bearer    x y",
      "Negotiate abc",
      "=",
    ];
    for (const value of values) {
      for (const path of ["/v2/", `/v2/${IMAGE}/manifests/latest`, "/api/builds"]) {
        const response = await fetch(`${stack.registryUrl}${path}`, { headers: { Authorization: value } });
        expect({ value: value.slice(0, 40), path, status: response.status }).toEqual({
          value: value.slice(0, 40),
          path,
          status: 401,
        });
        expect(((await response.json()) as { errors: { code: string }[] }).errors[0].code).toBe("UNAUTHORIZED");
      }
    }
  });

  it("takes Basic credentials on the registry's routes too (curl -u)", async () => {
    const { stdout } = await run("curl", [
      "-sf",
      "-u",
      `${CI.user}:${CI.password}`,
      "-H",
      `Accept: ${OCI_MANIFEST}`,
      `${stack.registryUrl}/v2/${IMAGE}/manifests/latest`,
    ]);
    expect((JSON.parse(stdout) as { config: { digest: string } }).config.digest).toBe(manifest.config.digest);
    const wrong = await runAllowingFailure("curl", [
      "-s",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      "-u",
      `${CI.user}:wrong-password-wrong-password`,
      `${stack.registryUrl}/v2/`,
    ]);
    expect(wrong.stdout).toBe("401");
  });

  it("serves blobs itself, marked private, and logs once that BLOB_REDIRECT_URL is refused with auth on", async () => {
    for (const { digest } of manifest.layers) {
      const response = await fetch(`${stack.registryUrl}/v2/${IMAGE}/blobs/${digest}`, {
        redirect: "manual",
        headers: { Authorization: basic(ALICE) },
      });
      expect(response.status).toBe(200);
      expect(response.headers.get("location")).toBeNull();
      expect(response.headers.get("cache-control")).toBe("private, max-age=31536000, immutable");
      await response.arrayBuffer();
    }
    const incidents = events(stack.workerLogLines, "incident").filter((e) => /blob redirect/.test(String(e.summary)));
    expect(incidents).toHaveLength(1);
    expect(JSON.stringify(incidents[0].details)).toMatch(/BLOB_REDIRECT_URL would publish every blob/);
    // A presigned redirect stays possible with auth on.
    const presigned = parseBlobRedirect({
      PULL_CREDENTIALS: CREDENTIALS,
      BLOB_REDIRECT_MIN_BYTES: "1",
      R2_S3_ENDPOINT: "https://account.r2.cloudflarestorage.com",
      R2_S3_BUCKET: "nix-edge-registry",
      R2_S3_ACCESS_KEY_ID: "id",
      R2_S3_SECRET_ACCESS_KEY: "secret",
    });
    expect(presigned.redirect.kind).toBe("presigned");
  });
});

describe("npm run smoke (scripts/smoke.ts)", () => {
  const smoke = (env: Record<string, string>, ...args: string[]) =>
    new Promise<{ code: number; output: string }>((resolve, reject) => {
      const child = spawn(
        join(PROJECT_ROOT, "node_modules/.bin/tsx"),
        [join(PROJECT_ROOT, "scripts/smoke.ts"), stack.registryUrl, ...args],
        { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] },
      );
      let output = "";
      child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
      child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
      child.once("error", reject);
      child.once("close", (code) => resolve({ code: code ?? 1, output }));
    });

  it("passes with a user's credentials, and says to give them when they are missing or wrong", async () => {
    const [ok, missing, wrong] = await Promise.all([
      smoke({ REGISTRY_CREDS: `${CI.user}:${CI.password}` }),
      smoke({}),
      smoke({}, "--creds", `${CI.user}:wrong-password-wrong-password`),
    ]);
    expect(ok.output).toMatch(/registry OK: .* built and served hello/);
    expect(ok.code).toBe(0);
    expect(missing.code).toBe(1);
    expect(missing.output).toMatch(/needs credentials .* --creds USER:PASSWORD or REGISTRY_CREDS/);
    expect(wrong.code).toBe(1);
    expect(wrong.output).toMatch(/refused the credentials given; check the user and password against PULL_CREDENTIALS/);
  });
});

describe("the pages and JSON APIs", () => {
  it("ask a browser for a user and password, and answer with them or with a token", async () => {
    for (const path of ["/", "/compose?packages=hello", "/api/builds", "/api/packages?packages=hello", "/builds/x"]) {
      const response = await fetch(`${stack.registryUrl}${path}`, { headers: { Accept: "text/html" } });
      expect({ path, status: response.status }).toEqual({ path, status: 401 });
      expect(response.headers.get("www-authenticate")).toBe(`Basic realm="${host}", charset="UTF-8"`);
    }
    const page = await fetch(`${stack.registryUrl}/`, {
      headers: { Accept: "text/html", Authorization: basic(ALICE) },
    });
    expect(page.status).toBe(200);
    expect(await page.text()).toContain("<form");
    const builds = await fetch(`${stack.registryUrl}/api/builds`, { headers: { Authorization: basic(CI) } });
    expect(builds.status).toBe(200);
    expect(((await builds.json()) as { builds: unknown[] }).builds.length).toBeGreaterThan(0);
    const token = await tokenFor([]);
    const packages = await fetch(`${stack.registryUrl}/api/packages?packages=hello`, {
      headers: { Authorization: `Bearer ${token}` },
    });
    expect(packages.status).toBe(200);
    // The stylesheet and script are static assets, served before the worker runs: no credentials needed.
    expect((await fetch(`${stack.registryUrl}/static/style.css`)).status).toBe(200);
  });
});

describe("a browser (Debian's chromium, driven by playwright-core)", () => {
  it("asks for a user and password on the front page, and composes as you type once given them", async (context) => {
    if (!existsSync(CHROMIUM)) context.skip("chromium is not installed: apt-get install chromium");
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
    try {
      // Without credentials the browser meets the challenge with nothing to answer it (a person would be asked).
      const stranger = await browser.newPage();
      await expect(stranger.goto(`${stack.registryUrl}/`)).rejects.toThrow(/ERR_INVALID_AUTH_CREDENTIALS/);
      const known = await browser.newContext({ httpCredentials: { username: ALICE.user, password: ALICE.password } });
      const page = await known.newPage();
      expect((await page.goto(`${stack.registryUrl}/`))?.status()).toBe(200);
      // The page's script asks /compose as the fields change; the browser sends the credentials with it.
      await page.getByLabel("Packages").pressSequentially("shell hello");
      await expect
        .poll(() => page.locator("#composed").textContent(), { timeout: 10_000 })
        .toContain(`${host}/shell/hello`);
    } finally {
      await browser.close();
    }
  });
});

/** Runs a command with `input` on its stdin. */
function runWithInput(command: string, args: string[], input: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["pipe", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.once("error", reject);
    child.once("close", (code) => resolve({ code: code ?? 1, output }));
    child.stdin.end(input);
  });
}

describe("real clients with credentials", () => {
  it("podman login (a temporary auth file) then podman pull; a wrong password fails to log in", async () => {
    const dir = await mkdtemp(join(scratch, "podman-"));
    const authfile = join(dir, "auth.json");
    const podman = (...args: string[]) => ["--tls-verify=false", "--authfile", authfile, ...args];
    const wrong = await runWithInput(
      "podman",
      ["login", ...podman("--username", ALICE.user, "--password-stdin", host)],
      "wrong-password-wrong-password\n",
    );
    expect(wrong.code).not.toBe(0);
    expect(wrong.output).toMatch(/invalid username\/password/);
    const login = await runWithInput(
      "podman",
      ["login", ...podman("--username", ALICE.user, "--password-stdin", host)],
      `${ALICE.password}\n`,
    );
    expect(login).toMatchObject({ code: 0 });
    const anonymous = await runAllowingFailure("podman", [
      ...podmanStorage(join(dir, "s")),
      "pull",
      "--tls-verify=false",
      "--authfile",
      join(dir, "empty.json"),
      `${host}/${IMAGE}:latest`,
    ]);
    expect(anonymous.code).not.toBe(0);
    await run("podman", [...podmanStorage(join(dir, "s")), "pull", ...podman(`${host}/${IMAGE}:latest`)]);
    const { stdout } = await run("podman", [
      ...podmanStorage(join(dir, "s")),
      "image",
      "inspect",
      "--format",
      "{{.Digest}}",
      `${host}/${IMAGE}:latest`,
    ]);
    expect(stdout.trim()).toMatch(/^sha256:[0-9a-f]{64}$/);
  });

  it("skopeo copy --creds", async () => {
    const layout = join(await mkdtemp(join(scratch, "skopeo-")), "oci");
    await run("skopeo", [
      "copy",
      "--src-tls-verify=false",
      "--src-creds",
      `${CI.user}:${CI.password}`,
      `docker://${host}/${IMAGE}:latest`,
      `oci:${layout}:img`,
    ]);
    for (const { digest } of manifest.layers) {
      expect(existsSync(join(layout, "blobs", "sha256", digest.slice("sha256:".length)))).toBe(true);
    }
    const wrong = await runAllowingFailure("skopeo", [
      "inspect",
      "--tls-verify=false",
      "--creds",
      `${CI.user}:not-the-password-at-all`,
      `docker://${host}/${IMAGE}:latest`,
    ]);
    expect(wrong.code).not.toBe(0);
  });

  it("containerd: ctr images pull --user", async (context) => {
    if (!(await has("containerd")) || !(await has("ctr"))) {
      context.skip("containerd is not installed: apt-get install containerd (.ci/run installs it, with docker.io)");
    }
    const containerd = await startContainerd(await mkdtemp(join(scratch, "ctrd-")));
    try {
      const ctr = (...args: string[]) => [...containerd.clientArgs, "images", "pull", "--plain-http", ...args];
      const anonymous = await runAllowingFailure("ctr", ctr(`${host}/${IMAGE}:latest`), 60_000);
      expect(anonymous.code).not.toBe(0);
      const before = events(stack.workerLogLines, "pull-token").length;
      await run("ctr", ctr("--user", `${ALICE.user}:${ALICE.password}`, `${host}/${IMAGE}:latest`), 120_000);
      // containerd asks with OAuth2's form (POST /token) when it has a password.
      expect(events(stack.workerLogLines, "pull-token").slice(before)).toContainEqual(
        expect.objectContaining({ user: ALICE.user, grant: "oauth2-password", scope: `repository:${IMAGE}:pull` }),
      );
      const { stdout } = await containerd.client(["images", "check"]);
      expect(stdout).toMatch(/complete/);
    } finally {
      await containerd.stop();
    }
  });

  it("the Docker daemon (docker.io 20.10): docker login then docker pull", async (context) => {
    if (!(await has("dockerd")))
      context.skip("dockerd is not installed: apt-get install docker.io (.ci/run installs it)");
    const dir = await mkdtemp(join(scratch, "docker-"));
    const daemon = await startDockerd(dir);
    const docker = daemon.clientCommand;
    const cli = (...args: string[]) => ["--config", join(dir, "cli"), ...daemon.clientArgs, ...args];
    try {
      const anonymous = await runAllowingFailure(docker, cli("pull", `${host}/${IMAGE}:latest`), 60_000);
      expect(anonymous.code).not.toBe(0);
      expect(anonymous.stderr).toMatch(/unauthorized|no basic auth credentials/i);
      const wrong = await runWithInput(
        docker,
        cli("login", "--username", CI.user, "--password-stdin", host),
        "wrong-password-wrong-password\n",
      );
      expect(wrong.code).not.toBe(0);
      const login = await runWithInput(
        docker,
        cli("login", "--username", CI.user, "--password-stdin", host),
        `${CI.password}\n`,
      );
      expect(login).toMatchObject({ code: 0 });
      const before = events(stack.workerLogLines, "pull-token").length;
      await run(docker, cli("pull", `${host}/${IMAGE}:latest`), 120_000);
      expect(events(stack.workerLogLines, "pull-token").slice(before)).toContainEqual(
        expect.objectContaining({ user: CI.user, grant: "basic", scope: `repository:${IMAGE}:pull` }),
      );
    } finally {
      await runAllowingFailure(docker, cli("rmi", "-f", `${host}/${IMAGE}:latest`), 60_000);
      await daemon.stop();
    }
  });
});

describe("the settings", () => {
  it("are off by default: wrangler.toml's worker answers /v2/ 200 without credentials and skopeo pulls anonymously", async () => {
    const url = side.urls["default-settings"];
    const base = await fetch(`${url}/v2/`);
    expect(base.status).toBe(200);
    expect(base.headers.get("www-authenticate")).toBeNull();
    expect((await fetch(`${url}/token?service=x`)).status).toBe(404);
    const blob = await fetch(`${url}/v2/${IMAGE}/blobs/${manifest.layers[0].digest}`);
    expect(blob.headers.get("cache-control")).toBe("public, max-age=31536000, immutable");
    await blob.arrayBuffer();
    const layout = join(await mkdtemp(join(scratch, "anonymous-")), "oci");
    // Through a Node front, which answers skopeo's first try (TLS) at once; workerd itself would leave it hanging.
    const front = await startHttpFront(url, (_incoming, _response, forward) => forward());
    try {
      await run("skopeo", [
        "copy",
        "--src-tls-verify=false",
        `docker://${front.url.replace("http://", "")}/${IMAGE}:latest`,
        `oci:${layout}:img`,
      ]);
    } finally {
      await front.close();
    }
    expect(existsSync(join(layout, "index.json"))).toBe(true);
  });

  it("close the registry to everyone when wrong, and say why once in the log", async () => {
    for (const name of ["short-password", "on-without-secret"]) {
      for (const headers of [{}, { Authorization: basic(ALICE) }] as Record<string, string>[]) {
        for (const path of ["/v2/", `/v2/${IMAGE}/manifests/latest`, "/token?service=x", "/"]) {
          const response = await fetch(`${side.urls[name]}${path}`, { headers });
          expect({ name, path, status: response.status }).toEqual({ name, path, status: 403 });
          const body = (await response.json()) as { errors: { code: string; message: string }[] };
          expect(body.errors[0].code).toBe("DENIED");
          expect(body.errors[0].message).toMatch(/settings for it are wrong.*under id/);
        }
      }
    }
    const incidents = events(side.logLines, "incident").filter((e) => /pull authentication/.test(String(e.summary)));
    expect(incidents).toHaveLength(2);
    const details = JSON.stringify(incidents.map((e) => e.details));
    expect(details).toMatch(/user bob\) has a password of 8 characters; it needs 16/);
    expect(details).toMatch(/PULL_AUTH is on but PULL_CREDENTIALS is not set/);
    expect(side.logLines.join("\n")).not.toContain("tooshort");
  });

  it("name each problem of a malformed secret", () => {
    const problems = (env: Parameters<typeof parsePullAuth>[0]) => {
      const parsed = parsePullAuth(env);
      if (parsed.state !== "closed") throw new Error(`not closed: ${parsed.state}`);
      return parsed.problems.join("; ");
    };
    expect(parsePullAuth({})).toEqual({ state: "off" });
    expect(parsePullAuth({ PULL_AUTH: "off" })).toEqual({ state: "off" });
    expect(parsePullAuth({ PULL_CREDENTIALS: CREDENTIALS }).state).toBe("on");
    expect(problems({ PULL_AUTH: "yes", PULL_CREDENTIALS: CREDENTIALS })).toMatch(/PULL_AUTH must be "on" or "off"/);
    expect(problems({ PULL_AUTH: "off", PULL_CREDENTIALS: CREDENTIALS })).toMatch(/delete the secret/);
    expect(problems({ PULL_CREDENTIALS: "no-colon-here-at-all" })).toMatch(/entry 1 is not user:password/);
    expect(problems({ PULL_CREDENTIALS: `${CREDENTIALS} carol:` })).toMatch(/entry 3 \(user carol\) has no password/);
    expect(problems({ PULL_CREDENTIALS: "a:b:" + "é".repeat(20) })).toMatch(/printable ASCII/);
  });
});
