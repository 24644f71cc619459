// Serves a fetch-style handler (Request -> Response) from Node's HTTP server, streaming both ways,
// so the builder's routes are written the same way as the worker's.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";

export type FetchHandler = (request: Request) => Promise<Response>;

function toRequest(message: IncomingMessage, origin: string): Request {
  const headers = new Headers();
  for (const [name, value] of Object.entries(message.headers)) {
    if (value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) headers.append(name, v);
  }
  const method = message.method ?? "GET";
  const hasBody = method !== "GET" && method !== "HEAD";
  return new Request(new URL(message.url ?? "/", origin), {
    method,
    headers,
    body: hasBody ? (Readable.toWeb(message) as ReadableStream<Uint8Array>) : undefined,
    // Required by Node's fetch for streamed request bodies.
    ...(hasBody ? { duplex: "half" } : {}),
  } as RequestInit);
}

async function send(response: Response, res: ServerResponse, isHead: boolean): Promise<void> {
  const headers: Record<string, string> = {};
  response.headers.forEach((value, name) => (headers[name] = value));
  res.writeHead(response.status, headers);
  if (!response.body || isHead) {
    await response.body?.cancel();
    res.end();
    return;
  }
  await pipeline(Readable.fromWeb(response.body as import("node:stream/web").ReadableStream<Uint8Array>), res);
}

export function serveFetch(handler: FetchHandler, onError: (error: unknown) => void): Server {
  return createServer((req, res) => {
    const origin = `http://${req.headers.host ?? "localhost"}`;
    handler(toRequest(req, origin))
      .then((response) => send(response, res, req.method === "HEAD"))
      .catch((error) => {
        onError(error);
        if (!res.headersSent) res.writeHead(500, { "content-type": "application/json" });
        // A stream that broke mid-body must not look complete to the client.
        res.destroy();
      });
  });
}
