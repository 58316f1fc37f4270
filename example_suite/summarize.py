"""Print a Markdown table of the example models from a run of the example suite.

    python example_suite/summarize.py [cem-results.json]

For each model of the manifest: task, architecture, receptive radius, held-out PSNR against its trivial
baseline (from the manifest, i.e. from train.py), and from the suite's JSON results (``--cem-json``) its map
at the reference ROI of the suite ((8, 8, 16) output px in a 64x64 crop of chelsea):
support radius (farthest block that changed the ROI output at all), effective radius (90 % of the positive
mass, as ``cem_checks.effective_radius``), share of the blocks and of the absolute mass with a negative
effect (as ``cem_checks.negative_fraction``), all over the blocks outside the ROI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from example_suite import zoo

REFERENCE_ROI = {"sr2": [8, 8, 16], "dn50": [8, 8, 16], "dr": [8, 8, 16]}


def map_numbers(m: dict) -> dict:
    effect = np.asarray(m["effect_db"], dtype=float)
    outside = ~np.asarray(m["roi_mask"], dtype=bool)
    eff, dist = effect[outside], np.asarray(m["distance_px"])[outside]
    pos = np.maximum(eff, 0)
    levels = np.unique(dist)
    cum = np.array([pos[dist <= d].sum() for d in levels])
    eff_r = int(levels[np.argmax(cum >= 0.9 * cum[-1] * (1 - 1e-9))]) if cum[-1] > 0 else 0
    absmass = np.abs(eff).sum()
    return {
        "support_radius_px": m["support_radius_px"],
        "effective_radius_px": eff_r,
        "negative_count": float((eff < 0).mean()),
        "negative_mass": float(np.maximum(-eff, 0).sum() / absmass) if absmass > 0 else 0.0,
        "grid": "x".join(map(str, m["grid"])),
        "wall_s": m["wall_s"],
        "forward_passes": m["forward_passes"],
    }


def main(argv: list[str]) -> int:
    results = json.loads(Path(argv[0] if argv else "cem-results.json").read_text())
    manifest = zoo.load_manifest()
    maps: dict = {}
    for test in results["tests"]:
        for m in test["maps"]:
            if m.get("stage") == "support":
                continue  # a receptive-field gate ran only the support stage: no effects to summarise
            key = (m["model"], m["settings"]["task"], list(m["settings"]["roi"]))
            k = json.dumps(key)
            # the same map is met once computed, then read back from --cem-cache-dir: keep the computed one
            if k not in maps or m["forward_passes"] > maps[k]["forward_passes"]:
                maps[k] = m
    print("| model | task | architecture | receptive radius (px) | PSNR / trivial (dB) | support radius (px) "
          "| effective radius (px) | negative share (blocks / mass) | map: grid, forwards, time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, e in manifest["models"].items():
        cls = e["architecture"].split(":")[1]
        rr = e["receptive_radius"]
        rr_text = "global" if rr is None else (f"{rr}" if e["receptive_radius_exact"] else f"<= {rr}")
        v = e["validation"]
        m = maps.get(json.dumps((cls, e["task"], REFERENCE_ROI[e["task"]])))
        if m is None:
            reach = "| - | - | - | - |"
        else:
            n = map_numbers(m)
            reach = (f"| {n['support_radius_px']} | {n['effective_radius_px']} | "
                     f"{n['negative_count']:.2f} / {n['negative_mass']:.2f} | {n['grid']}, {n['forward_passes']}, {n['wall_s']:.1f} s |")
        print(f"| `{name}` | {e['task']} | `{cls}` | {rr_text} | {v['psnr_db']:.2f} / {v['trivial_psnr_db']:.2f} {reach}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
