"""Interactive segmentation: prompts, a simulated annotator, ROI growth, sessions, classical baselines, evaluation.

The engine is independent of training: any object with the
:class:`~sarcomakit.interactive.protocol.InteractiveModel` ``predict`` method plugs into
:class:`~sarcomakit.interactive.session.InteractiveSession` and
:func:`~sarcomakit.interactive.evaluate.evaluate_interactive`; the classical baselines in
:mod:`sarcomakit.interactive.classical` are such models, and so is a trained network
(:mod:`sarcomakit.interactive.network_model`, trained by the ``interactive`` task). Models by name:
:func:`~sarcomakit.interactive.models.load_interactive_model`.
"""

from sarcomakit.interactive.classical import GeodesicModel, RandomWalkerModel
from sarcomakit.interactive.evaluate import InteractiveCase, InteractiveEvaluation, evaluate_interactive
from sarcomakit.interactive.models import load_interactive_model
from sarcomakit.interactive.prompts import Box, Click, Prompt, Scribble, encode_prompts, rasterize_prompts
from sarcomakit.interactive.protocol import InteractiveModel, PreparingModel
from sarcomakit.interactive.robot import RobotConfig, RobotUser
from sarcomakit.interactive.roi import Roi, grow_roi
from sarcomakit.interactive.session import InteractiveSession

__all__ = [
    "Box",
    "Click",
    "GeodesicModel",
    "InteractiveCase",
    "InteractiveEvaluation",
    "InteractiveModel",
    "PreparingModel",
    "InteractiveSession",
    "Prompt",
    "RandomWalkerModel",
    "RobotConfig",
    "RobotUser",
    "Roi",
    "Scribble",
    "encode_prompts",
    "evaluate_interactive",
    "grow_roi",
    "load_interactive_model",
    "rasterize_prompts",
]
