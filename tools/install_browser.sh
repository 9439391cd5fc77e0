#!/usr/bin/env bash
# Debian's chromium and chromedriver, which the explore page's browser tests drive (tests/test_explore_browser.py;
# nothing downloads a browser at run time). Needs root or password-less sudo; exits 1 where it cannot install them.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo -n"
fi
echo "installing Debian's chromium and chromium-driver for the browser tests (apt)"
export DEBIAN_FRONTEND=noninteractive
if $sudo apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; then
    exit 0
fi
echo "could not install chromium and chromium-driver (apt needs root): the browser tests will be skipped" >&2
exit 1
