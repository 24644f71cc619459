// `npm run bench:layering`: layering strategies compared on real dependency graphs in seconds, with nothing built.
// The package graph is Debian's archive (bench/debian-graph.ts: dependencies, installed sizes, and popularity as
// reverse-dependency counts); each image of the corpus below is the closure of a few packages, as the builder
// would get it from Nix. Each strategy lays out every image, and the figures are what a registry stores and what
// a client pulls, against the floor: one layer per store path, with no budget. See README "Benchmark".
//
//   npm run bench:layering [-- --budget N] [-- --images]
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { storePathName, type StorePathNode } from "../builder-service/closure.ts";
import { DEFAULT_LAYER_BUDGET, planLayers, topologicalOrder, type LayerGroup } from "../builder-service/layering.ts";
import { popularityOf, type Popularity } from "../builder-service/popularity.ts";
import { imageGraph, loadDebianSet } from "./debian-graph.ts";
import { nixeryLayers } from "./nixery-layering.ts";

/**
 * Images people pull one after another, in that order: small tools first, then applications alone and beside
 * others that share their libraries or the application itself. Every image also gets ca-certificates and netbase,
 * as every image of the registry gets cacert and iana-etc.
 */
export const CORPUS: string[][] = [
  ["curl"],
  ["jq"],
  ["git"],
  ["curl", "git", "jq"],
  ["python3"],
  ["nginx"],
  ["postgresql"],
  ["redis-server"],
  ["nodejs"],
  ["openssh-client", "git"],
  ["imagemagick"],
  ["ffmpeg"],
  ["ffmpeg", "imagemagick"],
  ["vlc"],
  ["ffmpeg", "vlc"],
  ["ffmpeg", "mpv"],
  ["gimp"],
  ["gimp", "inkscape"],
  ["inkscape"],
  ["gimp", "imagemagick"],
  ["libreoffice-writer"],
  ["gimp", "libreoffice-writer"],
  ["libreoffice-calc", "libreoffice-writer"],
  ["emacs"],
  ["emacs", "git"],
  ["texlive"],
  ["pandoc", "texlive"],
  ["emacs", "texlive"],
  ["inkscape", "texlive"],
  ["r-base"],
  ["python3-matplotlib"],
  ["python3-matplotlib", "r-base"],
  ["jupyter-notebook", "python3-matplotlib"],
  ["octave"],
  ["gnuplot", "octave"],
  ["thunderbird"],
  ["firefox-esr", "thunderbird"],
];
const ALWAYS_ADDED = ["ca-certificates", "netbase"];

export interface SimImage {
  name: string;
  topLevel: string[];
  graph: StorePathNode[];
}

export interface Strategy {
  name: string;
  /** Store layers of one image (the root-filesystem layer is added to the count, not to the bytes). */
  layers: (image: SimImage) => LayerGroup[];
}

export interface StrategyFigures {
  /** Bytes of the distinct layers: what the registry stores; also what one client pulling every image in turn downloads. */
  stored: number;
  /** Sum over the corpus of the bytes a client that holds the image before it (only that one) pulls. */
  pullAfterPrevious: number;
  /** The largest image's layer count, root filesystem included. */
  maxLayers: number;
  /** Images with more store paths than the budget allows layers. */
  layersByImage: number[];
}

const key = (layer: LayerGroup) => layer.paths.join("\n");

export function measure(images: readonly SimImage[], layouts: readonly LayerGroup[][]): StrategyFigures {
  const stored = new Map<string, number>();
  let pullAfterPrevious = 0;
  let previous = new Set<string>();
  layouts.forEach((layers) => {
    const keys = new Set<string>();
    for (const layer of layers) {
      const k = key(layer);
      stored.set(k, layer.size);
      if (!previous.has(k) && !keys.has(k)) pullAfterPrevious += layer.size;
      keys.add(k);
    }
    previous = keys;
  });
  const layersByImage = layouts.map((layers) => layers.length + 1);
  return {
    stored: [...stored.values()].reduce((a, b) => a + b, 0),
    pullAfterPrevious,
    maxLayers: Math.max(...layersByImage),
    layersByImage,
  };
}

/** Every layout must hold each store path of its image exactly once. */
function checkLayout(image: SimImage, layers: LayerGroup[], strategy: string): void {
  const paths = layers.flatMap((layer) => layer.paths).sort();
  const expected = image.graph.map((node) => node.path).sort();
  if (paths.length !== expected.length || paths.some((path, i) => path !== expected[i])) {
    throw new Error(`${strategy} does not lay out each store path of ${image.name} exactly once`);
  }
}

/** The layering before issue 16: past the budget, the top paths by popularity x size alone, the rest in one layer. */
export function previousLayers(graph: readonly StorePathNode[], budget: number, popularity?: Popularity): LayerGroup[] {
  const ordered = topologicalOrder(graph);
  const storeLayers = budget - 1;
  if (ordered.length <= storeLayers) return ordered.map((node) => ({ paths: [node.path], size: node.narSize }));
  const weights = popularityOf(graph, popularity);
  const value = (node: StorePathNode) => weights.get(node.path)! * node.narSize;
  const byName = (a: string, b: string) => {
    const [x, y] = [storePathName(a), storePathName(b)];
    if (x !== y) return x < y ? -1 : 1;
    return a < b ? -1 : a > b ? 1 : 0;
  };
  const byValue = [...ordered].sort((a, b) => value(b) - value(a) || byName(a.path, b.path));
  const own = new Set(byValue.slice(0, storeLayers - 1).map((node) => node.path));
  const rest = ordered.filter((node) => !own.has(node.path));
  const groups = ordered
    .filter((node) => own.has(node.path))
    .map((node) => ({ paths: [node.path], size: node.narSize }));
  groups.push({ paths: rest.map((node) => node.path).sort(), size: rest.reduce((sum, node) => sum + node.narSize, 0) });
  return groups;
}

export function strategies(budget: number, popularity: Popularity): Strategy[] {
  return [
    {
      name: "one layer per path, no budget (the floor)",
      layers: (image) => image.graph.map((n) => ({ paths: [n.path], size: n.narSize })),
    },
    {
      name: "before: top paths alone, one tail layer",
      layers: (image) => previousLayers(image.graph, budget, popularity),
    },
    { name: "Nixery's grouping", layers: (image) => nixeryLayers(image.graph, image.topLevel, popularity, budget - 1) },
    { name: "now: groups by co-occurrence", layers: (image) => planLayers(image.graph, budget, popularity) },
    { name: "now, without popularity data", layers: (image) => planLayers(image.graph, budget) },
  ];
}

export function loadCorpus(corpus: string[][] = CORPUS): {
  images: SimImage[];
  popularity: Popularity;
  packages: number;
  sources: string[];
} {
  const set = loadDebianSet();
  const images = corpus.map((packages) => {
    const { topLevel, graph } = imageGraph(set, [...packages, ...ALWAYS_ADDED]);
    return { name: packages.join("/"), topLevel, graph };
  });
  const counts = set.popularity;
  return { images, popularity: (name) => counts.get(name), packages: set.packages, sources: set.sources };
}

const MB = 1e6;
const mb = (bytes: number) => `${Math.round(bytes / MB).toLocaleString("en")} MB`;
const against = (value: number, floor: number) =>
  value === floor ? "floor" : `${value >= floor ? "+" : ""}${((value / floor - 1) * 100).toFixed(2)}%`;

/** --budget N (layers per image) and --images (a line per image); anything else stops the simulation. */
function options(args: string[]): { budget: number; images: boolean } {
  const { values } = parseArgs({
    args,
    options: { budget: { type: "string" }, images: { type: "boolean" } },
    strict: true,
    allowPositionals: false,
  });
  const budget = Number(values.budget ?? DEFAULT_LAYER_BUDGET);
  if (!Number.isInteger(budget) || budget < 2)
    throw new Error(`--budget ${values.budget}: a whole number of layers, at least 2`);
  return { budget, images: values.images === true };
}

function main(): void {
  const { budget, images: perImage } = options(process.argv.slice(2));
  const started = performance.now();
  const { images, popularity, packages, sources } = loadCorpus();
  const loaded = performance.now();
  const over = images.filter((image) => image.graph.length > budget - 1);
  console.log(
    `Debian's archive: ${packages.toLocaleString("en")} packages from ${sources.length} Packages files, read in ${((loaded - started) / 1000).toFixed(1)} s`,
  );
  console.log(
    `Corpus: ${images.length} images, ${over.length} with more store paths than the budget of ${budget} layers (${budget - 1} store layers + root filesystem); ` +
      `store paths per image ${Math.min(...images.map((i) => i.graph.length))}-${Math.max(...images.map((i) => i.graph.length))}\n`,
  );
  const results: { name: string; figures: StrategyFigures; ms: number }[] = [];
  for (const strategy of strategies(budget, popularity)) {
    const t = performance.now();
    const layouts = images.map((image) => strategy.layers(image));
    const ms = performance.now() - t;
    images.forEach((image, i) => checkLayout(image, layouts[i], strategy.name));
    results.push({ name: strategy.name, figures: measure(images, layouts), ms });
  }
  const floor = results[0].figures;
  const width = Math.max(...results.map((r) => r.name.length));
  console.log(
    `${"strategy".padEnd(width)}  ${"stored".padEnd(20)}  ${"pulls, after the previous image".padEnd(32)}  most layers  time`,
  );
  for (const { name, figures, ms } of results) {
    console.log(
      `${name.padEnd(width)}  ${`${mb(figures.stored)} ${against(figures.stored, floor.stored)}`.padEnd(20)}  ` +
        `${`${mb(figures.pullAfterPrevious)} ${against(figures.pullAfterPrevious, floor.pullAfterPrevious)}`.padEnd(32)}  ` +
        `${String(figures.maxLayers).padEnd(11)}  ${ms.toFixed(0)} ms`,
    );
  }
  console.log(
    "\nstored: bytes of the distinct layers of the corpus, which is also what one client pulling every image in turn downloads;" +
      "\npulls: the sum over the corpus of what a client holding only the image before it downloads.",
  );
  if (perImage) {
    console.log(`\n${"image".padEnd(36)} paths  ${results.map((r) => r.name.slice(0, 12).padEnd(12)).join(" ")}`);
    images.forEach((image, i) =>
      console.log(
        `${image.name.padEnd(36)} ${String(image.graph.length).padEnd(5)}  ${results.map((r) => String(r.figures.layersByImage[i]).padEnd(12)).join(" ")}`,
      ),
    );
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) main();
