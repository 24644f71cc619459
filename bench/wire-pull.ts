// A pull with nothing on the client side but the network: the manifest, then the config and every layer, six at a
// time and each on a new connection, as skopeo fetches them, with the bytes counted and dropped. It shows how fast a
// registry serves, apart from the client's own work (checksums, writing the layout), which is most of a skopeo pull.
import http from "node:http";
import https from "node:https";
import type { ImageManifest } from "../common/oci.ts";
import { OCI_MANIFEST } from "../common/media-types.ts";

const CONCURRENCY = 6;

/**
 * GET a URL and count its body, kept too when asked (by default when an Accept is given: a manifest); an https
 * registry's certificate is not checked (like --tls-verify=false).
 */
export function get(
  url: URL,
  accept?: string,
  keep: boolean = accept !== undefined,
): Promise<{ status: number; body: Buffer | null; bytes: number }> {
  const client = url.protocol === "https:" ? https : http;
  return new Promise((resolve, reject) => {
    const request = client.get(
      url,
      {
        headers: accept ? { Accept: accept } : {},
        agent: false,
        ...(url.protocol === "https:" ? { rejectUnauthorized: false } : {}),
      },
      (response) => {
        const chunks: Buffer[] = [];
        let bytes = 0;
        response.on("data", (chunk: Buffer) => {
          bytes += chunk.length;
          if (keep) chunks.push(chunk);
        });
        response.on("end", () =>
          resolve({ status: response.statusCode ?? 0, body: keep ? Buffer.concat(chunks) : null, bytes }),
        );
        response.on("error", reject);
      },
    );
    request.on("error", reject);
  });
}

/** Fetches name:tag from registryUrl (http:// or https://); returns the milliseconds it took. */
export async function wirePull(registryUrl: string, name: string, tag: string): Promise<number> {
  const started = performance.now();
  const base = `${registryUrl}/v2/${name}`;
  const answer = await get(new URL(`${base}/manifests/${tag}`), OCI_MANIFEST);
  if (answer.status !== 200 || !answer.body) throw new Error(`${base}/manifests/${tag} answered ${answer.status}`);
  const manifest = JSON.parse(answer.body.toString("utf8")) as ImageManifest;
  const blobs = [manifest.config, ...manifest.layers];
  let next = 0;
  const worker = async () => {
    while (next < blobs.length) {
      const blob = blobs[next++];
      const got = await get(new URL(`${base}/blobs/${blob.digest}`));
      if (got.status !== 200 || got.bytes !== blob.size) {
        throw new Error(`${base}/blobs/${blob.digest} answered ${got.status} with ${got.bytes} of ${blob.size} bytes`);
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  return performance.now() - started;
}
