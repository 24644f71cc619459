// Checks the worker's requests before any of them reaches Nix: the worker validated the name already, but the
// builder trusts nothing it did not check itself. The rules are the wire format's (common/builder-api.ts); here
// the first thing wrong becomes the 400's message, and the package list is put in its one order.
import * as v from "valibot";
import {
  BuildRequestSchema,
  JobRequestSchema,
  ResolveRequestSchema,
  type BuildRequest,
  type JobRequest,
  type ResolveRequest,
} from "../common/builder-api.ts";
import { classifyTag } from "../common/tag.ts";

/** The same packages in any order, repeated or not, are the same image. */
const normalized = <T extends BuildRequest>(request: T): T => ({
  ...request,
  packages: [...new Set(request.packages)].sort(),
});

type Check<T> = { ok: true; request: T } | { ok: false; reason: string };

function check<T extends BuildRequest>(schema: v.GenericSchema<unknown, T>, value: unknown): Check<T> {
  const result = v.safeParse(schema, value, { abortEarly: true });
  return result.success
    ? { ok: true, request: normalized(result.output) }
    : { ok: false, reason: result.issues[0].message };
}

export type BuildRequestCheck = Check<BuildRequest>;
export type JobRequestCheck = Check<JobRequest>;

export const validateBuildRequest = (value: unknown): BuildRequestCheck => check(BuildRequestSchema, value);

/** A build request plus the caller's job id, and how long the answer may wait for the job to finish. */
export const validateJobRequest = (value: unknown): JobRequestCheck => check(JobRequestSchema, value);

/** POST /resolve's body, if it names a tag the registry's grammar takes. */
export function parseResolveRequest(value: unknown): ResolveRequest | null {
  return v.is(ResolveRequestSchema, value) && classifyTag(value.tag) ? { tag: value.tag } : null;
}
