#!/usr/bin/env bash
# What running a backend as a plugin costs:
# - one plugin request, envup against the raw spawn of the same no-op
#   plugin, measured in the same run (cargo bench --bench plugin_call);
#   target: envup adds <= 5 ms per request;
# - `up` of tiny to provisioned through the libvirt plugin against the qemu
#   backend, on the same box, interleaved (median of ROUNDS, under TCG);
#   libvirt's own daemon and domain set-up are in the plugin's figure.
# Needs root, libvirtd (started here when none answers, stopped after).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench plugin_call -q 2>/dev/null | grep -v '^$' || cargo bench --bench plugin_call
[ "$(id -u)" = 0 ] || { echo "plugin up bench skipped: needs root"; exit 0; }
command -v libvirtd >/dev/null || { echo "plugin up bench skipped: libvirtd is missing (apt-get install libvirt-daemon-system)"; exit 0; }
cargo build --release --locked -q
bin="$PWD/target/release/envup"
work=$(mktemp -d /var/tmp/envup-pbench-XXXX)
export ENVUP_HOME="$work/home" ENVUP_PLUGIN_PATH="$PWD/target/release"
ROUNDS=${ROUNDS:-3}
started=()
cleanup() {
  for d in "$work"/p-*; do [ -f "$d/Envfile" ] && (cd "$d" && "$bin" -q destroy -f >/dev/null 2>&1 || true); done
  for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
if ! virsh -c qemu:///system version --daemon >/dev/null 2>&1; then
  virtlogd >/dev/null 2>&1 & started+=($!)
  libvirtd >/dev/null 2>&1 & started+=($!)
  for _ in $(seq 100); do virsh -c qemu:///system version --daemon >/dev/null 2>&1 && break; sleep 0.2; done
fi
"$bin" -q box build tiny -o "$work/tiny.box"
"$bin" -q box add "$work/tiny.box"
now() { date +%s.%N; }
median() { python3 -c "import sys, statistics; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
ms() { python3 -c "import sys; print(f'{float(sys.argv[1])*1000:7.0f} ms')" "$1"; }
for b in qemu libvirt; do
  mkdir -p "$work/p-$b"
  printf '[project]\nnetwork = "none"\n[machines.m]\nbox = "tiny"\nbackend = "%s"\nmemory = "256MiB"\nprovision = [{ shell = "true", run = "always" }]\n' "$b" > "$work/p-$b/Envfile"
done
qemus=(); plugins=()
for r in $(seq 1 "$ROUNDS"); do
  for b in qemu libvirt; do
    cd "$work/p-$b"; t0=$(now); "$bin" -q up; t1=$(now); "$bin" -q destroy -f; cd - >/dev/null
    t=$(python3 -c "print($t1-$t0)")
    if [ "$b" = qemu ]; then qemus+=("$t"); else plugins+=("$t"); fi
  done
done
q=$(median "${qemus[@]}"); p=$(median "${plugins[@]}")
echo "runs (s): qemu ${qemus[*]}; libvirt plugin ${plugins[*]}" >&2
echo "tiny, up to provisioned under TCG, median of $ROUNDS:"
echo "  qemu backend (built in)            $(ms "$q")"
echo "  libvirt plugin (qemu:///system)    $(ms "$p")   ratio $(python3 -c "print(f'{$p/$q:.2f}x')")"
