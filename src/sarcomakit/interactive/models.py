"""Interactive models by name: the classical baselines, the shipped default network, or a trained run folder.

``load_interactive_model("random_walker")``, ``("geodesic")``, ``("default")`` (the small network shipped
with the package, see :func:`default_model_dir`) or the path of a run folder trained by
``sarcomakit interactive train``. This is what ``sarcomakit interactive evaluate MODEL`` and a server
resolve a model name with.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

from sarcomakit.core.errors import UserInputError
from sarcomakit.interactive.classical import GeodesicModel, RandomWalkerModel
from sarcomakit.interactive.protocol import InteractiveModel

#: Models that need no files, by name.
CLASSICAL_MODELS: dict[str, Callable[[], InteractiveModel]] = {"random_walker": RandomWalkerModel,
                                                               "geodesic": GeodesicModel}
DEFAULT_MODEL = "default"


def default_model_dir() -> Path:
    """The run folder of the interactive network shipped with the package (``plan.json``, ``config.json``,
    ``fold_0/checkpoint_best.pt``), made by the recipe in its ``RECIPE.md``."""
    return Path(str(resources.files("sarcomakit.interactive") / "default_model"))


def model_names() -> list[str]:
    """The names :func:`load_interactive_model` accepts besides run folders."""
    return [*CLASSICAL_MODELS, DEFAULT_MODEL]


def export_interactive_model(run_dir: str | Path, out_dir: str | Path, *, fold: int | None = None,
                             checkpoint: str = "best", notes: str | None = None) -> Path:
    """Write a trained interactive run as a minimal run folder to ship or share: the plan, the config, and the
    chosen fold's network weights alone (no optimizer state) as ``fold_0/checkpoint_best.pt``.

    The result loads with :meth:`NetworkInteractiveModel.from_run` (and is how the package's default model
    is made, see :func:`default_model_dir`). ``notes`` is written to ``RECIPE.md`` beside it.

    Raises:
        UserInputError: not an interactive run, or no checkpoint for the fold.
    """
    from sarcomakit.core.io.atomic import write_text
    from sarcomakit.runs.checkpoint import load_checkpoint, save_checkpoint
    from sarcomakit.runs.folder import RunFolder

    run = RunFolder.open(run_dir)
    config = run.config()
    if config.task != "interactive":
        raise UserInputError(f"is a '{config.task}' run, not an interactive one.", path=run.root)
    available = run.trained_folds(checkpoint)
    chosen = (min(available) if available else None) if fold is None else fold
    if chosen not in available:
        raise UserInputError(f"no checkpoint_{checkpoint}.pt for fold {chosen}.", path=run.root,
                             fix=f"choose among {sorted(available)}.")
    state = load_checkpoint(available[chosen])
    out = Path(out_dir)
    (out / "fold_0").mkdir(parents=True, exist_ok=True)
    plan = run.plan().model_copy(update={"fingerprint_file": None})
    plan.save(out / "plan.json")
    config.save(out / "config.json")
    weights = {name: value.float() if value.is_floating_point() else value for name, value in state["model"].items()}
    save_checkpoint(out / "fold_0" / "checkpoint_best.pt",
                    {"model": weights, "source": {"run": str(run.root), "fold": chosen, "checkpoint": checkpoint,
                                                  "epoch": state.get("best_epoch"), "score": state.get("best_score")}})
    if notes:
        write_text(out / "RECIPE.md", notes)
    return out


def load_interactive_model(spec: str | Path, *, device: str = "cpu", channel: str | None = None) -> InteractiveModel:
    """The model named ``spec`` (a classical baseline, ``default``) or stored in the run folder ``spec``.

    Args:
        spec: ``random_walker``, ``geodesic``, ``default`` or a run folder.
        device: where a network runs (``cpu``, ``cuda``, ``auto``).
        channel: for a one-channel network, the plan channel whose normalisation the input gets
            (e.g. ``CT``); see :class:`~sarcomakit.interactive.network_model.NetworkInteractiveModel`.

    Raises:
        UserInputError: an unknown name that is not a folder either, or an unusable run folder.
    """
    from sarcomakit.interactive.network_model import NetworkInteractiveModel

    text = str(spec)
    if text in CLASSICAL_MODELS:
        return CLASSICAL_MODELS[text]()
    if text == DEFAULT_MODEL:
        folder = default_model_dir()
        if not (folder / "plan.json").is_file():
            raise UserInputError("this installation has no default interactive model.", path=folder,
                                 fix="reinstall sarcomakit, or give a run folder or random_walker.")
        return NetworkInteractiveModel.from_run(folder, device=device, channel=channel, name=DEFAULT_MODEL)
    path = Path(text)
    if not path.is_dir():
        raise UserInputError(f"unknown interactive model '{text}'.", path=path if path.suffix else None,
                             fix=f"give one of {', '.join(model_names())} or a run folder of "
                                 "'sarcomakit interactive train'.")
    return NetworkInteractiveModel.from_run(path, device=device, channel=channel)
