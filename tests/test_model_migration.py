"""A registry written before models had owners keeps working once the API starts on it."""

from __future__ import annotations

import json
from pathlib import Path

from api.app import create_app
from imgq.settings import Settings
from ml.registry import ModelRegistry, ModelVersion, publish_version, staging_dir
from tests.support.http import credentials


def _legacy_store(store: Path) -> None:
    """What the code before owners wrote: bare ``imagenet`` and ``pets`` (two versions)."""
    registry = ModelRegistry(store)
    registry.ensure_builtin("efficientnet_lite0", 0.0)
    for payload in (b"one", b"two"):
        staged = staging_dir(registry, "pets")
        (staged / "model.keras").write_bytes(payload)
        (staged / "evaluation.json").write_text(json.dumps({"accuracy": 0.9}))
        publish_version(
            registry,
            "pets",
            staged,
            lambda n: ModelVersion("pets", n, "trained", "efficientnet_lite0", 64, ["a", "b"], 0.0),
        )
    registry.activate("pets", 1)


def test_the_api_migrates_old_models_to_the_legacy_owner_and_serves_them(
    settings: Settings, tmp_path: Path
) -> None:
    _legacy_store(tmp_path / "models")
    app = create_app(
        settings.model_copy(
            update={"model_store": tmp_path / "models", "legacy_model_owner": "admin"}
        )
    )
    with app.test_client() as client:
        admin = {"Authorization": f"Bearer {credentials.keys['admin']}"}
        pets = client.get("/models/pets", headers=admin).get_json()
        assert (pets["owner"], pets["active_version"]) == ("admin", 1)
        assert [v["version"] for v in pets["versions"]] == [1, 2]
        alice = {"Authorization": f"Bearer {credentials.keys['alice']}"}
        assert client.get("/models/pets", headers=alice).status_code == 404
        imagenet = client.get("/models/imagenet", headers=alice).get_json()
        assert (imagenet["owner"], imagenet["shared"]) == ("system", True)
        listed = {(m["owner"], m["name"]) for m in client.get("/models", headers=alice).get_json()}
        assert listed == {("system", "imagenet")}
