#!/usr/bin/env python3
"""Other draws of the standard set's noisy diurnal curve, as scenario files.

The standard set's `diurnal-noisy` is one draw of its +-20 % noise, and Surge's replayed
decisions are deterministic, so that scenario's scale events are one trajectory: a change to the
scaler can move them by a replica or two either way by chance. These draws (Python's
`random.Random(seed)`, the same curve: 60 to 540 rps and back over 1200 s, uniform +-20 % per
second, rounded) let a change be judged on several:

    python3 sandbox/scenarios/noisy_draws.py --out /tmp/noisy --seeds 12
    ./target/debug/surge-sandbox compare --models-only --seeds 3 --out /tmp/noisy-out /tmp/noisy/*.yaml

The pods, target and bounds are copied from `compare/diurnal-noisy.yaml`.
"""

import argparse
import math
import pathlib
import random

HERE = pathlib.Path(__file__).resolve().parent
BASE_RPS = 60.0
PEAK_RPS = 540.0
PERIOD_S = 1200


def values(seed: int) -> list[int]:
    rng = random.Random(seed)
    out = []
    for s in range(PERIOD_S):
        phase = 2 * math.pi * s / PERIOD_S
        curve = BASE_RPS + (PEAK_RPS - BASE_RPS) * (1 - math.cos(phase)) / 2
        out.append(round(curve * (1 + 0.4 * (rng.random() - 0.5))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for the files")
    parser.add_argument("--seeds", type=int, default=12, help="draws 1..N")
    args = parser.parse_args()
    standard = (HERE / "compare" / "diurnal-noisy.yaml").read_text()
    head, sep, _ = standard.partition("\nload:")
    if not sep:
        raise SystemExit("compare/diurnal-noisy.yaml: no `load:` line")
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in range(1, args.seeds + 1):
        name = f"noisy-{seed}"
        rps = ", ".join(str(v) for v in values(seed))
        text = head.replace("name: diurnal-noisy", f"name: {name}")
        text += f"\nload:\n  - trace:\n      rps: [{rps}]\n"
        (args.out / f"{name}.yaml").write_text(text)
    print(f"wrote {args.seeds} scenarios to {args.out}")


if __name__ == "__main__":
    main()
