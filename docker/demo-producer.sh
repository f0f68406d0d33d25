#!/bin/sh
# Demo load for docker/compose.yaml: every INTERVAL seconds, generate a batch
# of the paper's Gaussian mixture (d=25, k=5), send it with
# `stream-unlearn produce`, then delete a random 5% of it. Every 10th round
# also sends one malformed record, so the dead-letter panels show something.
set -eu
BOOTSTRAP="${BOOTSTRAP:-kafka:9092}"
INSERT_TOPIC="${INSERT_TOPIC:-unlearn.inserts}"
DELETE_TOPIC="${DELETE_TOPIC:-unlearn.deletes}"
BATCH="${BATCH:-1000}"
INTERVAL="${INTERVAL:-5}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
round=0
while :; do
  python - "$round" "$BATCH" "$WORK" <<'PY'
import sys
import numpy as np
r, n, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
centers = np.random.default_rng(2019).normal(0.0, 10.0, (5, 25))
rng = np.random.default_rng(r)
X = centers[rng.integers(0, 5, n)] + rng.normal(0.0, 1.0, (n, 25))
np.save(f"{work}/x.npy", X)
with open(f"{work}/ids.txt", "w") as f:
    f.writelines(f"r{r}-{i}\n" for i in range(n))
with open(f"{work}/deletes.txt", "w") as f:
    f.writelines(f"r{r}-{i}\n" for i in sorted(rng.choice(n, max(1, n // 20), replace=False)))
PY
  stream-unlearn produce --bootstrap-servers "$BOOTSTRAP" \
    --insert-topic "$INSERT_TOPIC" --delete-topic "$DELETE_TOPIC" \
    --inserts "$WORK/x.npy" --ids "$WORK/ids.txt" --deletes "$WORK/deletes.txt"
  if [ $((round % 10)) -eq 0 ]; then
    python - "$BOOTSTRAP" "$INSERT_TOPIC" <<'PY'
import sys
from kafka import KafkaProducer
p = KafkaProducer(bootstrap_servers=sys.argv[1])
p.send(sys.argv[2], key=b"bad", value=b"\xc1 not msgpack")
p.flush()
p.close()
PY
  fi
  round=$((round + 1))
  sleep "$INTERVAL"
done
