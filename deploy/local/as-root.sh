# Sourced by the local scripts: `as_root CMD…` runs CMD as root (directly, or through sudo
# without a password prompt: a script must not hang waiting for one).
# Expects the sourcing script's `say`.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    say "need root to run: $*"
    return 1
  fi
}
