"""The paper's experiments: the synthetic linear-Gaussian study behind `ucl synth`.

One concept per module: `gaussian_data` (the A <- B -> C world), `exact_references` (its true
density ratios), `families` (shared / independent / oracle models), `encoder_stack`, `infonce`,
`adam` and `training` (many small MLP encoders trained as one batched network), `evaluation`
(recall within groups, the bank-size sweep with ESS), `options`, `tasks` and `runner` (a run split
into per-seed, per-critic tasks, in worker processes), `results`, `published`, `report_table` and
`plotting` (what a run reports), `theory` (the closed forms of Lemmas 2 and 3).
"""
