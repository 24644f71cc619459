// Unit tests of the worker's parts that need no workerd: they use only web-standard APIs, which Node has too.
import { describe, expect, it } from "vitest";
import { lockstepTee } from "../worker/lockstep-tee.ts";
import { LruMap } from "../worker/lru-map.ts";

const CHUNK = 64 * 1024;

/** A source of `chunks` chunks of CHUNK bytes (chunk i filled with i), counting how many were read from it. */
function countingSource(chunks: number, failAt?: number) {
  const state = { produced: 0, cancelled: false as unknown };
  const stream = new ReadableStream<Uint8Array>(
    {
      pull(controller) {
        if (state.produced === failAt) {
          controller.error(new Error("the builder went away"));
          return;
        }
        if (state.produced === chunks) {
          controller.close();
          return;
        }
        controller.enqueue(new Uint8Array(CHUNK).fill(state.produced % 256));
        state.produced++;
      },
      cancel(reason) {
        state.cancelled = reason ?? true;
      },
    },
    { highWaterMark: 0 },
  );
  return { stream, state };
}

async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const reader = stream.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
  }
  return Buffer.concat(parts);
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 20));

// A lockstep bug shows up as a branch waiting forever: fail fast instead.
describe("lockstepTee (a blob on its way to a client and into R2 at once)", { timeout: 10_000 }, () => {
  it("gives both branches every byte, in order", async () => {
    const { stream } = countingSource(40);
    const [a, b] = lockstepTee(stream);
    const [x, y] = await Promise.all([readAll(a), readAll(b)]);
    expect(x.byteLength).toBe(40 * CHUNK);
    expect(Buffer.compare(Buffer.from(x), Buffer.from(y))).toBe(0);
    expect(x[39 * CHUNK]).toBe(39);
  });

  it("reads the source no faster than the slower branch, so a slow client never makes it hold the blob", async () => {
    const { stream, state } = countingSource(200);
    const [fast, slow] = lockstepTee(stream);
    const fastDone = readAll(fast);
    await settle();
    // The fast side (R2) has asked for everything, the slow one (the client) for nothing yet.
    expect(state.produced).toBeLessThanOrEqual(1);

    const slowReader = slow.getReader();
    for (let i = 0; i < 10; i++) await slowReader.read();
    await settle();
    expect(state.produced).toBeLessThanOrEqual(11);

    slowReader.releaseLock();
    const [whole] = await Promise.all([fastDone, readAll(slow)]);
    expect(whole.byteLength).toBe(200 * CHUNK);
  });

  it("keeps feeding the other branch when one is cancelled (a client that hangs up), and cancels the source only when both are", async () => {
    const { stream, state } = countingSource(30);
    const [toR2, toClient] = lockstepTee(stream);
    const r2 = readAll(toR2);
    const client = toClient.getReader();
    await client.read();
    await settle(); // the R2 side is now waiting for the client to want the next chunk too
    await client.cancel("client went away");
    expect((await r2).byteLength).toBe(30 * CHUNK);
    expect(state.cancelled).toBe(false);

    const second = countingSource(30);
    const [c, d] = lockstepTee(second.stream);
    await c.cancel("one");
    await d.cancel("two");
    expect(second.state.cancelled).toBe("two");
  });

  it("errors both branches when the source fails, so neither a client nor R2 takes a short blob as whole", async () => {
    const { stream } = countingSource(30, 5);
    const [a, b] = lockstepTee(stream);
    const [x, y] = await Promise.allSettled([readAll(a), readAll(b)]);
    expect(x).toMatchObject({ status: "rejected", reason: new Error("the builder went away") });
    expect(y).toMatchObject({ status: "rejected", reason: new Error("the builder went away") });
  });
});

describe("the isolate's LRU", () => {
  it("forgets the least recently used entry past its limit", () => {
    const lru = new LruMap<string, number>(2);
    lru.set("a", 1);
    lru.set("b", 2);
    expect(lru.get("a")).toBe(1); // a is now the most recent
    lru.set("c", 3);
    expect(lru.get("b")).toBeUndefined();
    expect(lru.get("a")).toBe(1);
    expect(lru.get("c")).toBe(3);
  });
});
