#!/usr/bin/env bash
# How fast the CLI answers: `envup validate` and `envup status` on a
# 10-machine Envfile, against a raw baseline measured in the same run
# (`cat Envfile`: one process start and one file read). Prints figures and
# ratios; it does not pass or fail. Target: each answers in <= 10 ms.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v hyperfine >/dev/null || scripts/install-deps
cargo build --release --locked -q
bin="$PWD/target/release/envup"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export ENVUP_HOME="$work/home"
{
  echo '[defaults]'
  echo 'box = "debian/bookworm"'
  echo 'backend = "jail"'
  echo 'memory = "512MiB"'
  for i in $(seq 0 9); do
    echo "[machines.node$i]"
    echo "forward = [{ guest = 80, host = $((8000 + i)) }]"
    echo "env = { NODE = \"$i\" }"
    [ "$i" -gt 0 ] && echo "depends_on = [\"node0\"]"
    echo "provision = [{ shell = \"echo node $i\", name = \"hello\" }]"
  done
} > "$work/Envfile"
cd "$work"
"$bin" validate

hyperfine -N --warmup 20 --runs 300 --export-json "$work/r.json" \
  -n baseline "cat Envfile" \
  -n validate "$bin validate" \
  -n status "$bin status" >/dev/null 2>&1

python3 - "$work/r.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
base = r["baseline"]["mean"]
print(f"{'command':<10} {'mean':>9} {'stddev':>9} {'max':>9}  vs baseline  target")
for name in ("baseline", "validate", "status"):
    x = r[name]
    ratio = x["mean"] / base
    target = "" if name == "baseline" else ("<= 10 ms: met" if x["mean"] <= 0.010 else "<= 10 ms: NOT met")
    print(f"{name:<10} {x['mean']*1e3:8.2f}ms {x['stddev']*1e3:8.2f}ms {x['max']*1e3:8.2f}ms  {ratio:10.2f}x  {target}")
print("for scale: `vagrant status` takes about 800 ms on these machines")
PY
