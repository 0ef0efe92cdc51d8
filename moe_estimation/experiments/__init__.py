"""Studies: configurations (:mod:`.config`), tables and their checks (:mod:`.results`), the one runner of every
resumable study (:mod:`.runner`) and its worker processes (:mod:`.workers`), the prefix-MoE Monte Carlo study
(:mod:`.study`), the inference on its fits (:mod:`.inference`), the inverse bound (:mod:`.inverse`) and the
speed benchmarks (:mod:`.bench`). The lab's studies (:mod:`moe_estimation.lab.study`) and the transformer's
(:mod:`moe_estimation.transformer`) are built from the same pieces.
"""
