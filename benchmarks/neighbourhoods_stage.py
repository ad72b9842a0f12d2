"""Benchmark: the neighbourhoods stage alone on an analysed workdir (through annotate),
on the config's cluster, as `immunoprofile run` runs it; prints its line and the seconds
of its parts. Run under benchmarks/measure.py for the peak memory over all processes:

    python benchmarks/measure.py --label neighbourhoods-1M \
        --json benchmarks/results/neighbourhoods_stage.jsonl -- \
        python benchmarks/neighbourhoods_stage.py /work/cmp/scaling/1M/config.yaml
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import ExitStack
from pathlib import Path

from cluster.launch import start_client
from pipeline import load_config
from pipeline.stages import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    args = parser.parse_args()
    cfg = load_config(args.config)
    with ExitStack() as stack:
        client = stack.enter_context(start_client(cfg.cluster, quiet=True))
        t = time.perf_counter()
        line = run_stage("neighbourhoods", cfg, client)
        seconds = time.perf_counter() - t
    summary = json.loads((Path(cfg.workdir) / "neighbourhoods" / "summary.json").read_text())
    print(line)
    print(
        json.dumps(
            {
                "stage_seconds": round(seconds, 1),
                **{
                    k: summary[k]
                    for k in (
                        "n_nhoods",
                        "k",
                        "n_samples",
                        "n_cells",
                        "exact_neighbours",
                        "unconverged",
                        "seconds",
                    )
                },
            }
        )
    )


if __name__ == "__main__":
    main()
