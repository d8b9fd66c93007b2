"""The demo's numbers, as ``make demo`` gives them, with the machine recorded.

Run: .venv/bin/python bench/demo.py

Runs ``useg.workflows.demo.run_demo`` (what ``make demo`` runs: the cpu-fast recipe on the
built-in synthetic touching cells, a threshold chosen on a validation image, a held-out
1024 x 1024 test image) into a fresh folder and writes its summary, with the wall and CPU
time, the command and the CPU, to bench/results/demo.json and .md. The floor is the best
threshold of the raw test image, chosen on that image itself (generous to the floor).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from _common import RESULTS, command_line, machine_info, write_json

from useg.workflows.demo import run_demo


def _floor_row(floor) -> str:
    if isinstance(floor, dict):
        return (f"| floor: raw image, best threshold ({json.dumps(floor)}) | "
                f"{floor.get('pixel_error')} | {floor.get('adapted_rand_error')} |")
    return f"| floor: raw image, best threshold | {floor} | |"


def main() -> None:
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="useg-demo-bench-") as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        report = run_demo(Path(tmp) / "demo", progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        summary = json.loads((report.parent / "summary.json").read_text())
    summary.pop("model", None)
    result = {"benchmark": "make demo", "command": command_line(), "machine": machine,
              "wall_s": wall, "cpu_s": cpu, "summary": summary}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "demo.json", result)
    s = summary
    lines = ["# make demo", "", f"Command: `{result['command']}`; CPU {machine['cpu']['model']}, "
             f"{machine['date']}; wall {wall:.0f} s, CPU {cpu:.0f} s (this process).", "",
             "| | pixel error | adapted Rand error |", "|---|---|---|",
             f"| useg ({s['iterations']} steps, threshold {s['threshold']} chosen on "
             f"validation) | {s.get('pixel_error')} | {s.get('adapted_rand_error')} |",
             _floor_row(s.get("floor")), ""]
    (RESULTS / "demo.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
