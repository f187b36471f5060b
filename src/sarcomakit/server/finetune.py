"""Fine-tune the served interactive network on the datastore's final labels (run as a separate process).

``python -m sarcomakit.server.finetune --studies DIR --model SPEC --out RUN [--steps N]`` loads the network
(``default`` or a run folder), preprocesses every image with a ``final`` label by the network's plan,
trains ``steps`` steps of the interactive task's own objective (the campaign's fine-tuning,
:func:`sarcomakit.interactive.campaign.task_fine_tuner`) and writes a minimal run folder (plan, config,
``fold_0/checkpoint_best.pt``) that :func:`~sarcomakit.interactive.models.load_interactive_model` loads. The
server runs it in a child process so training never blocks annotation, and swaps the new weights in when
it exits successfully. Progress goes to stdout, one line per event (the server shows the last lines).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def fine_tune_on_datastore(studies: Path, model_spec: str, out: Path, *, steps: int = 50, learning_rate: float = 2e-4,
                           batch_size: int = 2, seed: int = 0, device: str = "cpu") -> Path:
    """Fine-tune ``model_spec`` on the final labels under ``studies`` and write the run folder ``out``.

    Raises:
        UserInputError: the model is not a trained network, or there is no final label yet.
    """
    import SimpleITK as sitk

    from sarcomakit.core.errors import UserInputError
    from sarcomakit.core.io.atomic import atomic_dir
    from sarcomakit.core.io.image import read_image
    from sarcomakit.interactive.campaign import CampaignCase, task_fine_tuner
    from sarcomakit.interactive.models import load_interactive_model
    from sarcomakit.interactive.network_model import NetworkInteractiveModel
    from sarcomakit.planning.preprocess import preprocess_case
    from sarcomakit.runs.checkpoint import save_checkpoint
    from sarcomakit.server.datastore import Datastore
    from sarcomakit.tasks import build_task

    network = load_interactive_model(model_spec, device=device)
    if not isinstance(network, NetworkInteractiveModel) or network.config is None:
        raise UserInputError(f"the model '{model_spec}' is not a trained network; there is nothing to fine-tune.",
                             fix="serve 'default' or a run folder of 'sarcomakit interactive train'.")
    store = Datastore(studies)
    ids = store.labelled_ids()
    if not ids:
        raise UserInputError("no final label in the datastore yet.", path=studies, fix="save a few labels first.")
    plan = network.input_plan
    cases = []
    for image_id in ids:
        image = store.read_image(image_id)
        if len(plan.channels) > 1 and image.GetNumberOfComponentsPerPixel() == len(plan.channels):
            images = {c: sitk.VectorIndexSelectionCast(image, i) for i, c in enumerate(plan.channels)}
        else:
            images = {plan.channels[0]: image}
        label = store.label_path(image_id)
        cases.append(CampaignCase(preprocess_case(images, plan, read_image(label), case_id=image_id)))
        print(json.dumps({"event": "case", "id": image_id}), flush=True)
    config = network.config.model_copy(update={"task_options": {
        k: v for k, v in network.config.task_options.items() if k != "initial_weights"}})
    fine_tune = task_fine_tuner(build_task(config), plan, config, network.grid_model.device,
                                learning_rate=learning_rate, batch_size=batch_size)
    print(json.dumps({"event": "train", "cases": len(cases), "steps": steps}), flush=True)
    fine_tune(network.grid_model.network, cases, steps, seed)
    with atomic_dir(out) as tmp:
        (tmp / "fold_0").mkdir()
        network.plan.save(tmp / "plan.json")
        config.save(tmp / "config.json")
        state = {k: v.detach().cpu() for k, v in network.grid_model.network.state_dict().items()}
        save_checkpoint(tmp / "fold_0" / "checkpoint_best.pt",
                        {"model": state, "source": {"fine_tuned_from": model_spec, "cases": ids, "steps": steps}})
    print(json.dumps({"event": "done", "out": str(out)}), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry of the child process; exit status 0 on success, 2 on a user error."""
    from sarcomakit.core.errors import UserInputError

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        fine_tune_on_datastore(args.studies, args.model, args.out, steps=args.steps, learning_rate=args.lr,
                               batch_size=args.batch_size, seed=args.seed, device=args.device)
    except UserInputError as error:
        print(json.dumps({"event": "error", "message": str(error)}), flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
