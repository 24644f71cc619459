// Checks a build request before any of it reaches Nix: the worker validated the name already, but the
// builder trusts nothing it did not check itself.
import { MAX_JOB_WAIT_SECONDS, type BuildRequest, type JobRequest } from "../common/builder-api.ts";
import { MAX_PACKAGES, type NixSystem } from "../common/image-name.ts";

/** An attribute path: components of letters, digits, '_', '-', '+', '\'' separated by dots. */
export const ATTRIBUTE_PATH = /^[A-Za-z0-9_][A-Za-z0-9_+'-]*(\.[A-Za-z0-9_][A-Za-z0-9_+'-]*)*$/;
const SYSTEMS: readonly NixSystem[] = ["x86_64-linux", "aarch64-linux"];

export type BuildRequestCheck = { ok: true; request: BuildRequest } | { ok: false; reason: string };

export function validateBuildRequest(value: unknown): BuildRequestCheck {
  if (typeof value !== "object" || value === null) return { ok: false, reason: "the build request is not a JSON object" };
  const { packages, system, tag, revision } = value as Record<string, unknown>;
  if (!Array.isArray(packages) || packages.length === 0 || packages.length > MAX_PACKAGES) {
    return { ok: false, reason: `an image holds 1 to ${MAX_PACKAGES} packages, not ${Array.isArray(packages) ? packages.length : "none"}` };
  }
  for (const pkg of packages) {
    if (typeof pkg !== "string" || pkg.length > 255 || !ATTRIBUTE_PATH.test(pkg)) {
      return { ok: false, reason: `"${String(pkg)}" is not a package attribute path` };
    }
  }
  if (typeof system !== "string" || !SYSTEMS.includes(system as NixSystem)) {
    return { ok: false, reason: `system must be one of ${SYSTEMS.join(", ")}` };
  }
  if (typeof tag !== "string" || typeof revision !== "string" || !/^[0-9a-z]{1,64}$/.test(revision)) {
    return { ok: false, reason: "the build request needs a tag and the revision it resolved to" };
  }
  return { ok: true, request: { packages: [...new Set(packages as string[])].sort(), system: system as NixSystem, tag, revision } };
}

export type JobRequestCheck = { ok: true; request: JobRequest } | { ok: false; reason: string };

/** A build request plus the caller's job id (a UUID, or any short token of letters, digits and dashes). */
export function validateJobRequest(value: unknown): JobRequestCheck {
  const build = validateBuildRequest(value);
  if (!build.ok) return build;
  const { jobId, waitSeconds } = value as Record<string, unknown>;
  if (typeof jobId !== "string" || !/^[A-Za-z0-9-]{1,64}$/.test(jobId)) {
    return { ok: false, reason: "the job request needs a jobId of 1 to 64 letters, digits and dashes" };
  }
  if (waitSeconds !== undefined && (typeof waitSeconds !== "number" || !(waitSeconds >= 0 && waitSeconds <= MAX_JOB_WAIT_SECONDS))) {
    return { ok: false, reason: `waitSeconds is a number of seconds from 0 to ${MAX_JOB_WAIT_SECONDS}` };
  }
  return { ok: true, request: { ...build.request, jobId, ...(waitSeconds === undefined ? {} : { waitSeconds }) } };
}
