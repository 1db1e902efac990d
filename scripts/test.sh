#!/usr/bin/env bash
# Quickstart, command 2: install FedShape with its dev tools and run lint, types and tests.
# As root it also installs the Debian tools the network-namespace tests use (iproute2, nftables,
# iperf3, tcpdump, ethtool), promtool (Debian's prometheus package, about 20 s to install) for the
# exposition lint test, and the compiler that builds the simulator's C++ kernel (g++).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  command -v ip >/dev/null || need+=(iproute2)
  command -v nft >/dev/null || need+=(nftables)
  command -v iperf3 >/dev/null || need+=(iperf3)
  command -v tcpdump >/dev/null || need+=(tcpdump)
  command -v ethtool >/dev/null || need+=(ethtool)
  command -v g++ >/dev/null || need+=(g++)
  if [ ${#need[@]} -gt 0 ]; then
    echo "[test] apt-get install ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  if ! command -v promtool >/dev/null; then
    # promtool ships in Debian's prometheus package (19 MB, 17 s to install here); without recommends, so no node exporter.
    echo "[test] apt-get install prometheus (promtool)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  fi
fi
bash scripts/setup.sh dev
. .venv/bin/activate
echo "[test] ruff"
ruff check .
echo "[test] mypy"
mypy shaping fed_client fed_server experiments
echo "[test] pytest"
set +e
python -m pytest -q "$@"
rc=$?
set -e
# pytest exits 5 when it collected no tests: that is a failure of the suite, not a pass.
if [ "$rc" = 5 ]; then
  echo "[test] pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
