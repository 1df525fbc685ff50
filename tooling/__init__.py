"""Clients of a bestofk server that are not the server: training on its verdicts (``train``),
bestofk as an RL reward (``reward``). The CLI imports them lazily; they need ``bestofk[train]``."""
