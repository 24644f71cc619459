// The registry error format of the OCI distribution spec, used by the worker and by the builder's API alike.

export type RegistryErrorCode =
  | "BLOB_UNKNOWN"
  | "DIGEST_INVALID"
  | "MANIFEST_UNKNOWN"
  | "NAME_INVALID"
  | "NAME_UNKNOWN"
  | "RANGE_INVALID"
  | "UNAUTHORIZED"
  | "UNSUPPORTED"
  | "DENIED"
  | "BUILD_FAILED"
  /** The builder's Nix is older than the package set needs (nixpkgs' lib/minver.nix). */
  | "NIX_TOO_OLD"
  | "BUILDER_UNAVAILABLE"
  /** The builder runs and queues as many build jobs as it may (BUILDER_MAX_BUILDS, BUILDER_MAX_QUEUE): 503 with Retry-After. */
  | "BUILDER_BUSY"
  /** The OCI distribution spec's code for 429: here, a client's quota of cold builds is used up. */
  | "TOOMANYREQUESTS"
  | "UNKNOWN";

export interface RegistryError {
  code: RegistryErrorCode;
  message: string;
  detail?: unknown;
}

export interface RegistryErrorBody {
  errors: RegistryError[];
}

export function errorBody(code: RegistryErrorCode, message: string, detail?: unknown): RegistryErrorBody {
  return { errors: [{ code, message, ...(detail === undefined ? {} : { detail }) }] };
}

export function isRegistryErrorBody(value: unknown): value is RegistryErrorBody {
  if (typeof value !== "object" || value === null) return false;
  const errors = (value as { errors?: unknown }).errors;
  return (
    Array.isArray(errors) &&
    errors.length > 0 &&
    errors.every(
      (e: unknown) =>
        typeof e === "object" &&
        e !== null &&
        typeof (e as { code?: unknown }).code === "string" &&
        typeof (e as { message?: unknown }).message === "string",
    )
  );
}
