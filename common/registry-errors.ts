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
      (e) => typeof e === "object" && e !== null && typeof e.code === "string" && typeof e.message === "string",
    )
  );
}
