"""Training memory of the next-token loss: one forward + backward step of tiny Staria at batch
4 x 512 with the full [batch, length, 17,742] logits (`loss_chunk_tokens: null`, the anchor)
against the chunked (fused) loss at the default 4,096 tokens (here one chunk: all 2,044 target
positions) and smaller chunks, each in a fresh process, in the same run. Reports the rise of the
process's peak RSS over its state before the step, and the step's CPU seconds."""

import argparse
import json
import os
import subprocess
import sys
import time

STEP = """
import json, resource, time, torch, hydra
from omegaconf import OmegaConf
from staria.paths import REPO_ROOT
from staria.training.config import compose_net
from staria.training.tasks import StariaTask
torch.set_num_threads(1)
torch.manual_seed(0)
net = hydra.utils.instantiate(compose_net("staria_tiny"))
task = StariaTask(
    net,
    optimizer={{"lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.1}},
    scheduler={{"warmup_steps": 1, "total_steps": 1, "min_lr_ratio": 0.1}},
    loss_chunk_tokens={chunk},
)
batch, length = 4, 512
batch = {{
    "snippets": torch.randint(6, 17000, (batch, 4, 65)),
    "snippet_mask": torch.ones(batch, 4, 65, dtype=torch.bool),
    "tokens": torch.randint(6, 17000, (batch, length)),
    "token_mask": torch.ones(batch, length, dtype=torch.bool),
    "loss_mask": torch.ones(batch, length, dtype=torch.bool),
}}
# the first step: the high-water mark before it is the model, its inputs and the imports
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.process_time()
task.step_loss(batch).loss.backward()
cpu = time.process_time() - started
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"rise_mib": (after - before) / 1024, "cpu_s": cpu}}))
"""


def measure(chunk: int | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = STEP.format(chunk=chunk)
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    modes = {
        "full logits (anchor)": None,
        "chunked 4096 (default)": 4096,
        "chunked 1024": 1024,
        "chunked 256": 256,
    }
    results: dict[str, list[dict]] = {name: [] for name in modes}
    started = time.perf_counter()
    for _ in range(args.repeats):  # alternate, so machine load hits each alike
        for name, chunk in modes.items():
            results[name].append(measure(chunk))
    anchor = results["full logits (anchor)"]
    anchor_rise = min(r["rise_mib"] for r in anchor)
    anchor_cpu = min(r["cpu_s"] for r in anchor)
    print(f"peak RSS rise of one step (min of {args.repeats} runs); batch 4 x 512, 17,742 tokens")
    for name, runs in results.items():
        rise, cpu = min(r["rise_mib"] for r in runs), min(r["cpu_s"] for r in runs)
        print(
            f"  {name:22s} {rise:8.1f} MiB ({rise / anchor_rise:4.2f}x)  "
            f"{cpu:6.2f} CPU-s/step ({cpu / anchor_cpu:4.2f}x)"
        )
    print(f"(wall {time.perf_counter() - started:.0f} s for all runs)")


if __name__ == "__main__":
    main()
