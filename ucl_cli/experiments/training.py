"""Symmetric InfoNCE training of every model family for one critic, batched into one network.

Recipe (docs/METHOD.md#the-synthetic-evidence): Adam, lr 0.01 with a step decay (x0.1) at epoch 60
of 64, batches of 256 rows drawn without replacement from the full-batch tensors (no DataLoader),
one learned logit scale per pair (initial 1), a model's loss being the mean of its pairs' losses.
All randomness flows from explicit generators seeded by the experiment seed, so one seed always
trains the same models, whichever critics or families run beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ucl_cli.errors import UsageError
from ucl_cli.experiments.adam import Adam
from ucl_cli.experiments.encoder_stack import EncoderStack, StackShape
from ucl_cli.experiments.families import FAMILY_INDEX, FamilySpec
from ucl_cli.experiments.gaussian_data import Triplets
from ucl_cli.experiments.infonce import pair_logits, symmetric_infonce

# Called after every epoch with (epochs done, epochs in all).
EpochCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class TrainingOptions:
    """The training recipe; defaults are the paper's."""

    epochs: int = 64
    batch_size: int = 256
    lr: float = 0.01
    lr_step: int = 60
    lr_gamma: float = 0.1
    hidden: int = 128
    embed_dim: int = 32


@dataclass(frozen=True)
class StackLayout:
    """Where each family's encoders and pairs sit in the batched network."""

    encoder_index: dict[tuple[str, str], int]  # (family, encoder name) -> stack row
    encoder_modality: list[str]
    app_encoder: list[int]  # application -> encoder
    app_modality: list[str]
    app_block: list[int]
    pair_apps: list[tuple[int, int]]  # pair -> (left application, right application)
    pair_weight: list[float]  # 1 / (number of pairs of the pair's family)
    pair_key: list[tuple[str, str, str]]  # (family, left encoder, right encoder)


@dataclass
class TrainedFamilies:
    """Trained encoders of several families (one critic), ready for evaluation."""

    critic: str
    layout: StackLayout
    stack: EncoderStack
    logit_scales: dict[tuple[str, str, str], float]
    final_loss: float

    def embed(self, family: str, encoder: str, x: torch.Tensor) -> torch.Tensor:
        return self.stack.embed(self.layout.encoder_index[(family, encoder)], x)

    def scale(self, family: str, left: str, right: str) -> float:
        return self.logit_scales[(family, left, right)]


def build_layout(families: tuple[FamilySpec, ...]) -> StackLayout:
    """Number the encoders, their applications per step, and the pairs."""
    encoder_index: dict[tuple[str, str], int] = {}
    encoder_modality: list[str] = []
    for family in families:
        for name, modality in family.encoders.items():
            encoder_index[(family.name, name)] = len(encoder_modality)
            encoder_modality.append(modality)
    app_encoder, app_modality, app_block = [], [], []
    pair_apps, pair_weight, pair_key = [], [], []
    for family in families:
        for pair in family.pairs:
            apps = []
            for name in (pair.left, pair.right):
                apps.append(len(app_encoder))
                app_encoder.append(encoder_index[(family.name, name)])
                app_modality.append(family.encoders[name])
                app_block.append(pair.block)
            pair_apps.append((apps[0], apps[1]))
            pair_weight.append(1.0 / len(family.pairs))
            pair_key.append((family.name, pair.left, pair.right))
    return StackLayout(
        encoder_index,
        encoder_modality,
        app_encoder,
        app_modality,
        app_block,
        pair_apps,
        pair_weight,
        pair_key,
    )


def train_families(
    families: tuple[FamilySpec, ...],
    critic: str,
    train: Triplets,
    options: TrainingOptions,
    seed: int,
    on_epoch: EpochCallback | None = None,
) -> TrainedFamilies:
    """Train every family for one critic on the first and second halves of `train`.

    Block 0 is rows [0, n), block 1 rows [n, 2n), with n = len(train) // 2.
    """
    rows = len(train) // 2
    steps = rows // options.batch_size
    if steps < 1:
        raise UsageError(
            f"{rows} training rows per pair cannot fill one batch of {options.batch_size}"
        )
    layout = build_layout(families)
    stack = _initial_stack(families, layout, train, options, seed)
    sources = _app_sources(layout, train, rows, stack.shape.input_dim)
    log_scales = torch.nn.Parameter(torch.zeros(len(layout.pair_apps)))
    optimizer = Adam([*stack.parameters(), log_scales], lr=options.lr)
    encoder_of_app = torch.tensor(layout.app_encoder)
    rounds = _update_rounds(layout)
    left_apps = torch.tensor([left for left, _ in layout.pair_apps])
    right_apps = torch.tensor([right for _, right in layout.pair_apps])
    weights = torch.tensor(layout.pair_weight)
    app_rows = torch.arange(len(layout.app_encoder))[:, None]
    blocks = torch.tensor(layout.app_block)
    permutations = torch.Generator().manual_seed(_stream(seed, 1_000))
    loss_value = float("nan")

    for epoch in range(options.epochs):
        optimizer.lr = options.lr * options.lr_gamma ** (epoch // options.lr_step)
        order = torch.stack([torch.randperm(rows, generator=permutations) for _ in range(2)])
        order = order[blocks]  # [apps, rows]: each application follows its block's order
        epoch_loss = torch.zeros(())
        for step in range(steps):
            index = order[:, step * options.batch_size : (step + 1) * options.batch_size]
            embeddings = stack.forward_train(sources[app_rows, index], encoder_of_app, rounds)
            values = pair_logits(embeddings[left_apps], embeddings[right_apps], critic)
            loss = (symmetric_infonce(values, log_scales.exp()) * weights).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_loss += loss.detach()
        loss_value = float(epoch_loss) / steps
        if on_epoch is not None:
            on_epoch(epoch + 1, options.epochs)

    trained_scales = log_scales.detach().exp().tolist()
    scales = dict(zip(layout.pair_key, trained_scales, strict=True))
    stack.eval()
    return TrainedFamilies(critic, layout, stack, scales, loss_value)


def _stream(seed: int, purpose: int) -> int:
    """A seed for one purpose (initialisation of a family, batch order) of one experiment seed."""
    return seed * 100_003 + purpose


def _initial_stack(families, layout, train, options, seed) -> EncoderStack:
    widths = {"a": train.a.shape[1], "b": train.b.shape[1], "c": train.c.shape[1]}
    fan_in = [widths[modality] for modality in layout.encoder_modality]
    generators = []
    family_generators = {
        family.name: torch.Generator().manual_seed(_stream(seed, FAMILY_INDEX[family.name]))
        for family in families
    }
    for family in families:
        generators.extend(family_generators[family.name] for _ in family.encoders)
    shape = StackShape(len(fan_in), max(widths.values()), options.hidden, options.embed_dim)
    return EncoderStack(shape, fan_in, generators)


def _app_sources(layout: StackLayout, train: Triplets, rows: int, width: int) -> torch.Tensor:
    """[apps, rows, width]: each application's training inputs (its modality, its block)."""
    data = {"a": train.a, "b": train.b, "c": train.c}
    sources = torch.zeros(len(layout.app_encoder), rows, width)
    placements = zip(layout.app_modality, layout.app_block, strict=True)
    for app, (modality, block) in enumerate(placements):
        block_rows = torch.from_numpy(data[modality][block * rows : (block + 1) * rows])
        sources[app, :, : block_rows.shape[1]] = block_rows
    return sources


def _update_rounds(layout: StackLayout) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Running-statistics updates in call order: the k-th use of every encoder in round k."""
    seen: dict[int, int] = {}
    rounds: list[tuple[list[int], list[int]]] = []
    for app, encoder in enumerate(layout.app_encoder):
        use = seen.get(encoder, 0)
        seen[encoder] = use + 1
        if use == len(rounds):
            rounds.append(([], []))
        rounds[use][0].append(app)
        rounds[use][1].append(encoder)
    return [(torch.tensor(apps), torch.tensor(encoders)) for apps, encoders in rounds]
