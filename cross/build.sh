#!/usr/bin/env bash
# Cross-compiles an EdgeQI binary (the agent by default) for an ARM edge box.
#
#   cross/build.sh [--cross] [--dry-run] TARGET [extra cargo args…]
#
# TARGET: aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf
#
# Default: host cargo + Debian/Ubuntu cross gcc (gcc-aarch64-linux-gnu,
#          gcc-arm-linux-gnueabihf) + `rustup target add TARGET`.
# --cross: use `cross` (container with the toolchain; needs docker or podman).
# --dry-run: print the environment and the command instead of running them.
#
# Environment: PACKAGE (default edgeqi-agent; edgeqi-aggregator also works),
#              PROFILE (default release).
# Output: target/TARGET/PROFILE/PACKAGE (symbols already stripped by the
#         release profile).
set -euo pipefail

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    exit "${1:-2}"
}

use_cross=0
dry_run=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cross) use_cross=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage 0 ;;
        --) shift; break ;;
        -*) echo "build.sh: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
[[ $# -ge 1 ]] || usage
target="$1"
shift

case "$target" in
    aarch64-unknown-linux-gnu) gcc_prefix=aarch64-linux-gnu; deb_gcc=gcc-aarch64-linux-gnu ;;
    armv7-unknown-linux-gnueabihf) gcc_prefix=arm-linux-gnueabihf; deb_gcc=gcc-arm-linux-gnueabihf ;;
    *)
        echo "build.sh: unsupported target $target" >&2
        echo "          (aarch64-unknown-linux-gnu or armv7-unknown-linux-gnueabihf)" >&2
        exit 2
        ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
package="${PACKAGE:-edgeqi-agent}"
profile="${PROFILE:-release}"
# CC_aarch64_unknown_linux_gnu, CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER, …
target_lower="${target//-/_}"
target_upper="$(printf '%s' "$target_lower" | tr '[:lower:]' '[:upper:]')"

cargo_args=(build --locked --profile "$profile" -p "$package" --target "$target" "$@")

run() {
    if [[ $dry_run -eq 1 ]]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

cd "$repo"

if [[ $use_cross -eq 1 ]]; then
    export CROSS_CONFIG="$here/Cross.toml"
    if [[ $dry_run -eq 0 ]] && ! command -v cross >/dev/null 2>&1; then
        echo "build.sh: cross not found: cargo install cross --locked (and docker or podman)" >&2
        exit 1
    fi
    [[ $dry_run -eq 1 ]] && echo "CROSS_CONFIG=$CROSS_CONFIG"
    run cross "${cargo_args[@]}"
else
    missing=0
    if [[ $dry_run -eq 0 ]]; then
        if ! command -v "$gcc_prefix-gcc" >/dev/null 2>&1; then
            echo "build.sh: $gcc_prefix-gcc not found: apt-get install $deb_gcc" >&2
            missing=1
        fi
        if command -v rustup >/dev/null 2>&1 &&
            ! rustup target list --installed | grep -qx "$target"; then
            echo "build.sh: Rust standard library for $target missing: rustup target add $target" >&2
            missing=1
        fi
        [[ $missing -eq 0 ]] || exit 1
    fi
    # The same settings as cross/cargo-config.toml, as environment variables so
    # they also work with an older cargo and override any user config.
    export "CARGO_TARGET_${target_upper}_LINKER=$gcc_prefix-gcc"
    export "CC_${target_lower}=$gcc_prefix-gcc"
    export "CXX_${target_lower}=$gcc_prefix-g++"
    export "AR_${target_lower}=$gcc_prefix-ar"
    if [[ $dry_run -eq 1 ]]; then
        env | grep -E "^(CARGO_TARGET_${target_upper}_LINKER|(CC|CXX|AR)_${target_lower})=" | sort
    fi
    run cargo "${cargo_args[@]}"
fi

[[ $dry_run -eq 0 ]] || exit 0

bin="$repo/target/$target/$profile/$package"
if [[ "$profile" == dev ]]; then
    bin="$repo/target/$target/debug/$package"
fi
echo
echo "built: $bin ($(du -h "$bin" | cut -f1))"
if command -v file >/dev/null 2>&1; then
    file -b "$bin"
fi
# The newest glibc symbol version the binary needs: the box's glibc must be at
# least that (ldd --version on the box).
objdump="$gcc_prefix-objdump"
command -v "$objdump" >/dev/null 2>&1 || objdump=objdump
if command -v "$objdump" >/dev/null 2>&1; then
    glibc="$("$objdump" -T "$bin" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -n 1 || true)"
    [[ -z "$glibc" ]] || echo "needs glibc >= ${glibc#GLIBC_} on the box"
fi
echo "copy:  scp $bin root@BOX:/usr/local/bin/$package"
