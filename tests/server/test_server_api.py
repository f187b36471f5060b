"""Contract tests of the annotation server with FastAPI's TestClient.

MONAI Label's paths and shapes, the datastore, stateless inference on the stored grid, sessions, active
learning and the safety rules (auth, ids, limits, bad files).
"""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402
from server_helpers import dice, scribble_points, study, write_dicom_zip, write_study  # noqa: E402

from sarcomakit.core.io.image import write_image  # noqa: E402
from sarcomakit.server import create_app  # noqa: E402
from sarcomakit.server.app import read_mask  # noqa: E402

ADMIN, ANNOTATOR = "a" * 32, "b" * 32


@pytest.fixture
def studies(tmp_path: Path) -> Path:
    return tmp_path / "studies"


@pytest.fixture
def client(studies: Path) -> TestClient:
    with TestClient(create_app(studies, "random_walker", workers=2)) as test_client:
        yield test_client


def upload(client: TestClient, path: Path, image_id: str, **headers: str) -> object:
    with path.open("rb") as handle:
        return client.put(f"/datastore/?image={image_id}", files={"file": (path.name, handle)},
                          data={"params": "{}"}, headers=headers)


def parse_multipart(response: object) -> tuple[dict, bytes]:
    """The ``params`` JSON and the file part of a multipart answer."""
    raw = b"Content-Type: " + response.headers["content-type"].encode() + b"\r\n\r\n" + response.content
    message = email.message_from_bytes(raw, policy=email.policy.HTTP)
    params, content = {}, b""
    for part in message.iter_parts():
        if part.get_filename():
            content = part.get_payload(decode=True)
        elif part.get_param("name", header="content-disposition") == "params":
            params = json.loads(part.get_payload(decode=True))
    return params, content


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_info_declares_models_labels_strategies(client: TestClient) -> None:
    info = client.get("/info/").json()
    assert info["labels"] == ["tumour"]
    assert info["models"]["sarcomakit"]["type"] == "deepedit"
    assert info["models"]["sarcomakit_scribbles"]["type"] == "scribbles"
    assert all(m["dimension"] == 3 and m["labels"] == {"tumour": 1} for m in info["models"].values())
    assert {"random", "first"} <= set(info["strategies"])
    assert info["trainers"] == {}  # the random walker has nothing to fine-tune


def test_upload_infer_with_points_returns_mask_on_stored_grid(client: TestClient, tmp_path: Path) -> None:
    path, reference = write_study(tmp_path, "case01")
    assert upload(client, path, "case01").json() == {"image": "case01"}
    objects = client.get("/datastore/?output=all").json()["objects"]
    assert objects["case01"]["image"]["ext"] == ".nii.gz" and objects["case01"]["labels"] == {}
    foreground, background = scribble_points(reference)
    response = client.post("/infer/sarcomakit?image=case01",
                           data={"params": json.dumps({"foreground": foreground, "background": background})})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("multipart/form-data")
    params, content = parse_multipart(response)
    assert params["label_names"] == {"tumour": 1} and params["latencies"]["model"] > 0
    mask_path = tmp_path / "mask.nii.gz"
    mask_path.write_bytes(content)
    mask, image = sitk.ReadImage(str(mask_path)), sitk.ReadImage(str(path))
    assert mask.GetSize() == image.GetSize()
    assert np.allclose(mask.GetSpacing(), image.GetSpacing()) and np.allclose(mask.GetOrigin(), image.GetOrigin())
    assert np.allclose(mask.GetDirection(), image.GetDirection())
    assert dice(sitk.GetArrayFromImage(mask) > 0, reference) > 0.8


def test_infer_is_stateless_and_label_map_scribbles_match_points(client: TestClient, tmp_path: Path) -> None:
    path, reference = write_study(tmp_path, "case01")
    upload(client, path, "case01")
    foreground, background = scribble_points(reference)
    body = {"params": json.dumps({"foreground": foreground, "background": background})}
    first = read_mask(client.post("/infer/sarcomakit?image=case01&output=image", data=body).content)
    # another interaction in between (a single foreground click) must not change the answer to the same prompts
    client.post("/infer/sarcomakit?image=case01&output=image",
                data={"params": json.dumps({"foreground": [foreground[0]]})})
    again = read_mask(client.post("/infer/sarcomakit?image=case01&output=image", data=body).content)
    assert np.array_equal(first, again) and first.any()
    # the same strokes as a scribble label map (Slicer's scribbles: foreground 3, background 2)
    scribbles = np.zeros(reference.shape, np.uint8)
    for i, j, k in foreground:
        scribbles[k, j, i] = 3
    for i, j, k in background:
        scribbles[k, j, i] = 2
    label = sitk.GetImageFromArray(scribbles)
    label.CopyInformation(sitk.ReadImage(str(path)))
    label_path = write_image(label, tmp_path / "scribbles.nii.gz")
    with label_path.open("rb") as handle:
        response = client.post("/infer/sarcomakit_scribbles?image=case01&output=image", data={"params": "{}"},
                               files={"label": ("scribbles.nii.gz", handle)})
    assert response.status_code == 200, response.text
    assert np.array_equal(read_mask(response.content), first)


def test_infer_errors_are_4xx_json(client: TestClient, tmp_path: Path) -> None:
    path, _ = write_study(tmp_path, "case01")
    upload(client, path, "case01")
    outside = client.post("/infer/sarcomakit?image=case01", data={"params": json.dumps({"foreground": [[99, 0, 0]]})})
    assert outside.status_code == 400 and "outside the image" in outside.json()["detail"]
    assert client.post("/infer/sarcomakit?image=case01", data={"params": "{}"}).status_code == 400
    assert client.post("/infer/sarcomakit?image=nope", data={"params": "{}"}).status_code == 404
    assert client.post("/infer/unknown?image=case01", data={"params": "{}"}).status_code == 404
    assert client.post("/infer/sarcomakit?image=case01", data={"params": "not json"}).status_code == 400


def test_labels_are_versioned_and_survive_a_restart(studies: Path, tmp_path: Path) -> None:
    path, reference = write_study(tmp_path, "case01")
    image = sitk.ReadImage(str(path))
    masks = []
    with TestClient(create_app(studies, "random_walker")) as client:
        upload(client, path, "case01")
        for shift in (0, 2):
            mask = sitk.GetImageFromArray(np.roll(reference, shift, axis=2).astype(np.uint8))
            mask.CopyInformation(image)
            label_path = write_image(mask, tmp_path / f"label{shift}.nii.gz")
            with label_path.open("rb") as handle:
                saved = client.put("/datastore/label?image=case01&tag=final", data={"params": "{}"},
                                   files={"label": (label_path.name, handle)})
            assert saved.status_code == 200, saved.text
            masks.append(np.roll(reference, shift, axis=2))
        assert saved.json()["version"] == 2
    # a server killed mid-write leaves only temporary files (dot names) beside the complete ones: they are ignored
    (studies / ".case02.k3j2.nii.gz").write_bytes(b"half an image")
    (studies / "labels/final/versions/case01/.0003.x9.nii.gz").write_bytes(b"half a label")
    # a new server on the same folder (a restart) finds the image, the current label and both versions
    with TestClient(create_app(studies, "random_walker")) as client:
        objects = client.get("/datastore/?output=all").json()["objects"]
        assert list(objects) == ["case01"] and objects["case01"]["labels"]["final"]["info"]["version"] == 2
        assert client.head("/datastore/image?image=case01").status_code == 200
        assert objects["case01"]["status"] == "final"
        current = client.get("/datastore/label?label=case01&tag=final")
        assert current.status_code == 200 and np.array_equal(read_mask(current.content), masks[1])
        versions = client.get("/datastore/label/versions?label=case01&tag=final").json()
        assert [v["version"] for v in versions] == [1, 2]
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(studies / "labels/final/versions/case01/0001.nii.gz"))) > 0
    assert np.array_equal(first, masks[0])


def test_label_of_another_grid_is_refused(client: TestClient, tmp_path: Path) -> None:
    path, _ = write_study(tmp_path, "case01")
    upload(client, path, "case01")
    wrong = write_image(sitk.Image(10, 10, 10, sitk.sitkUInt8), tmp_path / "wrong.nii.gz")
    with wrong.open("rb") as handle:
        response = client.put("/datastore/label?image=case01", data={"params": "{}"},
                              files={"label": ("wrong.nii.gz", handle)})
    assert response.status_code == 400 and "shape" in response.json()["detail"]


def test_sessions_give_the_same_answer_as_the_stored_image(client: TestClient, tmp_path: Path) -> None:
    path, reference = write_study(tmp_path, "case01")
    upload(client, path, "case01")
    with path.open("rb") as handle:
        created = client.put("/session/?expiry=60", files={"files": (path.name, handle)})
    assert created.status_code == 200, created.text
    session_id = created.json()["session_id"]
    assert client.get(f"/session/{session_id}").json()["meta"]["size"] == [48, 48, 24]
    foreground, background = scribble_points(reference)
    body = {"params": json.dumps({"foreground": foreground, "background": background})}
    by_session = client.post(f"/infer/sarcomakit?image=case01&session_id={session_id}&output=image", data=body)
    by_image = client.post("/infer/sarcomakit?image=case01&output=image", data=body)
    assert np.array_equal(read_mask(by_session.content), read_mask(by_image.content))
    assert client.delete(f"/session/{session_id}").status_code == 200
    assert client.get(f"/session/{session_id}").status_code == 404


def test_sessions_are_bounded(studies: Path, tmp_path: Path) -> None:
    with TestClient(create_app(studies, "random_walker", max_sessions=2)) as client:
        ids = []
        for i in range(4):
            path, _ = write_study(tmp_path, f"case{i}", seed=i)
            with path.open("rb") as handle:
                ids.append(client.put("/session/", files={"files": (path.name, handle)}).json()["session_id"])
        alive = [client.get(f"/session/{s}").status_code for s in ids]
        assert alive == [404, 404, 200, 200]
        assert client.app.state.engine.session_count() == 2


def test_active_learning_walks_the_unlabelled_images(client: TestClient, tmp_path: Path) -> None:
    for i in range(3):
        path, _ = write_study(tmp_path, f"case{i}", seed=i)
        upload(client, path, f"case{i}")
    first = client.post("/activelearning/first", json={"client_id": "me"}).json()
    assert first["id"] == "case0"
    # the picked image goes last for the next annotator
    assert client.post("/activelearning/first", json={}).json()["id"] == "case1"
    picked = {client.post("/activelearning/random", json={}).json()["id"] for _ in range(10)}
    assert picked <= {"case0", "case1", "case2"}
    assert client.post("/activelearning/unknown", json={}).status_code == 404
    image = sitk.ReadImage(str(tmp_path / "case0.nii.gz"))
    label = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    label.CopyInformation(image)
    label_path = write_image(label, tmp_path / "empty.nii.gz")
    for i in range(3):
        with label_path.open("rb") as handle:
            client.put(f"/datastore/label?image=case{i}", data={"params": "{}"}, files={"label": ("l.nii.gz", handle)})
    assert client.post("/activelearning/random", json={}).json() == {}


def test_delete_image_and_label(client: TestClient, tmp_path: Path) -> None:
    path, _ = write_study(tmp_path, "case01")
    upload(client, path, "case01")
    image = sitk.ReadImage(str(path))
    label = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    label.CopyInformation(image)
    label_path = write_image(label, tmp_path / "l.nii.gz")
    with label_path.open("rb") as handle:
        client.put("/datastore/label?image=case01&tag=final", data={"params": "{}"},
                   files={"label": ("l.nii.gz", handle)})
    assert client.delete("/datastore/label?id=case01&tag=final").status_code == 200
    assert client.get("/datastore/label?label=case01&tag=final").status_code == 404
    assert client.delete("/datastore/?id=case01").status_code == 200
    assert client.get("/datastore/?output=all").json()["objects"] == {}
    assert client.delete("/datastore/?id=case01").status_code == 404


# ---------------------------------------------------------------------- safety
def test_tokens_and_roles(studies: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"# token role name\n{ADMIN} admin boss\n{ANNOTATOR} annotator student\n")
    path, _ = write_study(tmp_path, "case01")
    with TestClient(create_app(studies, "random_walker", token_file=tokens)) as client:
        missing = client.get("/info/")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert client.get("/info/", headers={"Authorization": "Bearer " + "c" * 32}).status_code == 401
        annotator = {"Authorization": f"Bearer {ANNOTATOR}"}
        admin = {"Authorization": f"Bearer {ADMIN}"}
        assert client.get("/info/", headers=annotator).status_code == 200
        assert upload(client, path, "case01", **annotator).status_code == 200
        assert upload(client, path, "case02").status_code == 401
        for method, url in (("delete", "/datastore/?id=case01"), ("post", "/train/"), ("delete", "/train/")):
            refused = client.request(method, url, headers=annotator)
            assert refused.status_code == 403, (url, refused.text)
            assert "admin role" in refused.json()["detail"]
        assert client.delete("/datastore/?id=case01", headers=admin).status_code == 200
        # Slicer's login: user name and token as password
        token = client.post("/auth/token", data={"username": "student", "password": ANNOTATOR})
        assert token.json() == {"access_token": ANNOTATOR, "token_type": "Bearer"}
        assert client.post("/auth/token", data={"username": "boss", "password": ANNOTATOR}).status_code == 401
        assert client.get("/auth/").json()["enabled"] is True


@pytest.mark.parametrize("bad", ["../escape", "..", "/etc/passwd", "a/b", "a\\b", ".hidden", "x/../../y"])
def test_traversal_ids_are_refused(client: TestClient, tmp_path: Path, studies: Path, bad: str) -> None:
    path, _ = write_study(tmp_path, "case01")
    with path.open("rb") as handle:
        response = client.put("/datastore/", params={"image": bad}, files={"file": (path.name, handle)},
                              data={"params": "{}"})
    assert response.status_code == 400, response.text
    assert client.get("/datastore/label", params={"label": bad, "tag": "final"}).status_code == 400
    assert client.get("/datastore/label", params={"label": "case01", "tag": bad}).status_code == 400
    assert client.post("/infer/sarcomakit", params={"image": bad}, data={"params": "{}"}).status_code == 400
    assert client.delete("/datastore/", params={"id": bad}).status_code == 400
    stored = {p.relative_to(tmp_path) for p in tmp_path.rglob("*.nii.gz")}
    assert stored == {Path("case01.nii.gz")}  # nothing written anywhere, in the datastore or beside it


def test_upload_file_names_are_sanitised(client: TestClient, tmp_path: Path) -> None:
    path, _ = write_study(tmp_path, "case01")
    with path.open("rb") as handle:
        response = client.put("/datastore/", files={"file": ("../../evil name.nii.gz", handle)},
                              data={"params": "{}"})
    assert response.status_code == 200 and response.json()["image"] == "evil_name"


def test_oversized_upload_is_refused_with_413(studies: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.nii"
    sitk.WriteImage(sitk.Image(64, 64, 64, sitk.sitkFloat32), str(big))  # 1 MiB of voxels
    with TestClient(create_app(studies, "random_walker", max_upload_mb=0.5)) as client:
        with big.open("rb") as handle:
            response = client.put("/datastore/?image=big", files={"file": ("big.nii", handle)}, data={"params": "{}"})
        assert response.status_code == 413 and "limit" in response.json()["detail"]
        # a body without a declared length is cut off as it arrives
        chunks = (b"x" * 65536 for _ in range(16))
        chunked = client.put("/datastore/?image=big", content=chunks,
                             headers={"content-type": "multipart/form-data; boundary=zzz"})
        assert chunked.status_code == 413
        assert client.get("/datastore/?output=all").json()["objects"] == {}


@pytest.mark.parametrize("kind", ["truncated", "garbage", "not_gzip"])
def test_corrupt_files_are_4xx_and_leave_the_datastore_unchanged(client: TestClient, studies: Path, tmp_path: Path,
                                                                 kind: str) -> None:
    path, reference = write_study(tmp_path, "case01")
    upload(client, path, "case01")
    before = files_under(studies)
    content = path.read_bytes()
    bad = {"truncated": content[: len(content) // 2], "garbage": b"\x00" * 4000,
           "not_gzip": b"this is not an image"}[kind]
    for image_id in ("case01", "case02"):  # replacing an image, adding one
        response = client.put(f"/datastore/?image={image_id}", files={"file": ("x.nii.gz", bad)},
                              data={"params": "{}"})
        assert 400 <= response.status_code < 500 and response.json()["detail"]
    label = client.put("/datastore/label?image=case01", files={"label": ("l.nii.gz", bad)}, data={"params": "{}"})
    assert 400 <= label.status_code < 500
    infer = client.post("/infer/sarcomakit?image=case01", files={"label": ("l.nii.gz", bad)}, data={"params": "{}"})
    assert 400 <= infer.status_code < 500
    assert files_under(studies) == before
    # the server carries on
    foreground, background = scribble_points(reference)
    ok = client.post("/infer/sarcomakit?image=case01&output=json",
                     data={"params": json.dumps({"foreground": foreground, "background": background})})
    assert ok.status_code == 200 and ok.json()["voxels"] > 0


def test_unsupported_type_and_malformed_multipart(client: TestClient) -> None:
    response = client.put("/datastore/?image=x", files={"file": ("notes.txt", b"hello")}, data={"params": "{}"})
    assert response.status_code == 415 and ".nii.gz" in response.json()["detail"]
    malformed = client.put("/datastore/?image=x", content=b"--zzz\r\nbroken",
                           headers={"content-type": "multipart/form-data; boundary=zzz"})
    assert 400 <= malformed.status_code < 500
    assert client.put("/datastore/?image=x", data={"params": "{}"}).status_code == 422  # no file part


def test_training_needs_a_trainable_model(client: TestClient) -> None:
    assert client.get("/train/").status_code == 404
    refused = client.post("/train/sarcomakit", json={})
    assert refused.status_code == 400 and "fine-tune" in refused.json()["detail"]


def test_browser_app_is_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "sarcomakit" in page.text


def test_study_geometry_helper_is_oblique() -> None:
    image, reference = study()
    assert image.GetDirection()[0] == -1 and reference.any()


def test_nrrd_and_zipped_dicom_uploads_keep_their_geometry(client: TestClient, tmp_path: Path,
                                                           studies: Path) -> None:
    image, reference = study()
    nrrd = write_image(image, tmp_path / "scan.nrrd")
    with nrrd.open("rb") as handle:
        assert client.put("/datastore/?image=nrrd", files={"file": ("scan.nrrd", handle)},
                          data={"params": "{}"}).status_code == 200
    assert (studies / "nrrd.nrrd").is_file()
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))  # DICOM frames are right-handed; the study's x flip is not
    dicom = write_dicom_zip(image, tmp_path / "series.zip")
    with dicom.open("rb") as handle:
        answer = client.put("/datastore/?image=dicom", files={"file": ("series.zip", handle)}, data={"params": "{}"})
    assert answer.status_code == 200, answer.text
    stored = sitk.ReadImage(str(studies / "dicom.nii.gz"))
    assert stored.GetSize() == image.GetSize()
    assert np.allclose(stored.GetSpacing(), image.GetSpacing(), atol=1e-3)
    assert np.allclose(stored.GetOrigin(), image.GetOrigin(), atol=1e-3)
    assert np.allclose(stored.GetDirection(), image.GetDirection(), atol=1e-4)
    foreground, background = scribble_points(reference)
    for image_id in ("nrrd", "dicom"):
        response = client.post(f"/infer/sarcomakit?image={image_id}&output=image",
                               data={"params": json.dumps({"foreground": foreground, "background": background})})
        assert response.status_code == 200, response.text
        assert dice(read_mask(response.content), reference) > 0.8
    with (tmp_path / "empty.zip").open("wb") as handle:
        import zipfile

        zipfile.ZipFile(handle, "w").close()
    with (tmp_path / "empty.zip").open("rb") as handle:
        empty = client.put("/datastore/?image=empty", files={"file": ("empty.zip", handle)}, data={"params": "{}"})
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]
