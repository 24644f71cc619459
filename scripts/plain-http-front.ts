// A TCP front for the local worker that turns TLS handshakes away at once, with a plain HTTP answer. Registry
// clients (skopeo, podman, containerd) try https first even for an "insecure" registry and fall back to http only
// when that fails; workerd never answers a TLS hello, so each pull would first wait ~10 s for a handshake timeout.
//
// The front runs on a thread of its own: every byte of every blob passes through it, and on the main thread it
// shared an event loop and a heap with Miniflare, which made a warm pull ~15% slower.
import { createRequire } from "node:module";
import net from "node:net";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";

/** The first byte of every TLS record that opens a handshake. */
const TLS_HANDSHAKE = 0x16;

export interface PlainHttpFront {
  port: number;
  close(): Promise<void>;
}

interface Endpoint {
  host: string;
  port: number;
}

/** The front, on the calling thread. */
function servePlainHttpFront(target: Endpoint, listen: Endpoint): Promise<PlainHttpFront> {
  const sockets = new Set<net.Socket>();
  // Half-open connections are allowed so that a client that shuts down its sending side after the request still
  // gets the whole answer; each side's end is passed on by pipe().
  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    client.on("error", () => client.destroy());
    // A client that goes away before saying anything is answered with an end of our own (half-open otherwise).
    const endEarly = () => client.end();
    client.once("end", endEarly);
    client.once("data", (first: Buffer) => {
      client.off("end", endEarly);
      if (first[0] === TLS_HANDSHAKE) {
        // An HTTP answer, not just a closed socket: the docker CLI falls back to http only on "server gave
        // HTTP response to HTTPS client"; skopeo and podman fall back on any error.
        client.end("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
      }
      client.pause();
      // No Nagle delay on either side: small writes (headers, the ends of blobs) would otherwise wait for ACKs.
      client.setNoDelay(true);
      const upstream = net.connect({ port: target.port, host: target.host, noDelay: true, allowHalfOpen: true }, () => {
        upstream.write(first);
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
      sockets.add(upstream);
      // A clean close of one side has already been passed on as an end, after everything written before it;
      // destroying the other side here would drop the end of a response still on its way to a slow client.
      upstream.on("close", (hadError) => {
        sockets.delete(upstream);
        if (hadError) client.destroy();
      });
      upstream.on("error", () => client.destroy());
      client.on("close", () => upstream.destroy()); // nobody left to answer
    });
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(listen.port, listen.host, () => {
      const address = server.address() as net.AddressInfo;
      resolve({
        port: address.port,
        close: () =>
          new Promise<void>((done) => {
            for (const socket of sockets) socket.destroy();
            server.close(() => done());
          }),
      });
    });
  });
}

const THREAD_ROLE = "plain-http-front";

interface ThreadData {
  role: typeof THREAD_ROLE;
  target: Endpoint;
  listen: Endpoint;
}

type ThreadMessage = { kind: "listening"; port: number } | { kind: "failed"; message: string };

/** The front on a thread of its own; close() stops the thread. */
export function startPlainHttpFront(target: Endpoint, listen: Endpoint): Promise<PlainHttpFront> {
  // The thread loads this TypeScript module, so it registers the same loader (tsx) the main thread runs under.
  const tsxApi = createRequire(import.meta.url).resolve("tsx/esm/api");
  const bootstrap = `require(${JSON.stringify(tsxApi)}).register(); import(${JSON.stringify(import.meta.url)});`;
  const data: ThreadData = { role: THREAD_ROLE, target, listen };
  const thread = new Worker(bootstrap, { eval: true, workerData: data });
  const exited = new Promise<void>((done) => thread.once("exit", () => done()));
  return new Promise((resolve, reject) => {
    let listening = false;
    thread.on("error", (error) => {
      if (listening) console.error(`the plain-http front failed: ${error.stack ?? error.message}`);
      else reject(error);
    });
    const onExit = (code: number) =>
      reject(new Error(`the plain-http front's thread exited with code ${code} before listening`));
    thread.once("exit", onExit);
    thread.once("message", (message: ThreadMessage) => {
      thread.off("exit", onExit);
      if (message.kind === "failed") {
        void thread.terminate();
        reject(new Error(message.message));
        return;
      }
      listening = true;
      resolve({
        port: message.port,
        close: () => {
          thread.postMessage("close");
          return exited;
        },
      });
    });
  });
}

function isThreadData(value: unknown): value is ThreadData {
  return typeof value === "object" && value !== null && (value as { role?: unknown }).role === THREAD_ROLE;
}

if (!isMainThread && parentPort && isThreadData(workerData)) {
  const port = parentPort;
  const { target, listen } = workerData;
  servePlainHttpFront(target, listen).then(
    (front) => {
      port.postMessage({ kind: "listening", port: front.port } satisfies ThreadMessage);
      port.once("message", () => {
        void front.close().then(() => port.close());
      });
    },
    (error: unknown) => {
      port.postMessage({ kind: "failed", message: (error as Error).message } satisfies ThreadMessage);
      port.close();
    },
  );
}
