"""Run under torchrun: each rank reads its slice of one pass of a mixture and writes the ids."""

import json
import sys
from pathlib import Path

import torch.distributed as dist

from forge.catalog import load_catalog
from forge.mixture import MixtureStream, resolve

home, out = Path(sys.argv[1]), Path(sys.argv[2])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
mix = resolve("alpaca-belle-cot", load_catalog(), home=home)
ids = [i for t in MixtureStream(mix, home, rank=rank, world_size=world) for i in t["id"].to_pylist()]
(out / f"rank{rank}.json").write_text(json.dumps(ids))
dist.barrier()
dist.destroy_process_group()
