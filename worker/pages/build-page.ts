// GET /builds/<image key>: one build, its phases and progress (updated live by /static/app.js, which polls
// /api/builds/<key>), why it failed, and the pull command.
import type { IRequest } from "itty-router";
import { isImageKey } from "../../common/bucket-layout.ts";
import { viewOf, type BuildView } from "../builds-api.ts";
import type { Env } from "../env.ts";
import { decodeParam } from "../params.ts";
import { registryStorage } from "../registry-storage.ts";
import { formatDuration, imageName } from "./format.ts";
import { html, pageResponse, type Html } from "./html.ts";

/** The lines of Nix's log a failed build's error carries, if any. */
function logTail(build: BuildView): string | null {
  // The builder's BUILD_FAILED detail carries it as `log` (builder-service/jobs.ts).
  const detail = build.error?.detail;
  const tail = typeof detail === "object" && detail !== null ? (detail as { log?: unknown }).log : null;
  return typeof tail === "string" ? tail : null;
}

function phases(build: BuildView): Html {
  const started = Date.parse(build.startedAt);
  return html`<ol class="phases">
    ${build.phases.map(
      (entry) =>
        html`<li>
          <span class="phase phase-${entry.phase}">${entry.phase}</span>
          <span class="muted">at ${formatDuration(Date.parse(entry.at) - started)}</span>
        </li>`,
    )}
  </ol>`;
}

function buildSection(build: BuildView, host: string): Html {
  const name = imageName(build);
  const reference = `${host}/${name}${build.tag && build.tag !== "latest" ? `:${build.tag}` : ""}`;
  const tail = logTail(build);
  const finished = build.phase === "done" || build.phase === "failed";
  return html`<h1>Build of <code>${name}</code></h1>
    <dl class="facts">
      <dt>Status</dt>
      <dd><span class="phase phase-${build.phase}" data-field="phase">${build.phase}</span></dd>
      <dt>Progress</dt>
      <dd data-field="summary" aria-live="polite">${build.summary}</dd>
      <dt>Packages</dt>
      <dd>${build.packages.join(", ")} (${build.system})</dd>
      <dt>Revision</dt>
      <dd><code>${build.revision}</code> (tag <code>${build.tag}</code>)</dd>
      <dt>Started</dt>
      <dd><time datetime="${build.startedAt}">${build.startedAt}</time></dd>
    </dl>
    <h2>Phases</h2>
    ${phases(build)}
    ${
      finished
        ? ""
        : html`<h2>Nix's log, as it builds</h2>
            <pre class="log" tabindex="0" aria-label="The last lines of Nix's log" data-field="log">
${(build.progress.log ?? []).join("\n")}</pre>`
    }
    ${
      build.error
        ? html`<section class="failure" aria-labelledby="failure-title">
            <h2 id="failure-title">Why it failed</h2>
            <p><code>${build.error.code}</code>: ${build.error.message}</p>
            ${
              tail
                ? html`<h3>The end of Nix's log</h3>
                    <pre class="log" tabindex="0" aria-label="The end of Nix's log">${tail}</pre>`
                : ""
            }
            <p>The next pull of this image starts a new build.</p>
          </section>`
        : ""
    }
    ${build.image ? html`<p><a href="/images/${build.imageKey}">The image: its layers, config and manifests</a></p>` : ""}
    <h2>Pull it</h2>
    <div class="command">
      <code>docker pull ${reference}</code
      ><button
        type="button"
        class="copy"
        data-copy="docker pull ${reference}"
        aria-label="Copy the docker pull command"
        hidden
      >
        Copy
      </button>
    </div>
    ${finished ? "" : html`<p class="muted" data-live-build="${build.imageKey}">This page follows the build as it runs.</p>`}`;
}

export async function handleBuildPage(request: IRequest, env: Env, ctx: ExecutionContext): Promise<Response> {
  const key = decodeParam(request.params.key);
  const storage = await registryStorage(request, env, ctx);
  const build = isImageKey(key) ? await viewOf(storage, key) : null;
  if (!build) {
    return pageResponse(
      request.method,
      404,
      "No such build",
      html`<h1>No such build</h1>
        <p>No build of image <code>${key}</code> is known. <a href="/">Back to the front page</a>.</p>`,
    );
  }
  return pageResponse(
    request.method,
    200,
    `Build of ${imageName(build)}`,
    buildSection(build, new URL(request.url).host),
  );
}
