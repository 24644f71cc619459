// A stand-in for Cloudflare's proxy in front of an origin (a Tunnel or a proxied host name): it forwards each request
// to the origin and, when the origin's response headers take longer than the limit, cuts the request and answers
// 524 "A timeout occurred", as Cloudflare does after 100 s. Bodies pass through as they come.
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import { listenLocally } from "./local-server.ts";

export interface OriginTimeoutProxy {
  url: string;
  /** Requests cut with a 524. */
  readonly cut: number;
  /** Requests forwarded, by path. */
  readonly forwarded: string[];
  close(): Promise<void>;
}

export async function startOriginTimeoutProxy(origin: string, limitMs: number): Promise<OriginTimeoutProxy> {
  const target = new URL(origin);
  let cut = 0;
  const forwarded: string[] = [];
  const server = http.createServer((request: IncomingMessage, response: ServerResponse) => {
    forwarded.push(request.url ?? "");
    const upstream = http.request(
      { host: target.hostname, port: target.port, method: request.method, path: request.url, headers: request.headers },
      (answer) => {
        clearTimeout(timer);
        response.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(response);
      },
    );
    const timer = setTimeout(() => {
      cut++;
      upstream.destroy();
      if (!response.headersSent) {
        response.writeHead(524, { "content-type": "text/html" });
        response.end("<html><body><h1>524: A timeout occurred</h1></body></html>");
      }
    }, limitMs);
    upstream.on("error", () => {
      clearTimeout(timer);
      if (!response.headersSent) {
        response.writeHead(502, { "content-type": "text/html" });
        response.end("<html><body><h1>502: Bad gateway</h1></body></html>");
      }
    });
    request.pipe(upstream);
  });
  const { url, close } = await listenLocally(server);
  return {
    url,
    get cut() {
      return cut;
    },
    forwarded,
    close,
  };
}
