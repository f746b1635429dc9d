#!/usr/bin/env bash
# Builds doorless's release artifacts for ONE architecture (the host's): the thing
# .github/workflows/release.yml runs on each architecture's runner, and what anyone can run
# locally from a checkout.
#
#   deploy/release/build.sh [STEP...]     STEP: binaries, addon, images, manifest (default:
#                                          binaries addon images)
#
#   binaries  cargo build --release of doorless-edge and doorless-connector; copies them to
#             dist/doorless-{edge,connector}-VERSION-linux-ARCH, each with a .sha256 beside it
#             (sha256sum format: `sha256sum -c FILE.sha256` checks it).
#   addon     assembles dist/addon/doorless-connector: the add-on folder with the workspace
#             sources under source/ and config.yaml without `image:`, i.e. a local add-on that
#             the Supervisor (or `docker build`) builds from source with that folder as the
#             only build context.
#   images    docker builds (needs the addon step): ghcr.io/OWNER/doorless-edge:VERSION-ARCH,
#             ghcr.io/OWNER/doorless-connector:VERSION-ARCH and the add-on image
#             ghcr.io/OWNER/doorless-connector-addon-ARCH:VERSION. Skipped, with a note, when
#             docker is not installed. PUSH=1 pushes them.
#   manifest  PUSH=1 only, after every architecture's images were pushed: the multi-arch
#             tags ghcr.io/OWNER/doorless-{edge,connector}:VERSION (docker buildx imagetools).
#
# One version source: `[workspace.package] version` in Cargo.toml. The add-on's config.yaml
# must carry the same version (crates/deploy-tests checks it; this script refuses otherwise).
# One place names the image owner: the `image:` key of the add-on's config.yaml
# (ghcr.io/OWNER/doorless-connector-addon-{arch}); every image name is derived from it.
#
# Environment: DIST (default dist), CARGO (default cargo), CARGO_BUILD_JOBS (default 2),
# PUSH (1 to push images), ARCHES (manifest step; default "amd64 aarch64").
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${root}"
addon_src="deploy/ha-addon/doorless-connector"
dist="${DIST:-dist}"
cargo="${CARGO:-cargo}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

die() {
    echo "build.sh: $*" >&2
    exit 1
}

# The workspace version: the first `version = "…"` after `[workspace.package]`.
version="$(awk '
    /^\[/ { section = $0 }
    section == "[workspace.package]" && $1 == "version" { gsub(/"/, "", $3); print $3; exit }
' Cargo.toml)"
[[ "${version}" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "no [workspace.package] version in Cargo.toml"
# A top-level YAML scalar, quoted or not.
yaml_key() {
    sed -nE "s/^$1:[[:space:]]*\"?([^\"[:space:]]+)\"?[[:space:]]*\$/\1/p" "${addon_src}/config.yaml"
}
addon_version="$(yaml_key version)"
[[ "${addon_version}" == "${version}" ]] ||
    die "${addon_src}/config.yaml has version ${addon_version}, the workspace ${version}"

# ghcr.io/OWNER/doorless-connector-addon-{arch} -> ghcr.io/OWNER
addon_image="$(yaml_key image)"
[[ "${addon_image}" == */doorless-connector-addon-\{arch\} ]] ||
    die "${addon_src}/config.yaml: image must be REGISTRY/OWNER/doorless-connector-addon-{arch}"
prefix="${addon_image%/doorless-connector-addon-\{arch\}}"

case "$(uname -m)" in
    x86_64 | amd64) arch=amd64 ;;
    aarch64 | arm64) arch=aarch64 ;;
    *) die "unsupported architecture $(uname -m) (release artifacts exist for amd64 and aarch64)" ;;
esac

binaries() {
    echo "== binaries ${version} linux-${arch}"
    "${cargo}" build --release --locked -p edge -p connector
    mkdir -p "${dist}"
    local bin out
    for bin in doorless-edge doorless-connector; do
        out="${bin}-${version}-linux-${arch}"
        install -m 0755 "target/release/${bin}" "${dist}/${out}"
        # sha256sum format, relative name: `cd dist && sha256sum -c FILE.sha256`.
        (cd "${dist}" && sha256sum "${out}" >"${out}.sha256")
        echo "${dist}/${out} $(cut -d' ' -f1 "${dist}/${out}.sha256")"
    done
}

addon() {
    local out="${dist}/addon/doorless-connector"
    echo "== add-on folder ${out}"
    rm -rf "${out}"
    mkdir -p "${out}/source"
    # The add-on's own files, except the manifest's `image:` line: without it the Supervisor
    # builds the Dockerfile in the folder instead of pulling the image.
    local f
    for f in "${addon_src}"/* "${addon_src}"/.[!.]*; do
        [[ -e "${f}" ]] || continue
        cp -R "${f}" "${out}/"
    done
    {
        echo "# Assembled by deploy/release/build.sh: no \`image:\` here, so the Supervisor builds the"
        echo "# Dockerfile beside this file from source/ (the doorless workspace at version ${version})."
        grep -v '^image:' "${addon_src}/config.yaml"
    } >"${out}/config.yaml"
    # The workspace sources: tracked files only (no target/, nothing untracked) when this is a
    # git checkout, else the directories themselves without target/.
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files -z -- Cargo.toml Cargo.lock crates tests |
            xargs -0 -I{} cp --parents -- {} "${out}/source/"
    else
        tar --exclude=target -cf - Cargo.toml Cargo.lock crates tests | tar -xf - -C "${out}/source"
    fi
}

images() {
    if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
        echo "== images: skipped (no docker daemon here)"
        return 0
    fi
    [[ -f "${dist}/addon/doorless-connector/Dockerfile" ]] || die "run the addon step first"
    echo "== images ${prefix} ${version} ${arch}"
    local edge="${prefix}/doorless-edge:${version}-${arch}"
    local connector="${prefix}/doorless-connector:${version}-${arch}"
    local addon_tag="${prefix}/doorless-connector-addon-${arch}:${version}"
    docker build -f deploy/container/Dockerfile.edge -t "${edge}" .
    docker build -f deploy/container/Dockerfile.connector -t "${connector}" .
    docker build --build-arg "BUILD_VERSION=${version}" --build-arg "BUILD_ARCH=${arch}" \
        -t "${addon_tag}" "${dist}/addon/doorless-connector"
    if [[ "${PUSH:-0}" == 1 ]]; then
        docker push "${edge}"
        docker push "${connector}"
        docker push "${addon_tag}"
    fi
}

manifest() {
    [[ "${PUSH:-0}" == 1 ]] || die "manifest combines pushed images: set PUSH=1"
    local name a sources
    for name in doorless-edge doorless-connector; do
        sources=()
        for a in ${ARCHES:-amd64 aarch64}; do
            sources+=("${prefix}/${name}:${version}-${a}")
        done
        echo "== manifest ${prefix}/${name}:${version} from ${sources[*]}"
        docker buildx imagetools create -t "${prefix}/${name}:${version}" "${sources[@]}"
    done
}

steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(binaries addon images)
for step in "${steps[@]}"; do
    case "${step}" in
        binaries | addon | images | manifest) "${step}" ;;
        version) echo "${version}" ;;
        prefix) echo "${prefix}" ;;
        *) die "unknown step ${step} (binaries, addon, images, manifest, version, prefix)" ;;
    esac
done
