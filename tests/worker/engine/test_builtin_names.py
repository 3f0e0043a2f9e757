"""`builtin:` names resolve inside the package only, and the torch-free model metadata
(shared.formats.model_meta) agrees with the loaded UNet about its attention resolutions."""
import pytest

from shared.formats.model_meta import builtin_model_ids, model_meta
from shared.formats.spec import ModelRef, SpecError
from worker.adaptor.io import resolve_adaptor_path
from worker.engine.attention import available_resolutions
from worker.engine.loading import builtin_root, load_model, resolve_model_path

ESCAPES = ["builtin:../../../../tmp", "builtin:../builtin/tiny-random", "builtin:/etc", "builtin:tiny-random/../shapes-v1",
           "builtin:.hidden", "builtin:", "builtin:a/b", "builtin:..", "builtin:~root"]


@pytest.mark.parametrize("ref", ESCAPES)
def test_builtin_model_names_never_leave_the_package(ref):
    with pytest.raises(SpecError) as err:
        resolve_model_path(ModelRef(id=ref))
    assert err.value.field == "model.id"


@pytest.mark.parametrize("ref", ESCAPES + ["builtin:../../../../tmp/x"])
def test_builtin_adaptor_names_never_leave_the_package(ref, tmp_path):
    with pytest.raises(SpecError) as err:
        resolve_adaptor_path(ref)
    assert err.value.field == "labels.adaptor"


def test_plain_builtin_names_still_resolve():
    assert resolve_model_path(ModelRef(id="builtin:tiny-random")) == builtin_root() / "tiny-random"
    assert resolve_adaptor_path("builtin:shapes-v1-adaptor").name == "shapes-v1-adaptor"


@pytest.mark.parametrize("model_id", builtin_model_ids())
@pytest.mark.parametrize("size", [(32, 32), (64, 32), (96, 64)])
def test_metadata_resolutions_match_the_loaded_unet(model_id, size):
    width, height = size
    model = load_model(model_id)
    meta = model_meta(model_id)
    assert meta.vae_scale == model.vae_scale
    latent = (height // model.vae_scale, width // model.vae_scale)
    engine = {k: list(v) for k, v in available_resolutions(model.unet, latent).items()}
    assert meta.attention_resolutions(width, height) == engine
