// Signed calls to a builder, as the worker makes them, for tests and the benchmark that talk to it directly.
import { randomUUID } from "node:crypto";
import * as v from "valibot";
import {
  BuilderStatusSchema,
  ResolveResultSchema,
  signRequest,
  type BuilderStatus,
  type ResolveResult,
} from "../common/builder-api.ts";
import { JobRecordSchema, type JobRecord } from "../common/bucket-layout.ts";
import type { NixSystem } from "../common/image-name.ts";

export async function signedFetch(
  builderUrl: string,
  secret: string,
  method: string,
  path: string,
  body = "",
): Promise<Response> {
  const headers = await signRequest(secret, method, path, body);
  return fetch(`${builderUrl}${path}`, {
    method,
    headers: { ...headers, ...(body ? { "content-type": "application/json" } : {}) },
    body: body || undefined,
  });
}

/** The builder's GET /status: why it is not ready, its bucket, its counters. */
export async function builderStatus(builderUrl: string, secret: string): Promise<BuilderStatus> {
  const response = await signedFetch(builderUrl, secret, "GET", "/status");
  if (response.status !== 200) throw new Error(`GET /status failed: ${response.status} ${await response.text()}`);
  return v.parse(BuilderStatusSchema, await response.json());
}

export async function resolveLatest(builderUrl: string, secret: string): Promise<ResolveResult> {
  const response = await signedFetch(builderUrl, secret, "POST", "/resolve", JSON.stringify({ tag: "latest" }));
  if (response.status !== 200) throw new Error(`resolve failed: ${response.status} ${await response.text()}`);
  return v.parse(ResolveResultSchema, await response.json());
}

/**
 * Builds an image through the builder's job API, as the worker's coordinator does: submits the job, then asks after
 * it until it is done. Returns the finished job's record; a failed job throws with its error.
 */
export async function build(
  builderUrl: string,
  secret: string,
  packages: string[],
  revision: string,
  system: NixSystem = "x86_64-linux",
): Promise<JobRecord> {
  const body = JSON.stringify({ packages, system, tag: "latest", revision, jobId: randomUUID() });
  for (;;) {
    const response = await signedFetch(builderUrl, secret, "POST", "/jobs", body);
    if (response.status !== 200) throw new Error(`build failed: ${response.status} ${await response.text()}`);
    const record = v.parse(JobRecordSchema, await response.json());
    if (record.phase === "done") return record;
    if (record.phase === "failed") throw new Error(`build failed: ${JSON.stringify(record.error)}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}
