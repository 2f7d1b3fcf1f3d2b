"""Start-up: `staria-train ... --cfg job` and `staria-train --help` against a bare Hydra app
(one config file, nothing else imported) in the same run, each a fresh process, measured in
CPU seconds (user + system of the child) and wall seconds; medians of alternating runs.

Each is read against the bare app's `--cfg job`; `--help` also against the bare app's own
`--help`, since Hydra's help lists every config group (Hydra's and the plugins' too) and
copies its config store once per group, work any Hydra app's help does."""

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE_APP = """
import hydra

@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg):
    pass

if __name__ == "__main__":
    main()
"""


def timed(command: list[str], cwd: Path) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    train = [sys.executable, "-m", "staria.training.cli"]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "app.py").write_text(BARE_APP)
        (folder / "config.yaml").write_text("name: bare\nseed: 0\n")
        commands = {
            "bare Hydra app --cfg job": [sys.executable, "app.py", "--cfg", "job"],
            "bare Hydra app --help": [sys.executable, "app.py", "--help"],
            "staria-train experiment=smoke --cfg job": [*train, "experiment=smoke", "--cfg", "job"],
            "staria-train --help": [*train, "--help"],
        }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.repeats):  # alternate, so machine load hits each alike
            for name, command in commands.items():
                times[name].append(timed(command, folder))
    anchor = "bare Hydra app --cfg job"
    anchor_cpu = statistics.median(cpu for cpu, _ in times[anchor])
    anchor_wall = statistics.median(wall for _, wall in times[anchor])
    help_cpu = statistics.median(cpu for cpu, _ in times["bare Hydra app --help"])
    print(f"median of {args.repeats} alternating runs; ratio against {anchor!r} (goal: <= 3x)")
    for name, samples in times.items():
        cpu = statistics.median(c for c, _ in samples)
        wall = statistics.median(w for _, w in samples)
        versus_help = f"  ({cpu / help_cpu:4.1f}x the bare --help)" if "help" in name else ""
        print(
            f"  {name:42s} {cpu:6.2f} CPU-s ({cpu / anchor_cpu:4.1f}x)  "
            f"{wall:6.2f} wall-s ({wall / anchor_wall:4.1f}x){versus_help}"
        )


if __name__ == "__main__":
    main()
