"""Common interface of DeepCluster backbones: Sobel front end, embedding and named taps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deepcluster.models.sobel import Sobel

TapStage = tuple[str | None, nn.Module]
"""One step of a backbone's feature pipeline: an optional tap name recorded after running the module."""


def check_input_size(
    arch: str,
    input_size: int,
    minimum: int,
    maximum: int | None = None,
    below_hint: str = "",
    above_hint: str = "",
) -> int:
    """Return ``input_size`` if ``minimum <= input_size <= maximum``, else raise a ValueError naming it.

    ``below_hint`` / ``above_hint`` are appended to the message when the size is too small / too large.
    """
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size <= 0:
        raise ValueError(f"input_size must be a positive integer (px) for arch '{arch}', got {input_size!r}")
    span = f">= {minimum} px" if maximum is None else f"{minimum}-{maximum} px"
    if input_size < minimum:
        raise ValueError(f"input_size={input_size} is too small for arch '{arch}' ({span}){below_hint}")
    if maximum is not None and input_size > maximum:
        raise ValueError(f"input_size={input_size} is too large for arch '{arch}' ({span}){above_hint}")
    return input_size


class Backbone(nn.Module):
    """Base class of every backbone: ``[B, 3, H, W]`` normalised images -> ``[B, feature_dim]`` embeddings.

    Subclasses set ``feature_dim`` and implement :meth:`embed` (input already Sobel-filtered when enabled)
    and :meth:`tap_stages` (the ordered feature pipeline with named taps, used by :meth:`forward_taps`).
    """

    arch: str
    input_size: int
    feature_dim: int
    sobel: Sobel | None

    def __init__(self, arch: str, input_size: int, sobel: bool) -> None:
        super().__init__()
        self.arch = arch
        self.input_size = input_size
        self.sobel = Sobel() if sobel else None

    @property
    def in_channels(self) -> int:
        """Channels seen by the first conv: 2 with Sobel, 3 without."""
        return 2 if self.sobel is not None else 3

    @property
    def tap_names(self) -> list[str]:
        """Names accepted by :meth:`forward_taps`, shallowest first."""
        return [name for name, _ in self.tap_stages() if name is not None]

    def tap_stages(self) -> list[TapStage]:
        """Ordered ``(tap name or None, module)`` steps from the (Sobel-filtered) input to the deepest tap."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Map the (Sobel-filtered) input to ``[B, feature_dim]``."""
        raise NotImplementedError

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Check that ``x`` is ``[B, 3, H, W]`` and apply the Sobel layer when enabled."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"{self.arch} expects a [B, 3, H, W] image batch, got shape {tuple(x.shape)}; "
                "convert grayscale images to 3 channels first"
            )
        return self.sobel(x) if self.sobel is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``[B, feature_dim]`` embedding of the image batch ``x``."""
        return self.embed(self.preprocess(x))

    def forward_taps(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Return ``{name: activation}`` for each requested tap (post-ReLU, before pooling), in request order.

        Stops once the deepest requested tap is computed. A single string is taken as one name.
        Raises ValueError for an unknown name, listing the valid ones.
        """
        wanted = [names] if isinstance(names, str) else list(names)
        stages = self.tap_stages()
        valid = [name for name, _ in stages if name is not None]
        unknown = [name for name in wanted if name not in valid]
        if unknown:
            raise ValueError(f"unknown tap(s) {unknown} for arch '{self.arch}'; valid taps: {valid}")
        if not wanted:
            return {}
        remaining = set(wanted)
        found: dict[str, torch.Tensor] = {}
        h = self.preprocess(x)
        for name, module in stages:
            h = module(h)
            if name in remaining:
                found[name] = h
                remaining.discard(name)
                if not remaining:
                    break
        return {name: found[name] for name in wanted}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that require grad (the fixed Sobel weights are excluded)."""
        return [param for param in self.parameters() if param.requires_grad]

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, input_size={self.input_size}, feature_dim={self.feature_dim}"


class ConvFCBackbone(Backbone):
    """Backbone made of a ``features`` conv stack, a flatten and a ``classifier`` FC stack (AlexNet, VGG).

    Subclasses build ``features`` (nn.Sequential), ``classifier``, ``flat_dim`` (flattened conv output size
    at ``input_size``) and ``tap_index`` (tap name -> index of its ReLU in ``features``).
    """

    features: nn.Sequential
    classifier: nn.Sequential
    flat_dim: int
    tap_index: dict[str, int]

    def tap_stages(self) -> list[TapStage]:
        names = {index: name for name, index in self.tap_index.items()}
        return [(names.get(i), module) for i, module in enumerate(self.features)]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.flatten(self.features(x), 1)
        if h.shape[1] != self.flat_dim:
            raise ValueError(
                f"{self.arch} was built for input_size={self.input_size} ({self.flat_dim} conv features) "
                f"but got a {x.shape[-2]}x{x.shape[-1]} input ({h.shape[1]} features); "
                "build it with the matching input_size"
            )
        return self.classifier(h)
