"""A task mixture: each draw is a different kind of network on a different kind of data.

A learned optimizer meta-trained on one task learns that task's gradient scales and
horizon; to generalise it must see many (Celo2 meta-trains on four tiny tasks; VeLO on
thousands).  :class:`TaskMixture` draws, per problem:

1. a *family*, with the configured weights: ``mlp`` (Fashion-MNIST classifiers at 8×8, 14×14
   or 28×28), ``cnn`` (a small convnet on Fashion-MNIST), ``transformer`` (a byte-level causal
   transformer on Debian's fortunes) or ``photo_autoencoder`` (colour patches of the opencv-doc
   photographs through an MLP bottleneck);
2. the family's *settings*: each setting given as a list is a choice drawn uniformly (widths,
   depths, activations, image sizes…), a single number is fixed;
3. ``optimizees_per_draw`` independent networks of that architecture, each with its own
   initialisation and minibatch order, stacked into one
   :class:`~l2l_lightning.tasks.StackedModuleProblem` (one ``vmap``-ed forward and backward);
4. on the training split only, *augmentation*: every tensor of every network is reparametrised
   by ``c = exp(U[-s, s])`` (Celo2: the weight is stored as ``w / c`` and used as ``c · (w / c)``,
   so the network computes the same function but the optimizer sees parameters and gradients
   at other scales), and, optionally, each network's loss is multiplied by ``exp(U[-s', s'])``.

Every choice comes from the draw's generator, so a draw is a pure function of the generator's
state: validation draws are fixed by their seeds, and a resumed run draws the very problem it
stopped in (:class:`~l2l_lightning.meta.stream.ProblemStream`).  Problems differ in size from
draw to draw; the stream binds the net to each problem's layout and starts its state afresh,
which is all a coordinatewise optimizer needs.  That is why the mixture is a :class:`Task` and not
a feature of the stream (as ``docs/design.md`` first placed it): the stream's resume re-draws the
current problem from the stored generator state, which covers the family and its settings for
free, and ``l2l compare`` and validation get mixture draws through the same ``Task.sample``.

The default settings avoid the exact models of ``l2l bench``'s held-out suite (its MLP widths
32, 48, 64 and 96, its [8, 16]-channel convnets, its 32-wide two-layer transformer, its
196-64-16-64-196 autoencoder), which must stay unseen.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from l2l_lightning.data.datasets import DEFAULT_VAL_SIZE, Split
from l2l_lightning.data.sources import PhotoPatches, TextWindows, fashion_mnist, text_corpus
from l2l_lightning.errors import ConfigError, check_nonnegative_float, check_positive_int
from l2l_lightning.tasks.base import ModuleProblem, Problem, ScaledProblem, StackedModuleProblem, Task
from l2l_lightning.tasks.classification import Minibatches, cross_entropy, draw_params
from l2l_lightning.tasks.optimizees import ACTIVATIONS, MLP, CharTransformer, ConvNet, next_byte_loss, reconstruction_loss

Choice = dict[str, Any]  #: one drawn value per setting


class Family(ABC):
    """One kind of optimizee of the mixture: its settings, its network and its data.

    ``defaults`` holds every setting: a list is a set of choices (one drawn per problem),
    an int is fixed.  A YAML entry overrides any of them; an unknown setting is a ``ConfigError``.
    """

    defaults: dict[str, Any]
    loss_fn: Callable[[Any, Any], Tensor]

    def __init__(self, name: str, settings: dict[str, Any], mixture: "TaskMixture") -> None:
        self.name, self.mixture = name, mixture
        unknown = sorted(set(settings) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"TaskMixture: family {name!r} has no setting {', '.join(map(repr, unknown))}; "
                f"allowed: weight, {', '.join(self.defaults)}"
            )
        self.settings = {key: _check_setting(name, key, settings.get(key, default)) for key, default in self.defaults.items()}
        self._modules: dict[tuple, nn.Module] = {}

    def choose(self, generator: torch.Generator) -> Choice:
        """One value per setting, lists drawn uniformly in the order of ``defaults``."""
        return {
            key: value[int(torch.randint(len(value), (), generator=generator))] if isinstance(value, list) else value
            for key, value in self.settings.items()
        }

    def module(self, choice: Choice) -> nn.Module:
        """The network's template for ``choice`` on the ``meta`` device (shapes only; built once, shared)."""
        key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(choice.items()))
        if key not in self._modules:
            with torch.device("meta"):
                self._modules[key] = self.build(choice)
        return self._modules[key]

    @abstractmethod
    def build(self, choice: Choice) -> nn.Module:
        """The network for ``choice``."""

    @abstractmethod
    def batches(self, choice: Choice, split: Split, device: str, seed: int) -> Callable[[int], Any]:
        """``step -> minibatch`` of one network, a pure function of ``seed`` and the step."""


def _check_setting(family: str, key: str, value: Any) -> Any:
    """A setting as plain data: a non-empty list of choices, or one positive int."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"TaskMixture: {family}.{key}=[] must list at least one choice")
    for item in values:
        if key == "activations":
            if item not in ACTIVATIONS:
                raise ConfigError(f"TaskMixture: {family}.{key} has {item!r}; allowed: {', '.join(map(repr, ACTIVATIONS))}")
        else:
            check_positive_int(f"TaskMixture: {family}.{key} entry", item)
    return list(value) if isinstance(value, list) else value


class MLPFamily(Family):
    """Fully connected classifiers of Fashion-MNIST at several resolutions (Celo2's tasks are 8×8 MLPs)."""

    defaults = {
        "widths": [16, 24, 40, 80, 128],
        "depths": [1, 2, 3],
        "activations": list(ACTIVATIONS),
        "image_sizes": [8, 14, 28],
        "batch_size": 64,
    }
    loss_fn = staticmethod(cross_entropy)

    def build(self, choice: Choice) -> nn.Module:
        size = choice["image_sizes"]
        return MLP(size * size, [choice["widths"]] * choice["depths"], 10, choice["activations"])

    def batches(self, choice: Choice, split: Split, device: str, seed: int) -> Callable[[int], Any]:
        data = fashion_mnist(self.mixture.fashion_root, split, choice["image_sizes"], self.mixture.val_size, device)
        if data.labels.numel() < choice["batch_size"]:
            raise ConfigError(
                f"TaskMixture: {self.name}.batch_size={choice['batch_size']} exceeds the {data.labels.numel()} images "
                f"of Fashion-MNIST's {split} split under {self.mixture.fashion_root}"
            )
        return Minibatches(data, choice["batch_size"], seed)


class CNNFamily(MLPFamily):
    """Two-layer convnets (``channels``, then twice as many) on Fashion-MNIST at 14×14 or 28×28."""

    defaults = {"channels": [4, 6, 12], "image_sizes": [14, 28], "batch_size": 32}

    def __init__(self, name: str, settings: dict[str, Any], mixture: "TaskMixture") -> None:
        super().__init__(name, settings, mixture)
        sizes = self.settings["image_sizes"]
        if min(sizes if isinstance(sizes, list) else [sizes]) < 4:
            raise ConfigError(f"TaskMixture: {name}.image_sizes={sizes!r}: two 2×2 poolings need images of at least 4 pixels")

    def build(self, choice: Choice) -> nn.Module:
        return ConvNet(1, [choice["channels"], 2 * choice["channels"]], choice["image_sizes"])


class TransformerFamily(Family):
    """Byte-level causal transformers on text (one head per block; see :mod:`~l2l_lightning.tasks.optimizees`)."""

    defaults = {"widths": [16, 24], "depths": [1], "context": 16, "batch_size": 8}
    loss_fn = staticmethod(next_byte_loss)

    def build(self, choice: Choice) -> nn.Module:
        return CharTransformer(choice["widths"], choice["depths"], choice["context"])

    def batches(self, choice: Choice, split: Split, device: str, seed: int) -> Callable[[int], Any]:
        text = text_corpus(self.mixture.text_root, split).to(device)
        return TextWindows(text, choice["context"], choice["batch_size"], seed)


class PhotoAutoencoderFamily(Family):
    """One-hidden-layer autoencoders of random RGB patches of photographs (shorter side resized to 64 px)."""

    defaults = {"patch_sizes": [4, 8], "widths": [8, 16, 24], "activations": ["relu", "tanh", "gelu"], "batch_size": 32}
    loss_fn = staticmethod(reconstruction_loss)

    def build(self, choice: Choice) -> nn.Module:
        pixels = 3 * choice["patch_sizes"] ** 2
        return MLP(pixels, [choice["widths"]], pixels, choice["activations"], output_activation="sigmoid")

    def batches(self, choice: Choice, split: Split, device: str, seed: int) -> Callable[[int], Any]:
        return PhotoPatches(self.mixture.photo_root, split, 64, choice["patch_sizes"], choice["batch_size"], seed, device)


FAMILIES: dict[str, type[Family]] = {
    "mlp": MLPFamily,
    "cnn": CNNFamily,
    "transformer": TransformerFamily,
    "photo_autoencoder": PhotoAutoencoderFamily,
}


class TaskMixture(Task):
    """Draws a family, its settings and ``optimizees_per_draw`` networks of it (see the module docstring).

    Args:
        families: ``name -> {weight: w, <setting>: <value or list of choices>, …}`` for the families to
            draw from (``mlp``, ``cnn``, ``transformer``, ``photo_autoencoder``); a missing weight is 1,
            missing settings take the family's defaults.  ``None``: all four, weight 1 each.
        optimizees_per_draw: networks of the drawn architecture per problem, run as one ``vmap``.
        reparam_scale: ``s``: each tensor of each training network is reparametrised by ``exp(U[-s, s])``; 0: off.
        loss_scale: ``s'``: each training network's loss is multiplied by ``exp(U[-s', s'])``; 0: off.
        fashion_root, photo_root, text_root: the data folders (Debian's ``dataset-fashion-mnist``,
            ``opencv-doc`` and ``fortunes`` packages by default).
        val_size: Fashion-MNIST training images held out as the ``"val"`` split.
    """

    def __init__(
        self,
        families: Optional[dict[str, Optional[dict[str, Any]]]] = None,
        optimizees_per_draw: int = 4,
        reparam_scale: float = 1.0,
        loss_scale: float = 0.0,
        fashion_root: str = "/usr/share/datasets/fashion-mnist",
        photo_root: str = "/usr/share/doc/opencv-doc/examples/data",
        text_root: str = "/usr/share/games/fortunes",
        val_size: int = DEFAULT_VAL_SIZE,
    ) -> None:
        families = {name: {} for name in FAMILIES} if families is None else families
        self.families = {name: dict(settings or {}) for name, settings in families.items()}
        self.optimizees_per_draw = check_positive_int("TaskMixture: optimizees_per_draw", optimizees_per_draw)
        self.reparam_scale = check_nonnegative_float("TaskMixture: reparam_scale", reparam_scale)
        self.loss_scale = check_nonnegative_float("TaskMixture: loss_scale", loss_scale)
        self.fashion_root, self.photo_root, self.text_root = str(fashion_root), str(photo_root), str(text_root)
        self.val_size = check_positive_int("TaskMixture: val_size", val_size)
        self._families, self._weights = self._build_families()

    def _build_families(self) -> tuple[list[Family], Tensor]:
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown:
            raise ConfigError(f"TaskMixture: unknown family {', '.join(map(repr, unknown))}; allowed: {', '.join(map(repr, FAMILIES))}")
        built, weights = [], []
        for name, settings in self.families.items():
            settings = dict(settings)
            weight = settings.pop("weight", 1.0)
            weights.append(check_nonnegative_float(f"TaskMixture: {name}.weight", weight))
            built.append(FAMILIES[name](name, settings, self))
        if not sum(weights) > 0 or sum(weights) == float("inf"):
            raise ConfigError(f"TaskMixture: the family weights {weights} must sum to a positive finite number")
        return built, torch.tensor(weights, dtype=torch.float64)

    def sample(self, generator: torch.Generator, device: Union[torch.device, str] = "cpu", split: Split = "train") -> Problem:
        """A family, its settings, the networks and (training split) the augmentation, all from ``generator``."""
        family = self._families[int(torch.multinomial(self._weights, 1, generator=generator))]
        choice = family.choose(generator)
        module, device = family.module(choice), str(torch.device(device))
        problems = []
        for _ in range(self.optimizees_per_draw):
            params = {name: value.to(device) for name, value in draw_params(module, None, generator).items()}
            seed = int(torch.randint(2**62, (), generator=generator))
            problems.append(ModuleProblem(module, params, family.batches(choice, split, device, seed), family.loss_fn))
        problem = StackedModuleProblem(problems)
        return self._augment(problem, generator) if split == "train" else problem

    def _augment(self, problem: StackedModuleProblem, generator: torch.Generator) -> Problem:
        """Celo2's reparametrisation (one scale per tensor of each network) and loss scaling, if on."""
        if not (self.reparam_scale or self.loss_scale):
            return problem
        theta = problem.initial_params()
        sizes = torch.tensor(problem.layout.sizes)
        log_scales = (torch.rand(len(sizes), generator=generator, dtype=torch.float64) * 2 - 1) * self.reparam_scale
        scale = log_scales.exp().repeat_interleave(sizes).to(theta.dtype).to(theta.device)
        log_loss = (torch.rand(problem.num_optimizees, generator=generator, dtype=torch.float64) * 2 - 1) * self.loss_scale
        return ScaledProblem(problem, scale, log_loss.exp().to(theta.dtype).to(theta.device))
