// The optional pull authentication's settings: who may pull, and the key pull tokens are signed with.
//
//   PULL_CREDENTIALS (a Worker secret)  user:password pairs separated by spaces or newlines; a user may appear more
//                                       than once (old and new password while clients move over)
//   PULL_AUTH ([vars], optional)        "on": pulls need credentials even when the secret is missing (then nobody
//                                       gets in), so a deploy that lost its secret stays closed
//
// Off when both are unset: the registry is open, as without this file. On otherwise, and a wrong setting (PULL_AUTH
// neither "on" nor "off", a malformed or short entry, PULL_AUTH=on without the secret) closes the registry to
// everyone rather than opening it; the problem is logged once per isolate as an incident naming the setting, never
// a value.
//
// The token signing key is derived from the secret with HKDF, so one secret is enough and changing it (a user
// removed, a password rotated) also ends every token signed before. Since a token is then a check value of the
// passwords, each password has at least 16 characters: a generated one (`openssl rand -base64 24`) can't be found
// by guessing, whether online against /token or offline against a token.
import { logIncident } from "./responses.ts";

export interface PullAuthEnv {
  /** "on" (or unset with PULL_CREDENTIALS set): pulls, pages and APIs need credentials; "off" or unset: open. */
  PULL_AUTH?: string;
  /** `user:password` pairs separated by whitespace: `npx wrangler secret put PULL_CREDENTIALS`, never [vars]. */
  PULL_CREDENTIALS?: string;
}

export const MIN_PASSWORD_LENGTH = 16;
const MAX_PASSWORD_LENGTH = 256;
const USER_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;
/** Printable ASCII without spaces: what survives a shell, a secret store and a Basic header unchanged. */
const PASSWORD_PATTERN = /^[\x21-\x7e]+$/;

export type ParsedPullAuth =
  | { state: "off" }
  | { state: "closed"; problems: string[] }
  | { state: "on"; entries: { user: string; password: string }[] };

/** Whether the settings ask for pull authentication at all (on, or closed by a wrong setting). */
export function pullAuthRequested(env: PullAuthEnv): boolean {
  return (env.PULL_AUTH?.trim() ?? "") !== "" || (env.PULL_CREDENTIALS?.trim() ?? "") !== "";
}

/** What the settings say. Pure: messages name settings and entry numbers, never a user's password. */
export function parsePullAuth(env: PullAuthEnv): ParsedPullAuth {
  const switchValue = env.PULL_AUTH?.trim().toLowerCase() ?? "";
  const secret = env.PULL_CREDENTIALS?.trim() ?? "";
  if (!pullAuthRequested(env)) return { state: "off" };
  const problems: string[] = [];
  if (switchValue !== "" && switchValue !== "on" && switchValue !== "off") {
    problems.push(`PULL_AUTH must be "on" or "off"`);
  }
  if (switchValue === "off" && secret !== "") {
    problems.push(
      "PULL_AUTH is off but PULL_CREDENTIALS is set: delete the secret (npx wrangler secret delete PULL_CREDENTIALS) to open the registry",
    );
  }
  if (secret === "") {
    if (switchValue === "off") return { state: "off" };
    problems.push("PULL_AUTH is on but PULL_CREDENTIALS is not set: npx wrangler secret put PULL_CREDENTIALS");
  }
  const entries: { user: string; password: string }[] = [];
  secret
    .split(/\s+/)
    .filter((entry) => entry !== "")
    .forEach((entry, index) => {
      const colon = entry.indexOf(":");
      const user = colon < 0 ? "" : entry.slice(0, colon);
      const password = colon < 0 ? "" : entry.slice(colon + 1);
      const where = `PULL_CREDENTIALS entry ${index + 1}`;
      if (!USER_PATTERN.test(user)) {
        problems.push(`${where} is not user:password with a user name of 1 to 64 of A-Z, a-z, 0-9, '.', '_', '@', '-'`);
      } else if (!PASSWORD_PATTERN.test(password)) {
        problems.push(`${where} (user ${user}) has no password, or one with characters other than printable ASCII`);
      } else if (password.length < MIN_PASSWORD_LENGTH || password.length > MAX_PASSWORD_LENGTH) {
        problems.push(
          `${where} (user ${user}) has a password of ${password.length} characters; it needs ${MIN_PASSWORD_LENGTH} to ${MAX_PASSWORD_LENGTH} (openssl rand -base64 24 makes one)`,
        );
      } else {
        entries.push({ user, password });
      }
    });
  return problems.length > 0 ? { state: "closed", problems } : { state: "on", entries };
}

export type PullAuth =
  | { state: "off" }
  /** Nobody gets in; `incidentId` is the log line saying why, which refusals quote. */
  | { state: "closed"; incidentId: string }
  | { state: "on"; credentials: { user: string; digest: Uint8Array }[]; tokenKey: TokenKey };

/** WebCrypto's key type, named so for the Node-typed code (tests) that imports this file too. */
export type TokenKey = Awaited<ReturnType<typeof crypto.subtle.deriveKey>>;

const encoder = new TextEncoder();

async function sha256(text: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(text)));
}

/** HMAC-SHA-256 key for pull tokens, derived from the whole secret: a new secret invalidates every token. */
async function tokenKeyOf(secret: string): Promise<TokenKey> {
  const base = await crypto.subtle.importKey("raw", encoder.encode(secret), "HKDF", false, ["deriveKey"]);
  return crypto.subtle.deriveKey(
    {
      name: "HKDF",
      hash: "SHA-256",
      salt: encoder.encode("nix-edge-registry pull tokens"),
      info: encoder.encode("HS256 v1"),
    },
    base,
    { name: "HMAC", hash: "SHA-256", length: 256 },
    false,
    ["sign", "verify"],
  );
}

/** The settings of this isolate, made again only when the environment's values change. */
let current: { fingerprint: string; auth: Promise<PullAuth> } | undefined;

async function build(env: PullAuthEnv): Promise<PullAuth> {
  const parsed = parsePullAuth(env);
  if (parsed.state === "off") return parsed;
  if (parsed.state === "closed") {
    const incidentId = logIncident(
      "error",
      "pull authentication is on but its settings are wrong, so every request is refused until they are fixed",
      { problems: parsed.problems },
    );
    return { state: "closed", incidentId };
  }
  const credentials = await Promise.all(
    parsed.entries.map(async ({ user, password }) => ({ user, digest: await sha256(`${user}:${password}`) })),
  );
  return { state: "on", credentials, tokenKey: await tokenKeyOf(env.PULL_CREDENTIALS!.trim()) };
}

export function pullAuthOf(env: PullAuthEnv): Promise<PullAuth> {
  if (!pullAuthRequested(env)) return Promise.resolve({ state: "off" });
  const fingerprint = JSON.stringify([env.PULL_AUTH, env.PULL_CREDENTIALS]);
  if (current?.fingerprint !== fingerprint) current = { fingerprint, auth: build(env) };
  return current.auth;
}

/**
 * The user these credentials belong to, or null. Compares SHA-256 digests of `user:password` with every entry,
 * byte by byte without stopping early, so the time taken says nothing about how close a guess was.
 */
export async function userOf(
  auth: Extract<PullAuth, { state: "on" }>,
  user: string,
  password: string,
): Promise<string | null> {
  const digest = await sha256(`${user}:${password}`);
  let matched: string | null = null;
  for (const entry of auth.credentials) {
    let difference = 0;
    for (let i = 0; i < digest.length; i++) difference |= digest[i] ^ entry.digest[i];
    if (difference === 0) matched = entry.user;
  }
  return matched;
}
