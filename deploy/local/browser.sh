#!/usr/bin/env bash
# Makes sure the console's browser tests (tests/it/console.rs) can run: Chromium (Debian's
# package, /usr/bin/chromium unless CHROMIUM names another), Node.js 20 or later, and Playwright
# (playwright-core, the version tests/console/package-lock.json pins; it drives that Chromium
# and downloads no browser). Installs what is missing; safe to run any number of times.
#
# Where the system's Node.js is older than 20 (Debian 12 ships 18), Node.js 20 is fetched from
# the npm registry (the `node-linux-*` packages) into .local/node, where the tests look first.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { printf '[browser] %s\n' "$*" >&2; }
# shellcheck source=deploy/local/as-root.sh
. deploy/local/as-root.sh

missing=()
chromium=${CHROMIUM:-/usr/bin/chromium}
[ -x "$chromium" ] || missing+=(chromium fonts-dejavu-core)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    say "missing: ${missing[*]} — install them (or set CHROMIUM to a Chromium's path)"
    exit 1
  fi
  say "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ ! -x "$chromium" ]; then
  say "no Chromium at $chromium after installing it: set CHROMIUM to its path"
  exit 1
fi

node=node
major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
if [ "$(major node)" -lt 20 ]; then
  node=.local/node/bin/node
  if [ ! -x "$node" ] || [ "$(major "$node")" -lt 20 ]; then
    case "$(uname -m)" in x86_64) arch=x64 ;; aarch64 | arm64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
    say "Node.js $(node --version 2>/dev/null || echo 'missing') is older than 20: fetching Node.js 20 into .local/node"
    rm -rf .local/node && mkdir -p .local/node
    (cd .local/node && npm pack --silent "node-linux-$arch@20" >/dev/null && tar xzf node-linux-*.tgz --strip-components=1 && rm node-linux-*.tgz)
  fi
fi

# npm ci when the pinned Playwright is not the one installed.
pinned=$("$node" -p "require('./tests/console/package.json').dependencies['playwright-core']")
installed=$("$node" -p "try { require('./tests/console/node_modules/playwright-core/package.json').version } catch { '' }")
if [ "$pinned" != "$installed" ]; then
  say "installing Playwright $pinned (npm ci in tests/console)"
  npm ci --prefix tests/console --no-audit --no-fund --loglevel=error
fi
say "$("$chromium" --version 2>/dev/null), Node.js $("$node" --version) ($node), Playwright $pinned"
