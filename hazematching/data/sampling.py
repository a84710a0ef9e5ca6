"""Which items each process trains on at each step: a pure function of (seed, step, rank).

The training stream is the concatenation of one seeded permutation of the dataset per epoch.
Micro-batch m is the global slice [m*G, (m+1)*G) of that stream (G = batch size x processes) and
process r takes its r-th share. So a resumed run continues the exact data order, and a 2-process
run sees exactly the batches of a 1-process run with twice the batch size.
"""

from functools import lru_cache

import numpy as np
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list[int]]):
    def __init__(
        self,
        dataset_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_micro_step: int = 0,
    ):
        self.length = dataset_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start_micro_step

    @lru_cache(maxsize=4)  # noqa: B019 (one sampler per run: the cache lives as long as it must)
    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.length)

    def keys(self, micro_step: int) -> list[int]:
        """Virtual item indices (epoch * len + i) of this process for ``micro_step``."""
        first = (micro_step * self.world_size + self.rank) * self.batch_size
        keys = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.length)
            keys.append(epoch * self.length + int(self._permutation(epoch)[offset]))
        return keys

    def __iter__(self):
        micro_step = self.start
        while True:
            yield self.keys(micro_step)
            micro_step += 1
