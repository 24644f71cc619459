// Content digests as the OCI image spec defines them, shared by the worker and the builder.
// WebCrypto is used so the same code runs in workerd and in Node.

export type Digest = `sha256:${string}`;

const ALGORITHM_AND_ENCODED = /^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$/;
const SHA256_HEX = /^[a-f0-9]{64}$/;

export type DigestCheck = { ok: true; digest: Digest; hex: string } | { ok: false; reason: string };

/** Checks a digest string from a request; only sha256 is served, other well-formed algorithms are refused by name. */
export function parseDigest(input: string): DigestCheck {
  const match = ALGORITHM_AND_ENCODED.exec(input);
  if (!match) return { ok: false, reason: `"${input}" is not a digest of the form algorithm:hex` };
  const [, algorithm, encoded] = match;
  if (algorithm !== "sha256") {
    return {
      ok: false,
      reason: `digest algorithm "${algorithm}" is not supported; this registry addresses content by sha256`,
    };
  }
  if (!SHA256_HEX.test(encoded)) {
    return { ok: false, reason: `a sha256 digest has 64 lower-case hex characters, "${encoded}" does not` };
  }
  return { ok: true, digest: `sha256:${encoded}`, hex: encoded };
}

export function isDigest(input: string): input is Digest {
  return parseDigest(input).ok;
}

function toHex(buffer: ArrayBuffer): string {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

export async function sha256Hex(data: string | Uint8Array): Promise<string> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  return toHex(await crypto.subtle.digest("SHA-256", bytes));
}

export async function sha256Digest(data: string | Uint8Array): Promise<Digest> {
  return `sha256:${await sha256Hex(data)}`;
}

export async function hmacSha256Hex(secret: string, message: string): Promise<string> {
  const key = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  return toHex(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(message)));
}
