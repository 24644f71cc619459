// Unit tests of the worker's parts that need no workerd: they use only web-standard APIs, which Node has too.
import { describe, expect, it } from "vitest";
import { LruMap } from "../worker/lru-map.ts";

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
