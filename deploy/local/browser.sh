#!/usr/bin/env bash
# Makes sure the console's browser tests can run: Chromium (Debian's package, at /usr/bin/chromium
# unless CHROMIUM names another), Node.js with npm, and Playwright (playwright-core, the version
# tests/console/package-lock.json pins, which drives that Chromium and downloads no browser).
# Installs what is missing; safe to run any number of times.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { printf '[browser] %s\n' "$*" >&2; }
# shellcheck source=deploy/local/as-root.sh
. deploy/local/as-root.sh

apt_install() {
  say "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

chromium=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    apt_install chromium fonts-dejavu-core
  else
    say "no Chromium at $chromium: install it, or set CHROMIUM to its path"
    exit 1
  fi
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    apt_install nodejs npm
  else
    say "Node.js and npm are missing: install them"
    exit 1
  fi
fi

# npm ci when the pinned Playwright is not the one installed.
pinned=$(node -p "require('./tests/console/package.json').dependencies['playwright-core']")
installed=$(node -p "try { require('./tests/console/node_modules/playwright-core/package.json').version } catch { '' }")
if [ "$pinned" != "$installed" ]; then
  say "installing Playwright $pinned (npm ci in tests/console)"
  npm ci --prefix tests/console --no-audit --no-fund --loglevel=error
fi
say "$("$chromium" --version 2>/dev/null), Node.js $(node --version), Playwright $pinned"
