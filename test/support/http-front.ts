// A front for an HTTP server under test (the local S3 endpoint, in the tests that inject S3 faults): each request
// goes to `handle`, which answers it itself or forwards it untouched, Host included, so SigV4 signatures still hold.
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import { listenLocally } from "./local-server.ts";

export interface HttpFront {
  /** http://127.0.0.1:PORT */
  url: string;
  close(): Promise<void>;
}

/** Passes the request on to the target; `onAnswered` hears the target's status once its answer has been relayed. */
export type Forward = (onAnswered?: (status: number) => void) => void;

export async function startHttpFront(
  target: string,
  handle: (incoming: IncomingMessage, response: ServerResponse, forward: Forward) => void,
): Promise<HttpFront> {
  const upstream = new URL(target);
  const server = http.createServer((incoming, response) => {
    const forward: Forward = (onAnswered) => {
      const forwarded = http.request(
        {
          host: upstream.hostname,
          port: Number(upstream.port),
          method: incoming.method,
          path: incoming.url,
          headers: incoming.headers,
        },
        (answer) => {
          response.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(response);
          if (onAnswered) answer.on("end", () => onAnswered(answer.statusCode ?? 0));
        },
      );
      forwarded.on("error", () => incoming.socket.destroy());
      incoming.pipe(forwarded);
    };
    handle(incoming, response, forward);
  });
  return listenLocally(server);
}
