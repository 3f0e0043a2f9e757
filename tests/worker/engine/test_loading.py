import pytest

from shared.formats.spec import ModelRef
from worker.engine.loading import ModelLoadError, builtin_names, load_model, pick_dtype, resolve_model_path


def test_builtin_tiny_random_loads_offline_from_package_data():
    model = load_model("builtin:tiny-random")
    assert "tiny-random" in builtin_names()
    assert model.kind == "sd" and model.vae is not None
    assert model.info.revision and len(model.info.revision) == 16
    assert model.unet.training is False
    assert load_model("builtin:tiny-random") is model  # cached per process


def test_native_side_is_the_unets_sample_size_in_pixels():
    # what `concepts learn` trains at when the model names no default size (SD 1.5: 64 x 8 = 512)
    assert load_model("builtin:tiny-random").native_side == 16 * 2  # 16 latent cells, a 2-block VAE
    assert load_model("builtin:shapes-v2").native_side == 48  # pixel space: no VAE


def test_unknown_builtin_lists_the_builtin_names():
    with pytest.raises(ModelLoadError, match="builtin:tiny-random"):
        load_model("builtin:does-not-exist")


def test_local_folder_loads_through_the_same_path(tmp_path):
    from worker.engine.builtin.make_tiny_random import build_pipeline

    build_pipeline().save_pretrained(tmp_path / "sd", safe_serialization=True)
    model = load_model(str(tmp_path / "sd"))
    assert model.kind == "sd"
    assert model.info.id == str(tmp_path / "sd")


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        resolve_model_path(ModelRef(id=str(tmp_path)))


def test_not_a_path_and_not_a_hub_id_is_refused():
    with pytest.raises(ModelLoadError, match="org/name"):
        resolve_model_path(ModelRef(id="./missing-model-folder"))


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="could not fetch"):
        resolve_model_path(ModelRef(id="nobody-here/no-such-model-dsgen"))


def test_cuda_requested_without_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="model.device"):
        load_model(ModelRef(id="builtin:tiny-random", device="cuda"))


def test_dtype_choice():
    import torch

    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
