// HTML for the front page, made on the server: text is escaped unless it is already Html, so a package name or a
// build's error message can never become markup.
import { bytesResponse } from "../responses.ts";

export class Html {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

const ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

/** What a template may interpolate: text and numbers (escaped), Html (as it is), nothing, or a list of these. */
export type HtmlValue = Html | string | number | boolean | null | undefined | readonly HtmlValue[];

function render(value: HtmlValue): string {
  if (value === null || value === undefined || value === false) return "";
  if (value instanceof Html) return value.text;
  if (Array.isArray(value)) return (value as readonly HtmlValue[]).map(render).join("");
  return escapeHtml(String(value));
}

/** A template whose interpolations are escaped (Html and arrays of Html are inserted as they are). */
export function html(strings: TemplateStringsArray, ...values: HtmlValue[]): Html {
  let out = strings[0];
  for (let i = 0; i < values.length; i++) out += render(values[i]) + strings[i + 1];
  return new Html(out);
}

const encoder = new TextEncoder();

/** A piece of a page, for the script that updates the page in place. */
export function fragmentResponse(method: string, fragment: Html): Response {
  return htmlResponse(method, 200, fragment);
}

/** HTML as it is made for each request: builds move by the second, and a page is cheap to make. */
function htmlResponse(method: string, status: number, body: Html): Response {
  return bytesResponse(method, status, encoder.encode(body.text), {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
  });
}

/** A whole page: the shell every page shares, with its own title and main content. */
export function pageResponse(method: string, status: number, title: string, main: Html): Response {
  const body = html`<!doctype html>
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <title>${title}</title>
        <link rel="stylesheet" href="/static/style.css" />
        <script type="module" src="/static/app.js"></script>
      </head>
      <body>
        <header class="site">
          <a href="/" class="brand">nix-edge-registry</a
          ><span class="tagline">container images built from nixpkgs on the first pull</span>
        </header>
        <main id="main">${main}</main>
        <footer class="site">
          <a href="/api/builds">/api/builds</a> · <a href="/v2/">/v2/</a> · built images are served from R2, at
          Cloudflare's edge
        </footer>
      </body>
    </html> `;
  return htmlResponse(method, status, body);
}

/** Whether a request asks for a page rather than text or JSON (browsers send text/html first). */
export function wantsHtml(request: Request): boolean {
  return /\btext\/html\b/.test(request.headers.get("Accept") ?? "");
}
