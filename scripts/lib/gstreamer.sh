# shellcheck shell=bash
# Installs what the agent's GStreamer sources (cargo feature `gstreamer`, on by
# default) need to build and run: headers for gstreamer-rs, the RTSP server
# library the tests use, and the decoders/demuxers for rtsp://, file:// and
# v4l2://. Meant to be sourced by scripts/test on a fresh Debian 12 as root.
# Idempotent: does nothing when everything is already present. Quiet unless it fails.

edgeqi_gstreamer_packages=(
    pkg-config
    libglib2.0-dev
    libgstreamer1.0-dev
    libgstreamer-plugins-base1.0-dev
    libgstrtspserver-1.0-dev
    gstreamer1.0-plugins-base
    gstreamer1.0-plugins-good
    gstreamer1.0-plugins-bad
    gstreamer1.0-plugins-ugly
    gstreamer1.0-libav
    gstreamer1.0-rtsp
    gstreamer1.0-tools
)

edgeqi_install_gstreamer() {
    local missing=() pkg
    for pkg in "${edgeqi_gstreamer_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    local log
    log="$(mktemp)"
    # Other installers may hold the dpkg lock: wait for it instead of failing.
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -qq)
    if ! { $sudo dpkg --configure -a && $sudo "${apt[@]}" update &&
        $sudo "${apt[@]}" install --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "gstreamer.sh: failed to install: ${missing[*]}" >&2
        return 1
    fi
    rm -f "$log"
}

edgeqi_install_gstreamer
