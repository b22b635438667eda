# shellcheck shell=bash disable=SC2034
# Shared helpers for scripts/test and scripts/bench. Source it; do not run it.
#
#   ATTNKIT_ROOT                 the repository root (from this file's location)
#   attnkit_ensure_packages P..  installs the Debian packages among P.. that are missing
#   attnkit_log MSG..            prints "==> MSG" to stderr
#   attnkit_fmt_secs N           formats N seconds as 1m23s
#
# Environment: JOBS (parallel build jobs, default 2), ATTNKIT_NO_INSTALL=1 (never run
# apt-get; fail instead if something is missing).

ATTNKIT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JOBS="${JOBS:-2}"

# What every build needs: compilers, CMake, the library's dependency (xsimd) and what the
# tests, benchmarks and examples use. nm/c++filt/objdump (binutils) for the ODR tests.
ATTNKIT_BASE_PACKAGES=(cmake make g++ binutils libxsimd-dev libeigen3-dev catch2 libbenchmark-dev)

attnkit_log() { printf '==> %s\n' "$*" >&2; }

attnkit_fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# attnkit_ensure_packages pkg...: checks each package with dpkg-query and installs only the
# missing ones, with one `apt-get update && apt-get install`.
attnkit_ensure_packages() {
  local missing=() p status
  if ! command -v dpkg-query >/dev/null 2>&1; then
    attnkit_log "dpkg-query not found: not a Debian system, assuming the tools are installed"
    return 0
  fi
  for p in "$@"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
    [[ "$status" == installed ]] || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  if [[ "${ATTNKIT_NO_INSTALL:-0}" == 1 ]]; then
    attnkit_log "missing Debian packages: ${missing[*]} (ATTNKIT_NO_INSTALL=1, not installing)"
    return 1
  fi
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      attnkit_log "missing Debian packages: ${missing[*]}; not root and no sudo"
      return 1
    fi
  fi
  attnkit_log "installing missing Debian packages: ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}
