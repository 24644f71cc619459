// Pull tokens: what the token endpoint (pull-auth.ts) issues once it has checked a user's credentials, and what
// the registry's routes accept after that. A token is a JSON Web Token signed with HMAC-SHA-256 (HS256) under a key
// only this worker has (pull-credentials.ts), valid TOKEN_TTL_SECONDS, for one host (`aud`, the challenge's
// `service`), granting pull of the repositories it names (`access`, the distribution token spec's claim set).
// Clients treat it as opaque; JWT's shape only makes it readable to an operator (`jwt decode`).
//
// Made here with WebCrypto rather than a JWT library: one fixed algorithm and header, so nothing about how a token
// is checked is chosen by the token (no "alg" confusion), in about a hundred lines.
import * as v from "valibot";
import type { TokenKey } from "./pull-credentials.ts";

/** Five minutes: clients ask again when a token ends (they read expires_in), so a stolen one is worth little. */
export const TOKEN_TTL_SECONDS = 300;
/** Clocks of workers in different places may differ a little. */
const CLOCK_SKEW_SECONDS = 60;
/** Scopes granted in one token at most; a pull needs one, a copy between repositories two. */
const MAX_SCOPES = 16;
/** Longer Authorization values are not tokens of ours (16 scopes of 255-character names fit well within). */
export const MAX_TOKEN_LENGTH = 8192;
/** The issuer claim. */
const ISSUER = "nix-edge-registry";

const HEADER = base64url(new TextEncoder().encode(JSON.stringify({ alg: "HS256", typ: "JWT" })));

/** A repository name as the distribution spec's grammar has it (path components of lower-case, digits, separators). */
const REPOSITORY_NAME = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;

/** Whether a repository name can go into a scope (and into a challenge's header): the grammar, 255 characters. */
export const isRepositoryName = (name: string): boolean => name.length <= 255 && REPOSITORY_NAME.test(name);

const AccessSchema = v.object({
  type: v.literal("repository"),
  name: v.pipe(v.string(), v.maxLength(255)),
  actions: v.array(v.literal("pull")),
});
export type Access = v.InferOutput<typeof AccessSchema>;

const ClaimsSchema = v.object({
  iss: v.literal(ISSUER),
  sub: v.string(),
  aud: v.string(),
  iat: v.pipe(v.number(), v.integer()),
  nbf: v.pipe(v.number(), v.integer()),
  exp: v.pipe(v.number(), v.integer()),
  access: v.pipe(v.array(AccessSchema), v.maxLength(MAX_SCOPES)),
});
export type TokenClaims = v.InferOutput<typeof ClaimsSchema>;

function base64url(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function fromBase64url(text: string): Uint8Array | null {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) return null;
  try {
    const binary = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
    return Uint8Array.from(binary, (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}

/**
 * The access to grant for the scopes a client asks for (each `scope` parameter may hold several, space-separated):
 * pull of each repository asked for with pull (or `*`); push, delete and anything not a repository are never
 * granted, which the distribution spec says is not an error (the token holds the intersection).
 */
export function grantedAccess(scopes: string[]): Access[] {
  const names = new Set<string>();
  for (const scope of scopes.flatMap((s) => s.split(" "))) {
    const first = scope.indexOf(":");
    const last = scope.lastIndexOf(":");
    if (first < 0 || last <= first) continue;
    const type = scope.slice(0, first).replace(/\(.*\)$/, "");
    const name = scope.slice(first + 1, last);
    const actions = scope.slice(last + 1).split(",");
    if (type !== "repository" || !isRepositoryName(name)) continue;
    if (actions.includes("pull") || actions.includes("*")) names.add(name);
    if (names.size === MAX_SCOPES) break;
  }
  return [...names].sort().map((name) => ({ type: "repository", name, actions: ["pull"] }));
}

/** The scope parameter's form of granted access (an OAuth2 token answer names what it grants). */
export const scopeString = (access: Access[]): string =>
  access.map((a) => `${a.type}:${a.name}:${a.actions.join(",")}`).join(" ");

async function sign(key: TokenKey, data: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(data)));
}

export async function issueToken(
  key: TokenKey,
  claims: { user: string; service: string; access: Access[]; now?: number },
): Promise<{ token: string; issuedAt: Date; expiresIn: number }> {
  const now = claims.now ?? Math.floor(Date.now() / 1000);
  const payload: TokenClaims = {
    iss: ISSUER,
    sub: claims.user,
    aud: claims.service,
    iat: now,
    nbf: now,
    exp: now + TOKEN_TTL_SECONDS,
    access: claims.access,
  };
  const body = `${HEADER}.${base64url(new TextEncoder().encode(JSON.stringify(payload)))}`;
  return {
    token: `${body}.${base64url(await sign(key, body))}`,
    issuedAt: new Date(now * 1000),
    expiresIn: TOKEN_TTL_SECONDS,
  };
}

export type TokenCheck =
  | { ok: true; claims: TokenClaims }
  | { ok: false; reason: "malformed" | "signature" | "expired" | "not yet valid" | "another service" };

/** Whether a token is one of ours, untampered, in its time and for this service. */
export async function verifyToken(
  key: TokenKey,
  token: string,
  service: string,
  now = Math.floor(Date.now() / 1000),
): Promise<TokenCheck> {
  if (token.length > MAX_TOKEN_LENGTH) return { ok: false, reason: "malformed" };
  const parts = token.split(".");
  if (parts.length !== 3 || parts[0] !== HEADER) return { ok: false, reason: "malformed" };
  const signature = fromBase64url(parts[2]);
  if (signature === null) return { ok: false, reason: "malformed" };
  // WebCrypto's verify compares in constant time.
  const genuine = await crypto.subtle.verify(
    "HMAC",
    key,
    signature,
    new TextEncoder().encode(`${parts[0]}.${parts[1]}`),
  );
  if (!genuine) return { ok: false, reason: "signature" };
  const payload = fromBase64url(parts[1]);
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder().decode(payload ?? new Uint8Array()));
  } catch {
    return { ok: false, reason: "malformed" };
  }
  const claims = v.safeParse(ClaimsSchema, json);
  if (!claims.success) return { ok: false, reason: "malformed" };
  if (claims.output.exp <= now) return { ok: false, reason: "expired" };
  if (claims.output.nbf > now + CLOCK_SKEW_SECONDS) return { ok: false, reason: "not yet valid" };
  if (claims.output.aud !== service) return { ok: false, reason: "another service" };
  return { ok: true, claims: claims.output };
}
