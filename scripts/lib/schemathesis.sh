# shellcheck shell=bash
# schemathesis for tests/schemathesis.rs: installs the pinned version of
# tests/schemathesis/requirements.txt into a virtual environment under the
# cargo target directory (Debian's Python refuses `pip install` outside one)
# and exports EDGEQI_SCHEMATHESIS, the path of its `st` command. When it
# cannot be installed (no network, no venv module), prints one `SKIPPED:`
# line and goes on; the test then says it was skipped.
#
# Usage: `source scripts/lib/schemathesis.sh` (scripts/test does).

_edgeqi_st_setup() {
  # Absolute: the tests run with their package's directory as the cwd.
  local target="${CARGO_TARGET_DIR:-target}"
  [[ "$target" = /* ]] || target="$PWD/$target"
  local venv="$target/schemathesis-venv"
  local req=tests/schemathesis/requirements.txt
  local want
  want=$(grep -E '^schemathesis==' "$req" | head -n 1)
  if [ -x "$venv/bin/st" ] && [ "$("$venv/bin/pip" freeze 2>/dev/null | grep -E '^schemathesis==')" = "$want" ]; then
    export EDGEQI_SCHEMATHESIS="$venv/bin/st"
    return 0
  fi
  command -v python3 >/dev/null 2>&1 || ensure_packages python3
  # Debian ships venv (with its own pip) separately from python3.
  python3 -c 'import ensurepip, venv' 2>/dev/null || ensure_packages python3-venv || true
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    echo "SKIPPED: schemathesis: python3 -m venv failed (install python3-venv); the OpenAPI contract run was not done"
    return 0
  fi
  echo "==> installing $want (pip, into $venv)"
  if ! "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >"$venv/pip.log" 2>&1; then
    echo "SKIPPED: schemathesis: pip could not install $want ($(tail -n 1 "$venv/pip.log")); the OpenAPI contract run was not done"
    return 0
  fi
  export EDGEQI_SCHEMATHESIS="$venv/bin/st"
}

_edgeqi_st_setup
