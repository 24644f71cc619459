// GET /images/<image key>: a built image: its layers (with the store paths in each, their sizes, and which recent
// images share them), its config, the digests of both manifest flavours, and the revision it was built from.
import type { IRequest } from "itty-router";
import { isImageKey } from "../../common/bucket-layout.ts";
import type { ImageConfig, ImageManifest } from "../../common/oci.ts";
import { recentBuilds, viewOf } from "../builds-api.ts";
import type { Env } from "../env.ts";
import { decodeParam } from "../params.ts";
import { registryStorage } from "../registry-storage.ts";
import type { RegistryStorage } from "../storage.ts";
import { formatBytes, imageName } from "./format.ts";
import { html, pageResponse, type Html } from "./html.ts";

/** Recent images looked at for layers shared with this one. */
const SHARING_WINDOW = 50;

/** An image's OCI manifest by digest, or null when it is missing or unreadable (the front page shows what it can). */
export async function manifestOf(storage: RegistryStorage, digest: string): Promise<ImageManifest | null> {
  const stored = await storage.getManifest(digest.slice("sha256:".length)).catch(() => null);
  if (!stored) return null;
  try {
    return JSON.parse(new TextDecoder().decode(stored.bytes)) as ImageManifest;
  } catch {
    return null;
  }
}

/** Bytes a pull fetches: the config and every layer, compressed. */
export function imageBytes(manifest: ImageManifest): number {
  return manifest.config.size + manifest.layers.reduce((sum, layer) => sum + layer.size, 0);
}

async function configOf(
  storage: RegistryStorage,
  digest: string,
): Promise<{ text: string; config: ImageConfig } | null> {
  const blob = await storage.getBlob(digest.slice("sha256:".length)).catch(() => null);
  if (!blob) return null;
  const text = await new Response(blob.body).text();
  try {
    return { text, config: JSON.parse(text) as ImageConfig };
  } catch {
    return null;
  }
}

/** Which recent images (by name) hold each layer digest. */
async function sharing(
  storage: RegistryStorage,
  selfKey: string,
): Promise<Map<string, { name: string; key: string }[]>> {
  const holders = new Map<string, { name: string; key: string }[]>();
  const builds = (await recentBuilds(storage, SHARING_WINDOW).catch(() => [])).filter(
    (b) => b.image && b.imageKey !== selfKey,
  );
  const manifests = await Promise.all(builds.map((build) => manifestOf(storage, build.image!.oci)));
  builds.forEach((build, i) => {
    for (const layer of manifests[i]?.layers ?? []) {
      const list = holders.get(layer.digest) ?? [];
      list.push({ name: imageName(build), key: build.imageKey });
      holders.set(layer.digest, list);
    }
  });
  return holders;
}

/** "store paths: a, b" -> ["a", "b"], as the builder writes each layer's history comment. */
function storePaths(comment: string | undefined): { kind: string; names: string[] } {
  if (!comment) return { kind: "", names: [] };
  const match = /^(store paths|root filesystem: links to):?\s*(.*)$/.exec(comment);
  if (!match) return { kind: "", names: [comment] };
  return {
    kind: match[1] === "store paths" ? "store paths" : "root filesystem, with links to",
    names: match[2].split(", ").filter(Boolean),
  };
}

export async function handleImagePage(request: IRequest, env: Env, ctx: ExecutionContext): Promise<Response> {
  const key = decodeParam(request.params.key);
  const storage = await registryStorage(request, env, ctx);
  const notFound = () =>
    pageResponse(
      request.method,
      404,
      "No such image",
      html`<h1>No such image</h1>
        <p>No image <code>${key}</code> has been built. <a href="/">Back to the front page</a>.</p>`,
    );
  if (!isImageKey(key)) return notFound();
  const [image, build] = await Promise.all([storage.getImage(key), viewOf(storage, key)]);
  if (!image) return notFound();
  const manifest = await manifestOf(storage, image.oci);
  if (!manifest) return notFound();
  const [config, shared] = await Promise.all([configOf(storage, manifest.config.digest), sharing(storage, key)]);
  const history = config?.config.history ?? [];
  const name = build ? imageName(build) : key;
  const total = imageBytes(manifest);
  const rows: Html[] = manifest.layers.map((layer, i) => {
    const paths = storePaths(history[i]?.comment);
    const others = shared.get(layer.digest) ?? [];
    return html`<tr>
      <td>${i + 1}</td>
      <td>${formatBytes(layer.size)}</td>
      <td>${paths.kind ? html`<span class="muted">${paths.kind}:</span> ` : ""}${paths.names.join(", ")}</td>
      <td>
        ${
          others.length > 0
            ? html`<span class="shared">${others.length}</span>
                ${others.slice(0, 5).map((o, j) => html`${j > 0 ? ", " : ""}<a href="/images/${o.key}">${o.name}</a>`)}${others.length > 5 ? ` and ${others.length - 5} more` : ""}`
            : html`<span class="muted">none of the recent images</span>`
        }
      </td>
      <td><code title="${layer.digest}">${layer.digest.slice(7, 19)}</code></td>
    </tr>`;
  });
  const host = new URL(request.url).host;
  const main = html`<h1>Image <code>${name}</code></h1>
    <dl class="facts">
      <dt>Revision</dt>
      <dd><code>${image.revision}</code></dd>
      <dt>Built</dt>
      <dd><time datetime="${image.builtAt}">${image.builtAt}</time></dd>
      <dt>OCI manifest</dt>
      <dd><code>${image.oci}</code></dd>
      <dt>Docker manifest</dt>
      <dd><code>${image.docker}</code></dd>
      <dt>Size</dt>
      <dd>${formatBytes(total)} in ${manifest.layers.length} layers</dd>
    </dl>
    <div class="command">
      <code>docker pull ${host}/${name}@${image.oci}</code
      ><button
        type="button"
        class="copy"
        data-copy="docker pull ${host}/${name}@${image.oci}"
        aria-label="Copy the pull command by digest"
        hidden
      >
        Copy
      </button>
    </div>
    <h2>Layers</h2>
    <table class="layers">
      <caption>
        Each layer, with the store paths in it and the recent images that share it
      </caption>
      <thead>
        <tr>
          <th scope="col">#</th>
          <th scope="col">Size</th>
          <th scope="col">Contents</th>
          <th scope="col">Shared with</th>
          <th scope="col">Digest</th>
        </tr>
      </thead>
      <tbody>
        ${rows}
      </tbody>
    </table>
    <h2>Config</h2>
    ${config ? html`<pre class="config" tabindex="0" aria-label="The image's config">${JSON.stringify(config.config, null, 2)}</pre>` : html`<p class="muted">The config blob could not be read.</p>`}
    ${build ? html`<p><a href="/builds/${key}">Its build</a></p>` : ""}`;
  return pageResponse(request.method, 200, `Image ${name}`, main);
}
