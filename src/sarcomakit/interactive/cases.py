"""Labelled manifest cases as :class:`~sarcomakit.interactive.evaluate.InteractiveCase` objects, geometry kept.

The channels are read as SimpleITK images and stacked as components of one vector image (one channel
stays a scalar image), so that a session sees the scan's own grid (spacing, origin, direction) and a
network model can apply its plan's preprocessing inside.
"""

from __future__ import annotations

from collections.abc import Sequence

import SimpleITK as sitk

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.image import read_image
from sarcomakit.data.manifest import Case, Manifest
from sarcomakit.interactive.evaluate import InteractiveCase
from sarcomakit.planning.fingerprint import check_same_grid


def interactive_case(case: Case, channels: Sequence[str]) -> InteractiveCase:
    """Read ``channels`` of a labelled case and its reference mask (``label > 0``).

    Raises:
        UserInputError: no label, a missing channel, channels or label off the first channel's grid, an
            empty mask, or an unreadable file.
    """
    if case.label is None:
        raise UserInputError(f"case {case.case_id} has no label to play the simulated user against.",
                             fix="give labelled cases to 'interactive evaluate'.")
    missing = [ch for ch in channels if ch not in case.images]
    if missing:
        raise UserInputError(f"case {case.case_id} has no image for channel(s) {', '.join(missing)}.",
                             fix=f"the model needs the channels {', '.join(channels)}.")
    images = {ch: read_image(case.images[ch], sitk.sitkFloat32) for ch in channels}
    label = read_image(case.label)
    check_same_grid(images, label, paths={ch: case.images[ch] for ch in channels}, label_path=case.label)
    reference = sitk.GetArrayFromImage(label) > 0
    if not reference.any():
        raise UserInputError(f"case {case.case_id} has an empty mask: there is no object to segment.",
                             path=case.label)
    stacked = list(images.values())
    image = stacked[0] if len(stacked) == 1 else sitk.Compose(stacked)
    return InteractiveCase(case.case_id, image, reference)


def labelled_cases(manifest: Manifest) -> list[Case]:
    """The manifest's cases that have a label.

    Raises:
        UserInputError: when none has one.
    """
    cases = [case for case in manifest.cases if case.label is not None]
    if not cases:
        raise UserInputError("no case of the manifest has a label.", path=manifest.source,
                             fix="add label paths: the simulated user needs the reference masks.")
    return cases


def model_channels(models: Sequence[object], manifest_channels: Sequence[str], channel: str | None) -> list[str]:
    """The manifest channels to give every model (one image per case serves all of them).

    A network trained on several channels needs its plan's channels, a one-channel network one channel
    (``channel``, default the manifest's first), a classical model any: all the manifest's unless a
    network decides.

    Raises:
        UserInputError: networks needing different channels, or channels the manifest lacks.
    """
    wanted: list[list[str]] = []
    for model in models:
        n_channels = getattr(model, "n_channels", None)
        if n_channels is None:
            continue
        if n_channels == 1:
            wanted.append([channel or manifest_channels[0]])
        else:
            plan = getattr(model, "plan", None)
            wanted.append(list(plan.channels) if plan is not None else list(manifest_channels[:n_channels]))
    if not wanted:
        return [channel] if channel else list(manifest_channels)
    if any(w != wanted[0] for w in wanted):
        raise UserInputError(f"the models need different channels ({'; '.join(', '.join(w) for w in wanted)}).",
                             fix="evaluate them in separate runs.")
    unknown = [ch for ch in wanted[0] if ch not in manifest_channels]
    if unknown:
        raise UserInputError(f"the manifest has no channel {', '.join(unknown)} (it has "
                             f"{', '.join(manifest_channels)}).",
                             fix="choose a channel with --channel, or a manifest with the model's channels.")
    return wanted[0]

