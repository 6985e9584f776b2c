"""Run by torchrun (test_hardening2): rank 0 alone takes longer than the process group's timeout
(a healthy slow judge); the other rank must wait for it, saying what it waits for."""
import datetime
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch.distributed as torch_dist  # noqa: E402

import dist  # noqa: E402

if __name__ == "__main__":
    torch_dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=3))
    dist.WAIT_LOG_EVERY = 2.0
    world = dist.setup()
    got = dist.on_main(lambda: (time.sleep(8), "judged")[1], world, what="the judge")
    assert got == "judged", got
    dist.barrier(world)
    print(f"rank {world.rank}: got {got}", flush=True)
    dist.close(world)
