// Signed calls to a builder, as the worker makes them, for tests and the benchmark that talk to it directly.
import { signRequest, type BuildResult, type ResolveResult } from "../common/builder-api.ts";
import type { NixSystem } from "../common/image-name.ts";

export async function signedFetch(builderUrl: string, secret: string, method: string, path: string, body = ""): Promise<Response> {
  const headers = await signRequest(secret, method, path, body);
  return fetch(`${builderUrl}${path}`, {
    method,
    headers: { ...headers, ...(body ? { "content-type": "application/json" } : {}) },
    body: body || undefined,
  });
}

export async function resolveLatest(builderUrl: string, secret: string): Promise<ResolveResult> {
  const response = await signedFetch(builderUrl, secret, "POST", "/resolve", JSON.stringify({ tag: "latest" }));
  if (response.status !== 200) throw new Error(`resolve failed: ${response.status} ${await response.text()}`);
  return (await response.json()) as ResolveResult;
}

export async function build(
  builderUrl: string,
  secret: string,
  packages: string[],
  revision: string,
  system: NixSystem = "x86_64-linux",
): Promise<BuildResult> {
  const body = JSON.stringify({ packages, system, tag: "latest", revision });
  const response = await signedFetch(builderUrl, secret, "POST", "/build", body);
  if (response.status !== 200) throw new Error(`build failed: ${response.status} ${await response.text()}`);
  return (await response.json()) as BuildResult;
}
