// Optional pull authentication (off unless PULL_AUTH or PULL_CREDENTIALS is set; settings: pull-credentials.ts).
// The distribution token flow, as docker, podman, skopeo and containerd speak it:
//
//   GET /v2/<name>/manifests/latest                      -> 401 WWW-Authenticate: Bearer realm="<origin>/token",
//                                                                service="<host>",scope="repository:<name>:pull"
//   GET /token?service=<host>&scope=repository:<name>:pull   Authorization: Basic <user:password>
//   POST /token  grant_type=password&username=&password=&scope=   (OAuth2's form; containerd tries it first)
//                                                         -> 200 {"token", "access_token", "expires_in", "issued_at"}
//   GET /v2/<name>/manifests/latest   Authorization: Bearer <token>   -> the manifest
//
// Tokens grant pull only (pull-tokens.ts). Basic credentials are also taken on every route, so `curl -u` works and a
// browser, which gets a Basic challenge on the pages and JSON APIs, sends them with each request. A bearer token is
// taken there too. The check runs before routing (index.ts), so nothing cached (edge-cache.ts, isolate-cache.ts) is
// reached without it; answers that pass it are marked `Cache-Control: private` instead of `public`, so no shared
// cache between a client and the worker keeps them for others.
import type { IRequest } from "itty-router";
import { errorResponse, jsonResponse, type HeaderMap } from "./responses.ts";
import { pullAuthOf, userOf, type PullAuth, type PullAuthEnv } from "./pull-credentials.ts";
import {
  grantedAccess,
  isRepositoryName,
  issueToken,
  MAX_TOKEN_LENGTH,
  scopeString,
  verifyToken,
} from "./pull-tokens.ts";

export const TOKEN_PATH = "/token";
/** The largest OAuth2 form read from a POST to /token. */
const MAX_FORM_BYTES = 16 * 1024;

/**
 * The repository a route of the pull API reads, percent-decoded as params.ts decodes it; null for other paths. A
 * name outside the grammar is never in a token, so a token never passes for it (Basic credentials do, and the route
 * answers 404 NAME_INVALID).
 */
function repositoryOf(pathname: string): string | null {
  const match = /^\/v2\/(.+)\/(?:(?:manifests|blobs|referrers)\/[^/]+|tags\/list)$/.exec(pathname);
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return match[1];
  }
}

interface Presented {
  kind: "none" | "basic" | "bearer" | "unreadable";
  user?: string;
  password?: string;
  token?: string;
}

function presented(request: Request): Presented {
  const header = request.headers.get("Authorization");
  if (header === null) return { kind: "none" };
  const match = /^(\S+) +(\S+)\s*$/.exec(header);
  if (!match || match[2].length > MAX_TOKEN_LENGTH) return { kind: "unreadable" };
  const scheme = match[1].toLowerCase();
  if (scheme === "bearer") return { kind: "bearer", token: match[2] };
  if (scheme !== "basic") return { kind: "unreadable" };
  let decoded: string;
  try {
    decoded = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(
      Uint8Array.from(atob(match[2]), (c) => c.charCodeAt(0)),
    );
  } catch {
    return { kind: "unreadable" };
  }
  const colon = decoded.indexOf(":");
  if (colon < 0) return { kind: "unreadable" };
  return { kind: "basic", user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

const quoted = (value: string) => `"${value.replace(/["\\]/g, "\\$&")}"`;

function loginHint(host: string): string {
  return `log in with \`docker login ${host}\` or \`podman login ${host}\`, or give the credentials to the client (skopeo --creds user:password, ctr --user user:password, curl -u user:password)`;
}

/** The closed registry's answer: a setting is wrong, and only the operator can fix it. */
function closedResponse(method: string, incidentId: string): Response {
  return errorResponse(
    method,
    403,
    "DENIED",
    `pull authentication is on but the registry's settings for it are wrong, so nobody can pull until its operator fixes them (the registry's log has the details under id ${incidentId})`,
    { id: incidentId },
  );
}

function logRefusal(request: Request, reason: string, user?: string): void {
  console.warn(
    JSON.stringify({
      event: "pull-auth-refused",
      reason,
      ...(user === undefined ? {} : { user }),
      client: request.headers.get("CF-Connecting-IP") ?? undefined,
      path: new URL(request.url).pathname,
    }),
  );
}

/**
 * The 401 of a protected route. The pull API (/v2/...) gets the token flow's Bearer challenge, naming the scope a
 * repository's routes need; the pages and JSON APIs a Basic one, which makes a browser ask for a user and password.
 */
function unauthorized(request: Request, why: string, error?: "invalid_token" | "insufficient_scope"): Response {
  const url = new URL(request.url);
  const repository = repositoryOf(url.pathname);
  let challenge: string;
  let detail: unknown;
  if (url.pathname.startsWith("/v2/") || url.pathname === "/v2") {
    challenge = `Bearer realm=${quoted(`${url.origin}${TOKEN_PATH}`)},service=${quoted(url.host)}`;
    // Only a name of the grammar goes into the header (a decoded path may hold anything, line breaks included).
    if (repository !== null && isRepositoryName(repository)) {
      challenge += `,scope=${quoted(`repository:${repository}:pull`)}`;
      detail = [{ Type: "repository", Name: repository, Action: "pull" }];
    }
    if (error) challenge += `,error=${quoted(error)}`;
  } else {
    challenge = `Basic realm=${quoted(url.host)}, charset="UTF-8"`;
  }
  return errorResponse(request.method, 401, "UNAUTHORIZED", `${why}: ${loginHint(url.host)}`, detail, {
    "WWW-Authenticate": challenge,
  });
}

export type PullAuthDecision =
  | { allowed: false; response: Response }
  | {
      allowed: true;
      /** What to do to the route's answer before it is sent. */
      finish(response: Response): Response;
    };

const unchanged = (response: Response) => response;

/** `public` answers (blobs, manifests by digest) become `private`: they were given to one authenticated client. */
function keepPrivate(response: Response): Response {
  const cacheControl = response.headers.get("Cache-Control");
  if (cacheControl === null || !/\bpublic\b/i.test(cacheControl)) return response;
  const value = cacheControl.replace(/\bpublic\b/i, "private");
  try {
    response.headers.set("Cache-Control", value);
    return response;
  } catch {
    const copy = new Response(response.body, response);
    copy.headers.set("Cache-Control", value);
    return copy;
  }
}

/**
 * Whether a request may reach the routes. With the settings off, always (and the answer is left as it is). The
 * token endpoint checks its own credentials.
 */
export async function authorizeRequest(request: Request, env: PullAuthEnv): Promise<PullAuthDecision> {
  const auth = await pullAuthOf(env);
  if (auth.state === "off") return { allowed: true, finish: unchanged };
  const url = new URL(request.url);
  if (url.pathname === TOKEN_PATH) return { allowed: true, finish: keepPrivate };
  if (auth.state === "closed") return { allowed: false, response: closedResponse(request.method, auth.incidentId) };
  const credentials = presented(request);
  switch (credentials.kind) {
    case "none":
      return { allowed: false, response: unauthorized(request, "this registry needs credentials") };
    case "unreadable":
      logRefusal(request, "unreadable Authorization header");
      return {
        allowed: false,
        response: unauthorized(request, "the Authorization header is neither Basic user:password nor a Bearer token"),
      };
    case "basic": {
      const user = await userOf(auth, credentials.user!, credentials.password!);
      if (user === null) {
        logRefusal(request, "wrong user or password", credentials.user);
        return { allowed: false, response: unauthorized(request, "the user name or password is wrong") };
      }
      return { allowed: true, finish: keepPrivate };
    }
    case "bearer": {
      const check = await verifyToken(auth.tokenKey, credentials.token!, url.host);
      if (!check.ok) {
        logRefusal(request, `token ${check.reason}`);
        const why =
          check.reason === "expired"
            ? `the token has expired; ask ${url.origin}${TOKEN_PATH} for a new one (clients do this themselves)`
            : `the token is not valid here (${check.reason})`;
        return { allowed: false, response: unauthorized(request, why, "invalid_token") };
      }
      const repository = repositoryOf(url.pathname);
      if (repository !== null && !check.claims.access.some((a) => a.name === repository)) {
        return {
          allowed: false,
          response: unauthorized(
            request,
            `the token does not grant pull of ${repository}; ask ${url.origin}${TOKEN_PATH} for scope repository:${repository}:pull`,
            "insufficient_scope",
          ),
        };
      }
      return { allowed: true, finish: keepPrivate };
    }
  }
}

/** The credentials a POST to /token carries in OAuth2's password grant, its scopes, or why it can't be read. */
async function oauthForm(
  request: Request,
): Promise<{ user: string; password: string; scopes: string[] } | { problem: string; status: 400 | 401 }> {
  const length = Number(request.headers.get("Content-Length") ?? "NaN");
  const type = request.headers.get("Content-Type") ?? "";
  if (!/^application\/x-www-form-urlencoded\b/i.test(type) || !(length >= 0 && length <= MAX_FORM_BYTES)) {
    return {
      status: 400,
      problem: `POST ${TOKEN_PATH} takes an application/x-www-form-urlencoded form of at most ${MAX_FORM_BYTES} bytes with its Content-Length; GET ${TOKEN_PATH} takes Basic credentials`,
    };
  }
  const form = new URLSearchParams(await request.text());
  if (form.get("grant_type") !== "password") {
    // No refresh tokens are issued, so the password grant is the only one.
    return {
      status: 400,
      problem: `grant_type must be "password" (with username and password); GET ${TOKEN_PATH} takes Basic credentials`,
    };
  }
  return { user: form.get("username") ?? "", password: form.get("password") ?? "", scopes: form.getAll("scope") };
}

/**
 * GET|HEAD|POST /token: a pull token for the scopes asked for, once the credentials are checked. Undefined with
 * pull authentication off, so the router goes on (a 404, as without this file).
 */
export async function handleTokenRequest(request: IRequest, env: PullAuthEnv): Promise<Response | undefined> {
  const auth: PullAuth = await pullAuthOf(env);
  if (auth.state === "off") return undefined;
  const method = request.method;
  if (auth.state === "closed") return closedResponse(method, auth.incidentId);
  const url = new URL(request.url);
  const basicChallenge: HeaderMap = { "WWW-Authenticate": `Basic realm=${quoted(url.host)}, charset="UTF-8"` };
  let user: string;
  let password: string;
  let scopes: string[];
  let oauth = false;
  if (method === "GET" || method === "HEAD") {
    const credentials = presented(request);
    if (credentials.kind !== "basic") {
      return errorResponse(
        method,
        401,
        "UNAUTHORIZED",
        `a token needs a user and password (Basic): ${loginHint(url.host)}`,
        undefined,
        basicChallenge,
      );
    }
    user = credentials.user!;
    password = credentials.password!;
    scopes = url.searchParams.getAll("scope");
  } else if (method === "POST") {
    const form = await oauthForm(request);
    if ("problem" in form) return errorResponse(method, form.status, "UNSUPPORTED", form.problem);
    ({ user, password, scopes } = form);
    oauth = true;
  } else {
    return errorResponse(
      method,
      405,
      "UNSUPPORTED",
      `${TOKEN_PATH} takes GET (Basic credentials) or POST (OAuth2's password grant)`,
      { method },
      { Allow: "GET, HEAD, POST" },
    );
  }
  const known = await userOf(auth, user, password);
  if (known === null) {
    logRefusal(request, "wrong user or password", user);
    return errorResponse(
      method,
      401,
      "UNAUTHORIZED",
      `the user name or password is wrong: ${loginHint(url.host)}`,
      undefined,
      basicChallenge,
    );
  }
  const access = grantedAccess(scopes);
  const { token, issuedAt, expiresIn } = await issueToken(auth.tokenKey, { user: known, service: url.host, access });
  console.log(
    JSON.stringify({
      event: "pull-token",
      user: known,
      grant: oauth ? "oauth2-password" : "basic",
      scope: scopeString(access),
      client: request.headers.get("CF-Connecting-IP") ?? undefined,
    }),
  );
  return jsonResponse(
    method,
    200,
    {
      token,
      access_token: token,
      expires_in: expiresIn,
      issued_at: issuedAt.toISOString(),
      ...(oauth ? { scope: scopeString(access) } : {}),
    },
    { "Cache-Control": "no-store" },
  );
}
