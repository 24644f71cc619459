// Build progress as JSON, for people and for the front page:
//   GET /api/builds              the most recent jobs, newest first (?limit=, 1 to 50, default 20)
//   GET /api/builds/<image key>  one image's latest job, and whether the image is ready
// Read from the job records the builders write into the bucket (common/bucket-layout.ts). The view names what was
// asked for and how far it got; never a builder's address, a credential or the bucket.
import type { IRequest } from "itty-router";
import { isImageKey, type ImageRecord, type JobRecord } from "../common/bucket-layout.ts";
import type { Env } from "./env.ts";
import { progressSummary } from "./pages/format.ts";
import { decodeParam } from "./params.ts";
import { errorResponse, jsonResponse } from "./responses.ts";
import { r2Storage, type RegistryStorage } from "./storage.ts";

const DEFAULT_LIMIT = 20;
const MAX_LIMIT = 50;

export interface BuildView {
  imageKey: string;
  packages: string[];
  system: string;
  compression: string;
  tag: string;
  revision: string;
  phase: JobRecord["phase"];
  phases: JobRecord["phases"];
  progress: JobRecord["progress"];
  startedAt: string;
  updatedAt: string;
  /** How far it got, in words (the front page shows it as it changes). */
  summary: string;
  error?: JobRecord["error"];
  /** The image's manifests, once it exists. */
  image?: ImageRecord;
}

function view(record: JobRecord, image: ImageRecord | null): BuildView {
  return {
    imageKey: record.imageKey,
    packages: record.request.packages,
    system: record.request.system,
    compression: record.request.compression,
    tag: record.request.tag,
    revision: record.request.revision,
    phase: record.phase,
    phases: record.phases,
    progress: record.progress,
    startedAt: record.startedAt,
    updatedAt: record.updatedAt,
    summary: progressSummary(record.phase, record.progress),
    ...(record.error ? { error: record.error } : {}),
    ...(image ? { image } : {}),
  };
}

export async function viewOf(storage: RegistryStorage, key: string): Promise<BuildView | null> {
  const [record, image] = await Promise.all([storage.getJob(key), storage.getImage(key)]);
  return record ? view(record, image) : null;
}

// Progress changes by the second: never cached.
const NO_STORE = { "Cache-Control": "no-store" };

export async function handleBuild(request: IRequest, env: Env): Promise<Response> {
  // Decoded leniently: a malformed %-escape is a key that is not one (404), not a failure.
  const key = decodeParam(request.params.key);
  if (!isImageKey(key)) {
    return errorResponse(
      request.method,
      404,
      "NAME_UNKNOWN",
      `"${key}" is not an image key (64 lower-case hex characters)`,
      { key },
      NO_STORE,
    );
  }
  const found = await viewOf(r2Storage(env.REGISTRY_BUCKET), key);
  if (!found)
    return errorResponse(request.method, 404, "NAME_UNKNOWN", `no build of image ${key} is known`, { key }, NO_STORE);
  return jsonResponse(request.method, 200, found, NO_STORE);
}

/** The most recent builds, newest first. */
export async function recentBuilds(storage: RegistryStorage, limit: number): Promise<BuildView[]> {
  const keys = await storage.recentJobs(limit);
  return (await Promise.all(keys.map((key) => viewOf(storage, key)))).filter((b): b is BuildView => b !== null);
}

export async function handleBuildList(request: IRequest, env: Env): Promise<Response> {
  const raw = new URL(request.url).searchParams.get("limit");
  const limit = raw && /^\d+$/.test(raw) ? Math.min(MAX_LIMIT, Math.max(1, Number(raw))) : DEFAULT_LIMIT;
  const builds = await recentBuilds(r2Storage(env.REGISTRY_BUCKET), limit);
  return jsonResponse(request.method, 200, { builds }, NO_STORE);
}
