// Layering (builder-service/layering.ts) and its popularity data (popularity.ts, NIX_POPULARITY_URL): plans within
// the budget as they always were, deterministic plans past it that share an application's layers between the
// images that hold it, never more layers than the budget, and popularity data from a URL or a file.
import { execFile } from "node:child_process";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { StorePathNode } from "../builder-service/closure.ts";
import { ConfigError, loadConfig } from "../builder-service/config.ts";
import {
  LARGE_CLOSURE_PATHS,
  OWN_LAYER_BYTES,
  planLayers,
  topologicalOrder,
  type LayerGroup,
} from "../builder-service/layering.ts";
import { loadPopularity, PopularityError, type Popularity } from "../builder-service/popularity.ts";
import { PROJECT_ROOT } from "../scripts/local-stack.ts";

const MiB = 1024 * 1024;

/** A small deterministic PRNG (mulberry32), so that a failing case can be replayed. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function shuffled<T>(items: readonly T[], next: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

const pathOf = (name: string) =>
  `/nix/store/${name
    .replace(/[^a-z0-9]/g, "")
    .padEnd(32, "0")
    .slice(0, 32)}-${name}`;

/**
 * A package set as Nix would see it: packages with references and sizes, and Nixery's popularity data for it
 * (for each store path, how many packages have it in their closure).
 */
class PackageSet {
  readonly nodes = new Map<string, StorePathNode>();

  add(name: string, references: string[], narSize: number): this {
    this.nodes.set(name, { path: pathOf(name), references: references.map(pathOf), narSize, closureSize: 0 });
    return this;
  }

  closureNames(names: readonly string[]): Set<string> {
    const byPath = new Map([...this.nodes].map(([name, node]) => [node.path, name]));
    const seen = new Set<string>();
    const stack = [...names];
    while (stack.length > 0) {
      const name = stack.pop()!;
      if (seen.has(name)) continue;
      seen.add(name);
      for (const ref of this.nodes.get(name)!.references) stack.push(byPath.get(ref)!);
    }
    return seen;
  }

  /** The graph of an image of these packages, as the builder gets it from Nix. */
  image(names: readonly string[]): StorePathNode[] {
    return [...this.closureNames(names)].sort().map((name) => this.nodes.get(name)!);
  }

  popularity(): Popularity {
    const counts = new Map<string, number>();
    for (const name of this.nodes.keys())
      for (const used of this.closureNames([name])) counts.set(used, (counts.get(used) ?? 0) + 1);
    return (storeName) => counts.get(storeName);
  }
}

/**
 * Base libraries, a GUI stack many packages use, an editor with `LARGE_CLOSURE_PATHS` libraries of its own and a
 * large font package (plus a plugin package that needs it), and two tools with 40 libraries each.
 */
function desktop(): PackageSet {
  const set = new PackageSet()
    .add("libc", [], 12 * MiB)
    .add("zlib", ["libc"], 120_000)
    .add("openssl", ["libc", "zlib"], 5 * MiB)
    .add("freetype", ["libc", "zlib"], 800_000)
    .add("fontconfig", ["freetype", "libc"], 400_000)
    .add("glib", ["libc", "zlib"], 4 * MiB)
    .add("pango", ["glib", "fontconfig"], 1 * MiB)
    .add("gtk", ["glib", "pango", "openssl"], 9 * MiB)
    .add("icons", [], 20 * MiB);
  for (let i = 0; i < 40; i++) set.add(`desktop-app-${i}`, ["gtk", "icons"], 2 * MiB);
  const editorLibs = Array.from({ length: LARGE_CLOSURE_PATHS }, (_, i) => `editor-lib-${String(i).padStart(2, "0")}`);
  editorLibs.forEach((name, i) => set.add(name, i % 3 === 0 ? ["libc", "zlib"] : ["libc"], 150_000 + i * 40_000));
  set
    .add("editor-data", [], 14 * MiB)
    .add("editor-fonts", [], 18 * MiB)
    .add("libeditor", [...editorLibs, "editor-fonts", "glib"], 3 * MiB)
    .add("editor", ["libeditor", "editor-data", "gtk"], 6 * MiB)
    .add("editor-plugins", ["editor"], 1 * MiB);
  for (const tool of ["tool-a", "tool-b"]) {
    const libs = Array.from({ length: 40 }, (_, i) => `${tool}-lib-${String(i).padStart(2, "0")}`);
    libs.forEach((name, i) => set.add(name, ["libc"], 100_000 + i * 25_000));
    set.add(tool, [...libs, "openssl"], 2 * MiB);
  }
  return set;
}

const key = (layer: LayerGroup) => layer.paths.join("\n");
const byKey = (layers: LayerGroup[]) => new Set(layers.map(key));

describe("layering within the budget", () => {
  const set = new PackageSet()
    .add("glibc", [], 1000)
    .add("bash", ["glibc"], 1000)
    .add("hello", ["glibc", "bash"], 1000)
    .add("zlib", ["glibc"], 1000);

  it("gives every store path a layer of its own, in dependency order, ties by name, as before", () => {
    const expected = ["glibc", "bash", "hello", "zlib"].map((name) => ({ paths: [pathOf(name)], size: 1000 }));
    const graph = set.image(["hello", "zlib"]);
    expect(planLayers(graph, 100)).toEqual(expected);
    expect(planLayers([...graph].reverse(), 100, set.popularity())).toEqual(expected);
    // Exactly as many paths as store layers: still one each.
    expect(planLayers(graph, 5, set.popularity())).toEqual(expected);
  });

  it("is the same plan, with or without popularity data, for every image that fits", () => {
    const desk = desktop();
    const popularity = desk.popularity();
    for (const names of [["editor-lib-00"], ["gtk"], ["tool-a"], ["desktop-app-3", "zlib"]]) {
      const graph = desk.image(names);
      const plan = planLayers(graph, graph.length + 1, popularity);
      expect(plan).toEqual(topologicalOrder(graph).map((node) => ({ paths: [node.path], size: node.narSize })));
      expect(planLayers(graph, graph.length + 1)).toEqual(plan);
    }
  });
});

describe("layering past the budget", () => {
  const desk = desktop();
  const popularity = desk.popularity();
  const budget = 40;
  const withA = desk.image(["editor", "tool-a"]);
  const withB = desk.image(["editor", "tool-b"]);

  it("gives two images that share a big application the same layers for it", () => {
    expect(withA.length).toBeGreaterThan(2 * budget);
    const [planA, planB] = [planLayers(withA, budget, popularity), planLayers(withB, budget, popularity)];
    const editorPaths = new Set(
      [...desk.closureNames(["editor"])]
        .filter((name) => name.startsWith("editor") || name === "libeditor")
        .map(pathOf),
    );
    const editorLayersA = planA.filter((layer) => layer.paths.some((path) => editorPaths.has(path)));
    // Every layer holding the editor's own paths is a layer of the other image too: stored and pulled once.
    const keysB = byKey(planB);
    for (const layer of editorLayersA) expect(keysB.has(layer.paths.join("\n")), layer.paths.join(", ")).toBe(true);
    // ... and holds nothing of tool-a.
    for (const layer of editorLayersA) expect(layer.paths.filter((path) => path.includes("tool-a"))).toEqual([]);
    // The editor's libraries come together: one layer.
    const libraries = planA.find((layer) => layer.paths.includes(pathOf("libeditor")))!;
    expect(libraries.paths).toEqual(expect.arrayContaining([pathOf("editor-lib-00"), pathOf("editor-lib-59")]));
    // The C library, which every image has and small images lay out alone, keeps a layer of its own; the GUI
    // stack, which comes together, is one layer shared by both images.
    expect(planA).toContainEqual({ paths: [pathOf("libc")], size: desk.nodes.get("libc")!.narSize });
    expect(planB).toContainEqual({ paths: [pathOf("libc")], size: desk.nodes.get("libc")!.narSize });
    const gui = planA.find((layer) => layer.paths.includes(pathOf("gtk")))!;
    expect(gui.paths).toEqual(expect.arrayContaining([pathOf("glib"), pathOf("pango")]));
    expect(keysB.has(gui.paths.join("\n"))).toBe(true);
  });

  it("keeps a large path alone, unless only paths whose closures no image within the budget holds use it", () => {
    const plan = planLayers(desk.image(["editor", "tool-a", "desktop-app-1"]), budget, popularity);
    // The icons (20 MiB) come with every desktop application, whose closure of 10 paths fits in the budget: such
    // an image lays them out alone, and so does this one.
    expect(plan).toContainEqual({ paths: [pathOf("icons")], size: desk.nodes.get("icons")!.narSize });
    expect(desk.image(["desktop-app-1"]).length).toBeLessThan(budget);
    // The editor's fonts (18 MiB) come only through libeditor, whose closure is larger than any image laid out
    // one path per layer: they go into the editor's layer, the same one as in the images of the other test.
    expect(desk.image(["libeditor"]).length).toBeGreaterThan(LARGE_CLOSURE_PATHS);
    const editorLayer = plan.find((layer) => layer.paths.includes(pathOf("libeditor")))!;
    expect(editorLayer.paths).toContain(pathOf("editor-fonts"));
    for (const other of [withA, withB])
      expect(byKey(planLayers(other, budget, popularity)).has(key(editorLayer))).toBe(true);
  });

  it("lays out a group one path per layer when it holds 10 MiB or more for each layer it saves", () => {
    // A viewer with a core and data, which always come together, and plugins that need it; beside them, tools
    // that make the C library the widest used path.
    const viewer = (coreSize: number) => {
      const set = new PackageSet().add("libc", [], 2 * MiB);
      for (let i = 0; i < 20; i++) set.add(`tool-${i}`, ["libc"], 100_000);
      set
        .add("viewer-data", [], coreSize)
        .add("viewer-core", ["viewer-data", "libc"], coreSize)
        .add("viewer", ["viewer-core"], 1 * MiB);
      for (let i = 0; i < 4; i++) set.add(`viewer-plugin-${i}`, ["viewer"], 50_000);
      for (let i = 0; i < 8; i++) set.add(`tool-${i}-extra`, [`tool-${i}`], 50_000);
      return set;
    };
    const names = ["viewer-plugin-0", "tool-0-extra", "tool-1-extra", "tool-2-extra"];
    const grouped = viewer(4 * MiB);
    const plan = planLayers(grouped.image(names), 8, grouped.popularity());
    expect(plan.length).toBeLessThanOrEqual(7);
    // 9 MiB in three paths: 4.5 MiB for each layer saved, one layer.
    expect(plan).toContainEqual({
      paths: ["viewer", "viewer-core", "viewer-data"].map(pathOf).sort(),
      size: 9 * MiB,
    });
    const heavy = viewer(12 * MiB);
    const heavyPlan = planLayers(heavy.image(names), 8, heavy.popularity());
    expect(heavyPlan.length).toBeLessThanOrEqual(7);
    // 25 MiB in three paths: 12.5 MiB for each layer saved, a layer each.
    for (const name of ["viewer", "viewer-core", "viewer-data"])
      expect(heavyPlan).toContainEqual({ paths: [pathOf(name)], size: heavy.nodes.get(name)!.narSize });
  });

  it("shares the application's layers with an image of the application alone, and with its plugins", () => {
    const alone = planLayers(desk.image(["editor"]), budget, popularity);
    const plugins = planLayers(desk.image(["editor-plugins", "tool-b"]), budget, popularity);
    const editorLayer = alone.find((layer) => layer.paths.includes(pathOf("libeditor")))!;
    expect(editorLayer.paths).toContain(pathOf("editor-lib-59"));
    expect(byKey(plugins).has(editorLayer.paths.join("\n"))).toBe(true);
    expect(byKey(planLayers(withA, budget, popularity)).has(editorLayer.paths.join("\n"))).toBe(true);
  });

  it("is the same plan whatever order Nix lists the paths and references in", () => {
    const next = random(16);
    const plan = planLayers(withA, budget, popularity);
    for (let round = 0; round < 20; round++) {
      const shuffledGraph = shuffled(withA, next).map((node) => ({
        ...node,
        references: shuffled(node.references, next),
      }));
      expect(planLayers(shuffledGraph, budget, popularity)).toEqual(plan);
      expect(planLayers(shuffledGraph, budget)).toEqual(planLayers(withA, budget));
    }
  });

  it("keeps the largest paths in layers of their own when there is no popularity data", () => {
    const plan = planLayers(withA, budget);
    expect(plan.length).toBe(budget - 1);
    const largest = [...withA].sort((a, b) => b.narSize - a.narSize || (a.path < b.path ? -1 : 1)).slice(0, budget - 2);
    for (const node of largest) expect(plan).toContainEqual({ paths: [node.path], size: node.narSize });
    expect(plan[plan.length - 1].paths.length).toBe(withA.length - (budget - 2));
  });

  it("never gives an image more layers than the budget, and lays out every path once", () => {
    const next = random(2026);
    for (let round = 0; round < 300; round++) {
      const count = 2 + Math.floor(next() * 300);
      const nodes: StorePathNode[] = [];
      for (let i = 0; i < count; i++) {
        const references =
          i === 0 ? [] : Array.from({ length: Math.floor(next() * 4) }, () => nodes[Math.floor(next() * i)].path);
        const narSize = next() < 0.05 ? OWN_LAYER_BYTES + Math.floor(next() * MiB) : Math.floor(next() * 3 * MiB);
        nodes.push({ path: pathOf(`p${round}-${i}`), references: [...new Set(references)], narSize, closureSize: 0 });
      }
      const counts = new Map(nodes.map((node) => [node.path.slice(44), Math.floor(next() * 1000)]));
      const budgetHere = 2 + Math.floor(next() * 60);
      for (const data of [(name: string) => counts.get(name), undefined]) {
        const plan = planLayers(nodes, budgetHere, data);
        expect(plan.length).toBeLessThanOrEqual(budgetHere - 1);
        expect(plan.every((layer) => layer.paths.length > 0)).toBe(true);
        expect(plan.flatMap((layer) => layer.paths).sort()).toEqual(nodes.map((node) => node.path).sort());
        for (const layer of plan) expect(layer.paths).toEqual([...layer.paths].sort());
      }
    }
  });
});

describe("popularity data", () => {
  let scratch: string;
  let server: Server;
  let base: string;
  const data = { "hello-2.12": 3, "glibc-2.39": 5000, "bad-1": -1, "text-1": "7" };

  beforeAll(async () => {
    scratch = await mkdtemp(join(tmpdir(), "popularity-"));
    await writeFile(join(scratch, "popularity.json"), JSON.stringify(data));
    await writeFile(join(scratch, "list.json"), "[1, 2]");
    server = createServer((request, response) => {
      if (request.url === "/popularity.json")
        response.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(data));
      else if (request.url === "/broken.json") response.writeHead(200).end("{not json");
      else if (request.url === "/down") response.writeHead(503).end();
      else response.writeHead(404).end();
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
    await rm(scratch, { recursive: true, force: true });
  });

  it("loads Nixery's format from an http URL, a file and a file:// URL, leaving out entries that are not counts", async () => {
    for (const source of [
      `${base}/popularity.json`,
      join(scratch, "popularity.json"),
      pathToFileURL(join(scratch, "popularity.json")).href,
    ]) {
      const popularity = await loadPopularity(source);
      expect([popularity("hello-2.12"), popularity("glibc-2.39"), popularity("bad-1"), popularity("text-1")]).toEqual([
        3,
        5000,
        undefined,
        undefined,
      ]);
      expect(popularity.entries).toBe(2);
    }
  });

  it("says what went wrong, and whether trying again later can help", async () => {
    const failure = async (source: string) => {
      const error = await loadPopularity(source).then(
        () => null,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(PopularityError);
      return error as PopularityError;
    };
    expect(await failure(`${base}/missing.json`)).toMatchObject({
      message: `cannot download popularity data from ${base}/missing.json: HTTP 404`,
      permanent: true,
    });
    expect(await failure(`${base}/down`)).toMatchObject({
      message: `cannot download popularity data from ${base}/down: HTTP 503`,
      permanent: false,
    });
    expect(await failure(`${base}/broken.json`)).toMatchObject({ permanent: true });
    expect((await failure(`${base}/broken.json`)).message).toContain("is not popularity data");
    expect((await failure(join(scratch, "list.json"))).message).toContain('expected {"name-version": count, ...}');
    expect(await failure(join(scratch, "none.json"))).toMatchObject({ permanent: true });
    const closed = await failure("http://127.0.0.1:1/popularity.json");
    expect(closed.permanent).toBe(false);
    expect(closed.message).toMatch(/^cannot download popularity data from http:\/\/127\.0\.0\.1:1\/popularity\.json: /);
  });

  describe("settings", () => {
    const required = {
      BUILDER_SECRET: "0123456789abcdef0123",
      S3_ENDPOINT: "https://account.r2.cloudflarestorage.com",
      S3_BUCKET: "registry",
      S3_ACCESS_KEY_ID: "id",
      S3_SECRET_ACCESS_KEY: "secret",
    };
    const problems = (env: Record<string, string>) => {
      try {
        loadConfig({ ...required, ...env });
      } catch (error) {
        if (error instanceof ConfigError) return error.message;
        throw error;
      }
      return "";
    };

    it("takes NIX_POPULARITY_URL (Nixery's name), NIXERY_POPULARITY_PATH (the older one), or the package set's file", () => {
      const file = join(scratch, "popularity.json");
      expect(loadConfig(required).popularity).toBeNull();
      expect(loadConfig({ ...required, NIX_POPULARITY_URL: "https://example.org/popularity.json" }).popularity).toEqual(
        {
          source: "https://example.org/popularity.json",
          setting: "NIX_POPULARITY_URL",
        },
      );
      expect(loadConfig({ ...required, NIX_POPULARITY_URL: file }).popularity).toEqual({
        source: file,
        setting: "NIX_POPULARITY_URL",
      });
      expect(loadConfig({ ...required, NIX_POPULARITY_URL: pathToFileURL(file).href }).popularity).toEqual({
        source: file,
        setting: "NIX_POPULARITY_URL",
      });
      expect(loadConfig({ ...required, NIXERY_POPULARITY_PATH: file }).popularity).toEqual({
        source: file,
        setting: "NIXERY_POPULARITY_PATH",
      });
      expect(loadConfig({ ...required, NIXERY_POPULARITY_PATH: file, NIX_POPULARITY_URL: file }).popularity).toEqual({
        source: file,
        setting: "NIX_POPULARITY_URL",
      });
      expect(loadConfig({ ...required, NIXERY_PKGS_PATH: scratch }).popularity).toEqual({
        source: file,
        setting: "NIXERY_PKGS_PATH",
      });
    });

    it("names a bad value", () => {
      expect(problems({ NIX_POPULARITY_URL: join(scratch, "none.json") })).toContain(
        `NIX_POPULARITY_URL=${join(scratch, "none.json")}: there is no such file`,
      );
      expect(problems({ NIX_POPULARITY_URL: "ftp://example.org/popularity.json" })).toContain(
        "give an http:// or https:// URL, or a file",
      );
      expect(
        problems({ NIX_POPULARITY_URL: "https://example.org/a.json", NIXERY_POPULARITY_PATH: "/srv/b.json" }),
      ).toContain("they are one setting: keep NIX_POPULARITY_URL");
    });
  });

  it("stops the builder at startup when the URL cannot be downloaded, saying what to do; the old name is logged as such", async () => {
    const env = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      BUILDER_SECRET: "0123456789abcdef0123",
      // Never reached: popularity data is loaded first.
      S3_ENDPOINT: "http://127.0.0.1:1",
      S3_BUCKET: "registry",
      S3_ACCESS_KEY_ID: "id",
      S3_SECRET_ACCESS_KEY: "secret",
      BUILDER_DATA_DIR: join(scratch, "builder"),
    };
    const start = (extra: Record<string, string>) =>
      promisify(execFile)(
        process.execPath,
        ["--import", "tsx", join(PROJECT_ROOT, "builder-service/main.ts"), "--check"],
        {
          env: { ...env, ...extra },
          cwd: PROJECT_ROOT,
          timeout: 60_000,
        },
      ).then(
        () => ({ code: 0, stdout: "", stderr: "" }),
        (error: { code: number; stdout: string; stderr: string }) => error,
      );
    const missing = await start({ NIX_POPULARITY_URL: `${base}/missing.json` });
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain(
      `builder-service: cannot start: cannot download popularity data from ${base}/missing.json: HTTP 404`,
    );
    expect(missing.stderr).toContain("Fix NIX_POPULARITY_URL");
    expect(missing.stderr).toContain("or unset it to build without popularity data");
    const down = await start({ NIX_POPULARITY_URL: `${base}/down` });
    expect(down.code).toBe(1);
    expect(down.stderr).toContain("The download may work later");
    const old = await start({ NIXERY_POPULARITY_PATH: join(scratch, "list.json") });
    expect(old.code).toBe(2);
    expect(old.stdout).toContain(
      '"event":"setting-deprecated","setting":"NIXERY_POPULARITY_PATH","use":"NIX_POPULARITY_URL"',
    );
    expect(old.stderr).toContain("Fix NIXERY_POPULARITY_PATH");
  });
});
