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

ensure_venv() {
  if [ ! -x .venv/bin/python ]; then
    local python; python=$(pick_python)
    if ! "$python" -m venv .venv 2>/dev/null; then
      rm -rf .venv
      local version; version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
      apt_install "python${version}-venv" || apt_install python3-venv
      "$python" -m venv .venv
    fi
    .venv/bin/python -m pip install -q --upgrade pip
  fi
}

install_for_tests() {
  # The test extras, and what both the suite and the benchmark start: redis-server, wrk, nginx
  # (the benchmark's caching-proxy row; it runs its own, configured in a temporary folder;
  # where apt starts services, Debian's package also starts a system nginx on port 80).
  ensure_venv
  .venv/bin/python -m pip install -q -e '.[test]'
  command -v redis-server >/dev/null || apt_install redis-server
  command -v wrk >/dev/null || apt_install wrk
  command -v taskset >/dev/null || apt_install util-linux
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install nginx
}
