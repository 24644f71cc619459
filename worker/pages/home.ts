// GET / : for a browser, the front page (how to pull, a composer for the pull command, the recent builds); for
// anything else (curl), the same usage as plain text.
import type { IRequest } from "itty-router";
import { META_PACKAGES, parseImageName, type NixSystem } from "../../common/image-name.ts";
import { recentBuilds, type BuildView } from "../builds-api.ts";
import type { Env } from "../env.ts";
import { checkNames, type ChecksOutcome } from "../package-checks.ts";
import { registryStorage } from "../registry-storage.ts";
import { resolveTagCached } from "../resolutions.ts";
import { textResponse } from "../responses.ts";
import type { RegistryStorage } from "../storage.ts";
import { formatBytes, formatDuration, imageName } from "./format.ts";
import { fragmentResponse, html, pageResponse, wantsHtml, type Html } from "./html.ts";
import { imageBytes, manifestOf } from "./image-page.ts";

const RECENT_BUILDS = 20;

function usageText(host: string): string {
  return [
    "This is a container registry that builds images from Nix on demand.",
    "",
    "Every path component of an image name is a nixpkgs package; the tag picks the nixpkgs version.",
    `  docker pull ${host}/shell/hello              bash, coreutils, moreutils, nano and hello`,
    `  docker pull ${host}/shell/curl/jq:latest     the default channel, resolved to a commit`,
    `  docker pull ${host}/hello:<40-hex commit>    a pinned nixpkgs commit`,
    `  docker pull ${host}/arm64/hello              built for aarch64-linux`,
    "",
    "The first pull of a combination builds it; later pulls are served from the cache.",
    "",
  ].join("\n");
}

/** A command with a button that copies it (the button appears with JavaScript; the text is selectable anyway). */
function command(text: string, label: string): Html {
  return html`<div class="command">
    <code>${text}</code
    ><button type="button" class="copy" data-copy="${text}" aria-label="Copy the ${label} command" hidden>Copy</button>
  </div>`;
}

/** What the package set says of each package, as a list beside the composed image. */
function checks(outcome: ChecksOutcome): Html {
  if (!outcome.ok) return html`<p class="muted">The names were not checked: ${outcome.reason}.</p>`;
  const items = outcome.answer.packages.map((check) => {
    switch (check.status) {
      case "found":
        return html`<li class="found">
          <span aria-hidden="true">✓</span> <code>${check.name}</code>${
            check.aliasOf ? html` is an alias of <code>${check.aliasOf}</code>` : ""
          }
        </li>`;
      case "unknown":
        return html`<li class="unknown">
          <span aria-hidden="true">✗</span> <code>${check.name}</code> is not in the package
          set${
            check.suggestions && check.suggestions.length > 0
              ? html`; did you mean ${check.suggestions.map((s, i) => html`${i > 0 ? " or " : ""}<code>${s}</code>`)}?`
              : ""
          }
        </li>`;
      default:
        return html`<li class="unknown">
          <span aria-hidden="true">✗</span> <code>${check.name}</code>: ${check.message ?? check.status}
        </li>`;
    }
  });
  const allFound = outcome.answer.packages.every((check) => check.status === "found");
  const size = !allFound
    ? ""
    : outcome.answer.closureBytes === null
      ? html`<p class="muted">Its size is known once a builder has built or fetched all of it.</p>`
      : html`<p class="size">About ${formatBytes(outcome.answer.closureBytes)} unpacked.</p>`;
  return html`<ul class="checks" aria-label="Each name checked against the package set">
      ${items}
    </ul>
    ${size}`;
}

/** The composer's answer to a submitted form: the reference, each package checked, and the commands. */
async function composed(
  request: Request,
  env: Env,
  ctx: ExecutionContext,
  storage: RegistryStorage,
  packages: string,
  system: NixSystem,
  tag: string,
): Promise<Html> {
  const host = new URL(request.url).host;
  const words = packages
    .trim()
    .toLowerCase()
    .split(/[\s,/]+/)
    .filter(Boolean);
  if (words.length === 0) return html``;
  const name = [...(system === "aarch64-linux" ? ["arm64"] : []), ...words].join("/");
  const parsed = parseImageName(name);
  if (!parsed.ok) return html`<p class="problem" role="alert">${parsed.reason}</p>`;
  const reference = `${host}/${name}${tag && tag !== "latest" ? `:${tag}` : ""}`;
  const checked = await checkNames(request, env, ctx, storage, parsed.image.packages, parsed.image.system, tag).catch(
    (): ChecksOutcome => ({ ok: false, reason: "no builder answered" }),
  );
  return html`<dl class="composed">
    <dt>Image</dt>
    <dd><code>${reference}</code> (${parsed.image.system})${checks(checked)}</dd>
    <dt>Docker</dt>
    <dd>${command(`docker run --rm -it ${reference} bash`, "docker run")}</dd>
    <dt>Podman</dt>
    <dd>${command(`podman run --rm -it ${reference} bash`, "podman run")}</dd>
  </dl>`;
}

async function latestRevision(env: Env, storage: RegistryStorage, ctx: ExecutionContext): Promise<Html> {
  const outcome = await resolveTagCached(env, storage, ctx, "latest").catch(() => null);
  if (!outcome?.ok) return html`<span class="muted">not known right now (no builder answered)</span>`;
  return html`<code>${outcome.resolution.revision}</code>`;
}

function duration(build: BuildView): string {
  const end = build.phase === "done" || build.phase === "failed" ? Date.parse(build.updatedAt) : Date.now();
  return formatDuration(end - Date.parse(build.startedAt));
}

async function imageFigures(
  storage: RegistryStorage,
  build: BuildView,
): Promise<{ layers: number; bytes: number } | null> {
  const manifest = build.image ? await manifestOf(storage, build.image.oci) : null;
  return manifest ? { layers: manifest.layers.length, bytes: imageBytes(manifest) } : null;
}

async function buildRows(storage: RegistryStorage, builds: BuildView[]): Promise<Html> {
  if (builds.length === 0) return html`<p class="muted">No builds yet: the first pull of an image starts one.</p>`;
  const figures = await Promise.all(builds.map((build) => imageFigures(storage, build)));
  const rows = builds.map((build, i) => {
    const figure = figures[i];
    return html`<tr>
      <td><a href="/builds/${build.imageKey}">${imageName(build)}</a></td>
      <td><code title="${build.revision}">${build.revision.slice(0, 12)}</code></td>
      <td><span class="phase phase-${build.phase}">${build.phase}</span></td>
      <td>${duration(build)}</td>
      <td>${figure ? figure.layers : ""}</td>
      <td>${figure ? formatBytes(figure.bytes) : ""}</td>
    </tr>`;
  });
  return html`<table class="builds">
    <caption>
      The ${builds.length} most recent builds
    </caption>
    <thead>
      <tr>
        <th scope="col">Image</th>
        <th scope="col">Revision</th>
        <th scope="col">Status</th>
        <th scope="col">Duration</th>
        <th scope="col">Layers</th>
        <th scope="col">Size</th>
      </tr>
    </thead>
    <tbody>
      ${rows}
    </tbody>
  </table>`;
}

/** GET /compose?packages=&system=&tag=: the composer's answer alone, which the page's script asks for as you type. */
export async function handleCompose(request: IRequest, env: Env, ctx: ExecutionContext): Promise<Response> {
  const url = new URL(request.url);
  const { packages, system, tag } = composerInput(url);
  const storage = await registryStorage(request, env, ctx);
  return fragmentResponse(request.method, await composed(request, env, ctx, storage, packages, system, tag));
}

function composerInput(url: URL): { packages: string; system: "x86_64-linux" | "aarch64-linux"; tag: string } {
  return {
    packages: (url.searchParams.get("packages") ?? "").slice(0, 2048),
    system: url.searchParams.get("system") === "aarch64-linux" ? "aarch64-linux" : "x86_64-linux",
    tag: (url.searchParams.get("tag") ?? "latest").trim().slice(0, 128) || "latest",
  };
}

export async function handleHome(request: IRequest, env: Env, ctx: ExecutionContext): Promise<Response> {
  const url = new URL(request.url);
  const host = url.host;
  if (!wantsHtml(request)) return textResponse(request.method, 200, usageText(host));
  const storage = await registryStorage(request, env, ctx);
  const { packages, system, tag } = composerInput(url);
  const [revision, builds] = await Promise.all([
    latestRevision(env, storage, ctx),
    recentBuilds(storage, RECENT_BUILDS).catch(() => [] as BuildView[]),
  ]);
  const shell = META_PACKAGES.shell.join(", ");
  const main = html`<section aria-labelledby="compose-title">
      <h1 id="compose-title">Compose an image</h1>
      <p>
        Name the nixpkgs packages you want; the registry builds the image on its first pull and serves it from the cache
        after.
      </p>
      <form method="get" action="/" class="composer" id="composer">
        <label for="packages">Packages</label>
        <input
          id="packages"
          name="packages"
          value="${packages}"
          placeholder="shell curl jq"
          autocomplete="off"
          spellcheck="false"
          aria-describedby="packages-help"
        />
        <p id="packages-help" class="help">Separated by spaces. <code>shell</code> adds ${shell}.</p>
        <label for="system">System</label>
        <select id="system" name="system">
          <option value="x86_64-linux" ${system === "x86_64-linux" ? html` selected` : ""}>x86_64-linux (amd64)</option>
          <option value="aarch64-linux" ${system === "aarch64-linux" ? html` selected` : ""}>
            aarch64-linux (arm64)
          </option>
        </select>
        <label for="tag">Tag</label>
        <input id="tag" name="tag" value="${tag}" spellcheck="false" aria-describedby="tag-help" />
        <p id="tag-help" class="help"><code>latest</code>, a channel or branch name, or a 40-hex nixpkgs commit.</p>
        <button type="submit">Show the pull command</button>
      </form>
      <div id="composed" aria-live="polite">${await composed(request, env, ctx, storage, packages, system, tag)}</div>
    </section>
    <section aria-labelledby="usage-title">
      <h2 id="usage-title">How names work</h2>
      <ul>
        <li>
          Every path component of an image name is a nixpkgs package: <code>${host}/curl/jq</code> has curl and jq.
        </li>
        <li><code>shell</code> is a meta-package: ${shell}. <code>arm64</code> builds for aarch64-linux.</li>
        <li>The tag picks the package set: <code>latest</code> is ${revision}; a 40-hex commit pins one.</li>
        <li>
          The first pull of a combination builds it (its progress shows below); every later pull is served from the
          cache.
        </li>
      </ul>
      ${command(`docker pull ${host}/shell/hello`, "example pull")}
    </section>
    <section aria-labelledby="builds-title">
      <h2 id="builds-title">Recent builds</h2>
      <div id="builds">${await buildRows(storage, builds)}</div>
    </section>`;
  return pageResponse(request.method, 200, "nix-edge-registry: container images from nixpkgs", main);
}
