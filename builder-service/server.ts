// The builder's HTTP API (see common/builder-api.ts): /health and /ready, open to anyone and saying no more than
// "up" and "ready or not"; GET /status, signed, for operators (why not ready, the bucket, counters); and the signed
// endpoints the worker calls: POST /resolve, POST /jobs (start a build job, or report on it; answered at once) and
// POST /packages (what names are in the package set, for the front page).
import { IttyRouter, type IRequest } from "itty-router";
import { randomUUID } from "node:crypto";
import * as v from "valibot";
import {
  NONCE_HEADER,
  SeenNonces,
  SIGNATURE_HEADER,
  TIMESTAMP_HEADER,
  verifyRequest,
  PackageCheckRequestSchema,
  type BuilderStatus,
} from "../common/builder-api.ts";
import { errorBody, type RegistryErrorCode } from "../common/registry-errors.ts";
import { AdmissionError } from "./admission.ts";
import type { BlobStore } from "./blob-store.ts";
import { parseResolveRequest, validateJobRequest } from "./build-request.ts";
import type { ImageBuilder } from "./image-builder.ts";
import type { BuildJobs } from "./jobs.ts";
import type { PackageIndex } from "./package-index.ts";
import type { Logger } from "./log.ts";
import type { PackageSource } from "./sources/package-source.ts";

export interface BuilderServerDeps {
  secret: string;
  store: BlobStore;
  source: PackageSource;
  builder: ImageBuilder;
  jobs: BuildJobs;
  /** The front page's name checks (POST /packages). */
  packages: PackageIndex;
  log: Logger;
  /** Checks that Nix and the store work, for /ready and /status: cheap to call often (readiness.ts caches it). */
  readiness: () => Promise<string | null>;
}

/** Build requests are a few package names; anything bigger is not from the worker. */
const MAX_REQUEST_BYTES = 64 * 1024;

function json(status: number, value: unknown, headers: Record<string, string> = {}): Response {
  const body = JSON.stringify(value);
  return new Response(body, {
    status,
    headers: { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)), ...headers },
  });
}

function fail(status: number, code: RegistryErrorCode, message: string, detail?: unknown): Response {
  return json(status, errorBody(code, message, detail));
}

type SignedRequest = IRequest & { rawBody: string };

export function createBuilderHandler(deps: BuilderServerDeps): (request: Request) => Promise<Response> {
  const { log } = deps;
  const router = IttyRouter();
  const seenNonces = new SeenNonces();

  const authenticate = async (request: IRequest): Promise<Response | undefined> => {
    const read = request.method === "POST" ? await readBounded(request, MAX_REQUEST_BYTES) : { text: "" };
    if (read === "too-large") {
      // Connection: close, so that the rest of an oversized body is not read at all.
      const response = fail(
        413,
        "UNSUPPORTED",
        `request body too large: the builder takes at most ${MAX_REQUEST_BYTES} bytes`,
      );
      response.headers.set("connection", "close");
      return response;
    }
    // The client went away in the middle of its body: not the builder's failure, and nobody is left to answer.
    if (read === "incomplete") return fail(400, "UNSUPPORTED", "the request body did not arrive whole");
    const body = read.text;
    (request as SignedRequest).rawBody = body;
    const url = new URL(request.url);
    const signed = {
      signature: request.headers.get(SIGNATURE_HEADER) ?? undefined,
      timestamp: request.headers.get(TIMESTAMP_HEADER) ?? undefined,
      nonce: request.headers.get(NONCE_HEADER) ?? undefined,
    };
    const check = await verifyRequest(deps.secret, request.method, url.pathname + url.search, body, signed, seenNonces);
    if (!check.ok && check.busy) {
      log.warn("nonces-full", { method: request.method, path: url.pathname, remembered: seenNonces.size });
      const response = fail(503, "BUILDER_UNAVAILABLE", `the builder is too busy: ${check.reason}`);
      response.headers.set("retry-after", String(check.busy.retryAfterSeconds));
      return response;
    }
    if (!check.ok) {
      log.warn("unauthorized", { method: request.method, path: url.pathname, reason: check.reason });
      return fail(401, "UNAUTHORIZED", `this builder only serves its registry's worker: ${check.reason}`);
    }
    return undefined;
  };

  router
    .get("/health", () => json(200, { ok: true }))
    .get("/ready", async () => ((await deps.readiness()) ? json(503, { ready: false }) : json(200, { ready: true })))
    .get("/status", authenticate, async () => {
      const problem = await deps.readiness();
      const status: BuilderStatus = {
        ready: problem === null,
        problem,
        store: deps.store.description,
        source: deps.source.description,
        ...deps.builder.counters,
        jobs: { ...deps.jobs.counters, running: deps.jobs.running },
      };
      return json(200, status);
    })
    .post("/resolve", authenticate, async (request) => {
      const body = parseResolveRequest(parseJson<unknown>((request as SignedRequest).rawBody));
      if (!body) {
        return fail(400, "MANIFEST_UNKNOWN", "the resolve request names no valid tag");
      }
      const resolved = await deps.source.resolve(body.tag);
      if (!resolved) {
        return fail(
          404,
          "MANIFEST_UNKNOWN",
          `tag "${body.tag}" is not served by this registry's package source (${deps.source.description})`,
          {
            tag: body.tag,
          },
        );
      }
      return json(200, resolved);
    })
    .post("/packages", authenticate, async (request) => {
      const parsed = v.safeParse(PackageCheckRequestSchema, parseJson<unknown>((request as SignedRequest).rawBody));
      if (!parsed.success) return fail(400, "NAME_INVALID", parsed.issues[0].message);
      const { revision, system, packages } = parsed.output;
      return json(200, { revision, ...(await deps.packages.check(revision, system, packages)) });
    })
    .post("/jobs", authenticate, async (request) => {
      const checked = validateJobRequest(parseJson<unknown>((request as SignedRequest).rawBody));
      if (!checked.ok) return fail(400, "NAME_INVALID", checked.reason);
      try {
        return json(200, await deps.jobs.submit(checked.request));
      } catch (error) {
        // Refused before any job exists: a denied name (403), or no room to run or queue it (503, Retry-After).
        if (!(error instanceof AdmissionError)) throw error;
        const { status, code, message, detail } = error.refusal;
        log.warn("job-refused", { code, packages: checked.request.packages, message });
        const retryAfter: Record<string, string> =
          error.retryAfterSeconds === undefined ? {} : { "retry-after": String(error.retryAfterSeconds) };
        return json(status, errorBody(code, message, detail), retryAfter);
      }
    })
    .all("*", () => fail(404, "UNSUPPORTED", "no such builder endpoint; see common/builder-api.ts"));

  return async (request) => {
    const started = performance.now();
    let response: Response;
    try {
      response = (await router.fetch(request)) as Response;
    } catch (error) {
      // The error may name the bucket, its endpoint or a key id (an S3 error): the log gets it, the caller an id.
      const id = randomUUID();
      log.error("request-failed", {
        id,
        method: request.method,
        url: request.url,
        error: String((error as Error).stack ?? error),
      });
      response = fail(500, "UNKNOWN", `the builder failed unexpectedly; its log has the details under id ${id}`, {
        id,
      });
    }
    const url = new URL(request.url);
    // The worker asks after running jobs every second or so: those answers are not worth a line each.
    const poll = url.pathname === "/jobs" && response.status === 200;
    // Nor are the probes, which monitors ask as often as they like (/status answers only to the secret's holders).
    const probe =
      url.pathname === "/health" ||
      url.pathname === "/ready" ||
      (url.pathname === "/status" && response.status === 200);
    if (!probe && !poll) {
      log.info("request", {
        method: request.method,
        path: url.pathname,
        status: response.status,
        ms: Math.round(performance.now() - started),
      });
    }
    return response;
  };
}

/**
 * The body as text, or "too-large" as soon as it is longer than `limit` bytes: read before the signature is checked,
 * so an unsigned request must not be able to make the builder hold more than that. "incomplete" when the connection
 * ended before the body did.
 */
async function readBounded(request: Request, limit: number): Promise<{ text: string } | "too-large" | "incomplete"> {
  const declared = Number(request.headers.get("content-length"));
  if (declared > limit) {
    await request.body?.cancel();
    return "too-large";
  }
  if (!request.body) return { text: "" };
  const reader = (request.body as ReadableStream<Uint8Array>).getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const chunk = await reader.read().catch(() => null);
    if (chunk === null) return "incomplete";
    if (chunk.done) break;
    size += chunk.value.byteLength;
    if (size > limit) {
      await reader.cancel();
      return "too-large";
    }
    chunks.push(chunk.value);
  }
  return { text: Buffer.concat(chunks).toString("utf8") };
}

function parseJson<T>(text: string): T | null {
  try {
    return JSON.parse(text) as T;
  } catch {
    return null;
  }
}
