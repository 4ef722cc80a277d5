"""Worker for the 2-rank loader test: each rank records the windows and batch count it got."""

from __future__ import annotations

import json
import os
import sys

import torch.distributed as dist

from data_pipelines.loader import make_loader
from physfm.train.distributed import clean_exit


def main(shards: str, out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result = {}
    for mode in ("sequential", "resampled"):
        kw = {"resampled": True, "batches_per_epoch": 7} if mode == "resampled" else {}
        keys, n_batches = [], 0
        for batch in make_loader(shards, "train", 4, num_workers=2, seed=0, shuffle_buffer=8, **kw):
            n_batches += 1
            keys += [
                f"{m['dataset']}/{m['source_file']}/{m['trajectory']}/{m['start']}"
                for m in batch["meta"]
            ]
        result[mode] = {"keys": keys, "n_batches": n_batches}
    # A collective after loading: with unequal batch counts a real training loop would hang here.
    dist.barrier()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    clean_exit(0)
