# Shared by scripts/run.sh, scripts/test.sh and scripts/bench.sh: a Python 3.11+ virtualenv in
# .venv, and system packages from Debian's archive when they are missing (as root, or sudo).

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2; return 1; fi
}

apt_install() {
  command -v apt-get >/dev/null || { echo "please install: $*" >&2; return 1; }
  echo "installing $* from Debian's packages" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pick_python() {
  for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
    [ -n "$candidate" ] && command -v "$candidate" >/dev/null || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$candidate"; return 0
    fi
  done
  echo "Python 3.11 or newer is required" >&2; return 1
}

make_venv() {
  local python; python=$(pick_python)
  if ! "$python" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    local version; version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install "python${version}-venv" || apt_install python3-venv
    "$python" -m venv .venv
  fi
}

lock_digest() {  # the lock files given, as one digest
  cat "$@" | sha256sum | cut -d' ' -f1
}

venv_is_from() {  # true when .venv was installed from exactly these lock files
  [ -x .venv/bin/python ] && [ "$(cat .venv/.locked 2>/dev/null)" = "$(lock_digest "$@")" ]
}

venv_has() {  # .venv has these locks: installed from them, or from the test lock, a superset
  venv_is_from "$@" && return 0  # of the gateway's own (run.lock, build.lock) at its versions
  [ "$*" = "requirements/run.lock requirements/build.lock" ] && venv_is_from requirements/test.lock
}

install_locked() {
  # .venv holds exactly what the lock files given pin, hashes checked, nothing resolved and
  # nothing else (uv removes what they do not name), and the gateway itself, editable, built
  # with the locked setuptools. uv comes first, from its own lock, through the virtualenv's pip
  # (PIP_CONSTRAINT: a machine's own pip constraints may name packages the lock does not have).
  venv_has "$@" && return 0
  # One install at a time (the quickstart starts the fake Nomic and the gateway together).
  local guard; exec {guard}>.venv.install-lock
  flock "$guard"
  if venv_has "$@"; then exec {guard}>&-; return 0; fi
  [ -x .venv/bin/python ] || make_venv
  rm -f .venv/.locked
  PIP_CONSTRAINT='' .venv/bin/python -m pip install -q --disable-pip-version-check \
    --require-hashes --no-deps --requirement requirements/installer.lock
  .venv/bin/uv pip sync -q --python .venv/bin/python --require-hashes \
    requirements/installer.lock "$@"
  .venv/bin/uv pip install -q --python .venv/bin/python --no-deps --no-build-isolation \
    --editable .
  lock_digest "$@" > .venv/.locked
  exec {guard}>&-
}

ensure_venv() {  # the gateway's own locks (run.sh)
  install_locked requirements/run.lock requirements/build.lock
}

ensure_test_venv() {
  install_locked requirements/test.lock
}

install_for_tests() {
  # The test extras, and what both the suite and the benchmark start: redis-server, wrk, nginx
  # (the benchmark's caching-proxy row; it runs its own, configured in a temporary folder;
  # where apt starts services, Debian's package also starts a system nginx on port 80).
  ensure_test_venv
  command -v redis-server >/dev/null || apt_install redis-server
  command -v wrk >/dev/null || apt_install wrk
  command -v taskset >/dev/null || apt_install util-linux
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install nginx
  # the console's browser tests: Debian's chromium and its chromedriver, driven by selenium
  command -v chromium >/dev/null && command -v chromedriver >/dev/null || apt_install chromium chromium-driver
}
