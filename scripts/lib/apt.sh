# shellcheck shell=bash
# ensure_packages PKG... — installs the Debian/Ubuntu packages that are missing,
# running `apt-get update` at most once per run. Needs root (or sudo).
_edgeqi_apt_updated=""

_edgeqi_sudo() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_packages() {
  local missing=()
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> installing: ${missing[*]}"
  if [ -z "$_edgeqi_apt_updated" ]; then
    _edgeqi_sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    _edgeqi_apt_updated=1
  fi
  # policy-rc.d keeps package post-install scripts from starting system
  # services (Mosquitto on 1883, say) that would collide with ours.
  local policy=/usr/sbin/policy-rc.d created_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | _edgeqi_sudo tee "$policy" >/dev/null
    _edgeqi_sudo chmod +x "$policy"
    created_policy=1
  fi
  _edgeqi_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -n "$created_policy" ] && _edgeqi_sudo rm -f "$policy"
  return 0
}

# ensure_rust — cargo must exist; it cannot be fetched here, so say how to get it.
ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found. Install Rust 1.89 or newer (https://rustup.rs), then run this again." >&2
    exit 1
  fi
}
