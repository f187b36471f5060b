"""MONAI Label's own Python client drives a live server: the whole annotation loop, unmodified client code.

``monailabel`` is installed without its dependencies (the Makefile's dev set-up); only ``monailabel.client``
is imported, which needs ``requests``. The test skips where it is missing.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("requests")
pytest.importorskip("uvicorn")
client_module = pytest.importorskip("monailabel.client")

from server_helpers import dice, running_server, scribble_points, write_study  # noqa: E402

from sarcomakit.core.io.image import write_image  # noqa: E402
from sarcomakit.server import create_app  # noqa: E402


@pytest.mark.timeout(300)
def test_monailabel_client_runs_the_annotation_loop(tmp_path: Path) -> None:
    studies, work = tmp_path / "studies", tmp_path / "client"
    work.mkdir()
    paths = {f"case{i}": write_study(tmp_path, f"case{i}", seed=i) for i in range(2)}
    app = create_app(studies, "default", workers=2)
    with running_server(app) as url:
        client = client_module.MONAILabelClient(url, tmpdir=str(work))
        info = client.info()
        assert info["models"]["sarcomakit"]["type"] == "deepedit" and "sarcomakit" in info["trainers"]
        for image_id, (path, _) in paths.items():
            assert client.upload_image(str(path), image_id)["image"] == image_id
        assert set(client.datastore()["objects"]) == set(paths)

        # next sample, then points as Slicer sends them (ITK indices of the stored image)
        sample = client.next_sample("first", {})
        image_id = sample["id"]
        path, reference = paths[image_id]
        foreground, background = scribble_points(reference)
        mask_file, params = client.infer("sarcomakit", image_id, {"foreground": foreground, "background": background})
        assert params["model"] == "sarcomakit" and params["latencies"]["model"] > 0
        mask = sitk.ReadImage(mask_file)
        image = sitk.ReadImage(str(path))
        assert mask.GetSize() == image.GetSize() and np.allclose(mask.GetOrigin(), image.GetOrigin())
        assert np.allclose(mask.GetDirection(), image.GetDirection())
        points_mask = sitk.GetArrayFromImage(mask) > 0
        assert dice(points_mask, reference) > 0.7

        # the previous mask as a label file, with one more foreground point: the answer is a mask again
        label_in = write_image(mask, work / "previous.nii.gz")
        refined_file, _ = client.infer("sarcomakit", image_id, {"foreground": foreground[:1]}, label_in=str(label_in))
        refined = sitk.GetArrayFromImage(sitk.ReadImage(refined_file)) > 0
        assert dice(refined, reference) > 0.7

        # a session holds the image: same answer for the same prompts
        session = client.create_session(str(path))
        session_file, _ = client.infer("sarcomakit", image_id, {"foreground": foreground, "background": background},
                                       session_id=session["session_id"])
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(session_file)) > 0, points_mask)
        client.remove_session(session["session_id"])

        # save as final; the label comes back; the next sample is the other image
        assert client.save_label(image_id, str(label_in), tag="final")["image"] == image_id
        downloaded = client.download_label(image_id, "final")
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(downloaded)) > 0, points_mask)
        assert client.next_sample("random", {})["id"] != image_id

        # fine-tune on the saved label in a background process; the server swaps the weights in when done
        started = client.train_start("sarcomakit", {"max_steps": 1})
        assert started["status"] == "RUNNING"
        deadline = time.monotonic() + 180
        status = client.train_status()
        while status["status"] == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.5)
            status = client.train_status()
        assert status["status"] == "DONE", status
        assert app.state.trainer.wait(30)
        assert client.info()["models"]["sarcomakit"]["model"]["version"] == 2
        again, _ = client.infer("sarcomakit", image_id, {"foreground": foreground, "background": background})
        assert sitk.ReadImage(again).GetSize() == image.GetSize()
