// Issue: real clients pull from the registry, each getting the manifest flavour it asked for, and the digest a
// client reports is the registry's Docker-Content-Digest.
//
// skopeo and podman talk to the stack as started (its TCP front answers a TLS hello with a plain HTTP 400, and
// they fall back to http). The docker CLI goes through a recording front (test/support/recording-front.ts),
// which answers TLS the same way and also tells which Accept header each client sends.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DOCKER_MANIFEST, OCI_MANIFEST } from "../common/media-types.ts";
import type { ImageManifest } from "../common/oci.ts";
import { startRecordingFront, type RecordingFront } from "./support/recording-front.ts";
import { podmanRun, podmanStorage, run, startTestStack, type TestStack } from "./support/stack.ts";

let stack: TestStack;
let recorder: RecordingFront;

const hasDocker = spawnSync("sh", ["-c", "command -v docker"], { stdio: "ignore" }).status === 0;

interface Served {
  digest: string;
  mediaType: string;
  contentLength: string;
}

/** What the registry answers to HEAD and GET of a manifest with this Accept: both must agree. */
async function registryManifest(reference: string, accept: string | undefined): Promise<Served> {
  const url = `${stack.registryUrl}/v2/${reference.replace(":", "/manifests/")}`;
  const headers: Record<string, string> = accept ? { Accept: accept } : {};
  const head = await fetch(url, { method: "HEAD", headers });
  const get = await fetch(url, { headers });
  const body = await get.text();
  expect(head.status).toBe(200);
  expect(get.status).toBe(200);
  const served = {
    digest: get.headers.get("docker-content-digest")!,
    mediaType: get.headers.get("content-type")!,
    contentLength: get.headers.get("content-length")!,
  };
  expect({
    digest: head.headers.get("docker-content-digest"),
    mediaType: head.headers.get("content-type"),
    contentLength: head.headers.get("content-length"),
  }).toEqual(served);
  expect(served.contentLength).toBe(String(Buffer.byteLength(body)));
  expect((JSON.parse(body) as ImageManifest).mediaType).toBe(served.mediaType);
  return served;
}

/** The Accept header a client (by User-Agent prefix) sent for its last manifest request through the recorder. */
function acceptSentBy(userAgentPrefix: string): string {
  const requests = recorder.manifestRequests(userAgentPrefix);
  expect(requests.length, `${userAgentPrefix} asked for a manifest through the recording front`).toBeGreaterThan(0);
  return requests[requests.length - 1].accept ?? "";
}

/** What skopeo asks for, found out rather than assumed: a `skopeo inspect --raw` through the recording front. */
async function skopeoAccept(): Promise<string> {
  if (recorder.manifestRequests("skopeo/").length === 0) {
    await run("skopeo", ["inspect", "--raw", "--tls-verify=false", `docker://${recorder.host}/hello:latest`]);
  }
  return acceptSentBy("skopeo/");
}

const listed = (accept: string): string[] => accept.split(",").map((t) => t.split(";")[0].trim());

beforeAll(async () => {
  stack = await startTestStack();
  recorder = await startRecordingFront(stack.registryUrl);
});

afterAll(async () => {
  await recorder?.close();
  await stack?.stop();
});

describe("skopeo", () => {
  it("inspects hello: its digest is the registry's Docker-Content-Digest for skopeo's Accept, on HEAD and GET", async () => {
    const inspected = JSON.parse(
      (await run("skopeo", ["inspect", "--tls-verify=false", `docker://${stack.registryHost}/hello:latest`])).stdout,
    ) as { Digest: string; RepoTags: string[]; Architecture: string; Os: string; Layers: string[] };

    const accept = await skopeoAccept();
    expect(listed(accept)).toContain(OCI_MANIFEST);
    expect(listed(accept)).toContain(DOCKER_MANIFEST);

    const served = await registryManifest("hello:latest", accept);
    expect(served.mediaType).toBe(OCI_MANIFEST); // it lists OCI: it gets OCI
    expect(inspected.Digest).toBe(served.digest);
    expect(inspected.RepoTags).toContain("latest");
    expect(inspected.Architecture).toBe("amd64");
    expect(inspected.Os).toBe("linux");
    expect(inspected.Layers.length).toBeGreaterThan(0);
  });

  it("reads the raw manifest byte for byte (inspect --raw)", async () => {
    const raw = (
      await run("skopeo", ["inspect", "--raw", "--tls-verify=false", `docker://${stack.registryHost}/hello:latest`])
    ).stdout;
    const manifest = JSON.parse(raw) as ImageManifest;
    expect(manifest.mediaType).toBe(OCI_MANIFEST);
    const served = await registryManifest("hello:latest", await skopeoAccept());
    expect(`sha256:${createHash("sha256").update(raw).digest("hex")}`).toBe(served.digest);
  });

  it("copies hello into an OCI layout, keeping the registry's manifest digest and every blob", async () => {
    const layout = join(await mkdtemp(join(stack.scratch, "skopeo-")), "oci");
    await run("skopeo", [
      "copy",
      "--src-tls-verify=false",
      `docker://${stack.registryHost}/hello:latest`,
      `oci:${layout}:hello`,
    ]);
    const index = JSON.parse(await readFile(join(layout, "index.json"), "utf8")) as {
      manifests: { mediaType: string; digest: string; annotations?: Record<string, string> }[];
    };
    expect(index.manifests).toHaveLength(1);
    const [entry] = index.manifests;
    expect(entry.annotations?.["org.opencontainers.image.ref.name"]).toBe("hello");
    // skopeo copy to oci: prefers OCI, so the manifest is copied as is, with the digest the registry serves.
    const served = await registryManifest("hello:latest", await skopeoAccept());
    expect(entry.mediaType).toBe(OCI_MANIFEST);
    expect(entry.digest).toBe(served.digest);
    const manifest = JSON.parse(
      await readFile(join(layout, "blobs/sha256", entry.digest.slice(7)), "utf8"),
    ) as ImageManifest;
    for (const blob of [manifest.config, ...manifest.layers]) {
      const bytes = await readFile(join(layout, "blobs/sha256", blob.digest.slice(7)));
      expect(bytes.byteLength).toBe(blob.size);
    }
  });

  it("lists the tags", async () => {
    const { stdout } = await run("skopeo", ["list-tags", "--tls-verify=false", `docker://${stack.registryHost}/hello`]);
    const listing = JSON.parse(stdout) as { Repository: string; Tags: string[] };
    expect(listing.Repository).toBe(`${stack.registryHost}/hello`);
    expect(listing.Tags).toEqual(["latest"]);
  });
});

describe("podman", () => {
  it("pulls hello and runs it (runc), reporting the registry's digest for the flavour it got", async () => {
    const dir = await mkdtemp(join(stack.scratch, "podman-"));
    // Its own storage, so it touches nothing of the machine's.
    const podman = podmanStorage(dir);
    const image = `${stack.registryHost}/hello`;
    const { stdout } = await podmanRun(dir, image, ["hello"]);
    expect(stdout).toBe("Hello, world!\n");

    const [digest, manifestType] = (
      await run("podman", [...podman, "image", "inspect", image, "--format", "{{.Digest}} {{.ManifestType}}"])
    ).stdout
      .trim()
      .split(" ");
    // podman (containers/image, like skopeo) lists the OCI type first among the ones it accepts: it gets OCI.
    expect(manifestType).toBe(OCI_MANIFEST);
    const served = await registryManifest("hello:latest", manifestType);
    expect(digest).toBe(served.digest);
  });
});

describe("docker CLI", () => {
  it.skipIf(!hasDocker)(
    hasDocker
      ? "reads hello with `docker manifest inspect --insecure`, getting the flavour its Accept asks for, at the registry's digest"
      : "docker manifest inspect (skipped: no docker CLI on PATH on this machine)",
    async () => {
      // A config folder of its own, so the user's ~/.docker is neither read nor written.
      const config = await mkdtemp(join(stack.scratch, "docker-config-"));
      const reference = `${recorder.host}/hello:latest`;
      const docker = (args: string[]) => run("env", [`DOCKER_CONFIG=${config}`, "docker", ...args], 60_000);

      const plain = JSON.parse(
        (await docker(["manifest", "inspect", "--insecure", reference])).stdout,
      ) as ImageManifest;
      const verbose = JSON.parse(
        (await docker(["manifest", "inspect", "--insecure", "--verbose", reference])).stdout,
      ) as {
        Descriptor: { mediaType: string; digest: string; size: number };
      };

      const accept = acceptSentBy("Docker-Client/");
      expect(listed(accept)).toContain(DOCKER_MANIFEST);
      // Today's docker CLI lists the OCI manifest type too, so OCI is the flavour it asked for; a docker that
      // listed only the Docker types would get the Docker variant (test/protocol.test.ts checks that).
      const expected = listed(accept).includes(OCI_MANIFEST) ? OCI_MANIFEST : DOCKER_MANIFEST;
      const served = await registryManifest("hello:latest", accept);
      expect(served.mediaType).toBe(expected);
      expect(plain.mediaType).toBe(expected);
      expect(verbose.Descriptor.mediaType).toBe(expected);
      expect(verbose.Descriptor.digest).toBe(served.digest);
      expect(String(verbose.Descriptor.size)).toBe(served.contentLength);
    },
  );
});
