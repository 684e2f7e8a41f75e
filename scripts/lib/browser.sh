# shellcheck shell=bash
# Browser tests (tests/dashboard.rs driving tests/browser/dashboard.mjs):
# Debian's Chromium and Node.js from apt, playwright-core from npm (no browser
# download: the tests use /usr/bin/chromium). Idempotent; meant for a fresh
# Debian 12 as root (or with sudo), sourced by scripts/test:
#
#     source scripts/lib/browser.sh     # installs what is missing, runs `npm ci`
#
# Afterwards `cargo test -p edgeqi-e2e --test dashboard` can run. Exports
# CHROMIUM (the browser the test drives). EDGEQI_SKIP_BROWSER=1 skips both the
# set-up here and the test. Needs scripts/lib/apt.sh (ensure_packages).

_edgeqi_browser_log() { echo "browser.sh: $*" >&2; }

edgeqi_browser_setup() {
    if [ -n "${EDGEQI_SKIP_BROWSER:-}" ]; then
        _edgeqi_browser_log "EDGEQI_SKIP_BROWSER is set: not installing Chromium"
        return 0
    fi
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    if ! declare -F ensure_packages >/dev/null; then
        # shellcheck source=scripts/lib/apt.sh
        source "$root/scripts/lib/apt.sh"
    fi
    # chromium: the headless browser; fonts-liberation: readable text in screenshots;
    # nodejs + npm: playwright-core runs on Node (18 or newer; Debian 12 has 18).
    local pkgs=(chromium fonts-liberation)
    command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
    command -v npm >/dev/null 2>&1 || pkgs+=(npm)
    ensure_packages "${pkgs[@]}" || return 1
    export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
    if [ ! -x "$CHROMIUM" ]; then
        _edgeqi_browser_log "no Chromium at $CHROMIUM"
        return 1
    fi
    # npm ci only when the lock file changed since the last install.
    local dir="$root/tests/browser" stamp="$root/tests/browser/node_modules/.edgeqi-lock"
    if [ ! -f "$stamp" ] || ! cmp -s "$dir/package-lock.json" "$stamp"; then
        _edgeqi_browser_log "npm ci in tests/browser"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || return 1
        cp "$dir/package-lock.json" "$stamp"
    fi
}

edgeqi_browser_setup
