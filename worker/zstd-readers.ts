// Which clients cannot read zstd layers, told from the User-Agent of their manifest request. The Docker daemon read
// only gzip layers before 23.0: 20.10 pulls a zstd image's manifest and then fails while unpacking its first layer
// with "archive/tar: invalid tar header", which says nothing of why. The registry answers it instead.
import type { ImageRequest } from "../common/image-name.ts";
import { errorResponse } from "./responses.ts";

/** The Docker daemon's own User-Agent starts "docker/<version>" (its CLI's is "Docker-Client/", on another request). */
const DOCKER_DAEMON = /^docker\/(\d+)\.(\d+)/;
/** The first Docker Engine release that unpacks zstd layers. */
const FIRST_DOCKER_WITH_ZSTD = 23;

/** The version of a Docker daemon that cannot read zstd layers, from its User-Agent; else null. */
export function dockerWithoutZstd(userAgent: string | null): string | null {
  const match = DOCKER_DAEMON.exec(userAgent ?? "");
  if (!match || Number(match[1]) >= FIRST_DOCKER_WITH_ZSTD) return null;
  return `${match[1]}.${match[2]}`;
}

/** A 404 for a zstd image asked for by a client that could not unpack it; null when it can. */
export function unreadableZstdResponse(request: Request, name: string, image: ImageRequest): Response | null {
  if (image.compression !== "zstd") return null;
  const docker = dockerWithoutZstd(request.headers.get("User-Agent"));
  if (docker === null) return null;
  // The compression can only be the first component (common/image-name.ts); a later zstd is the program.
  const gzipName = name.split("/").slice(1).join("/");
  return errorResponse(
    request.method,
    404,
    "MANIFEST_UNKNOWN",
    `${name} has zstd layers, which Docker ${docker} cannot unpack (Docker 23 and later can): pull ${gzipName} for the same image with gzip layers`,
    { name, compression: "zstd", docker },
  );
}
