import pytest
import torch

from minillm import settings


def test_home_dir_follows_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "h"))
    assert settings.home_dir() == tmp_path / "h" and (tmp_path / "h").is_dir()


def test_profile_default_follows_the_hardware(monkeypatch):
    monkeypatch.delenv("MINILLM_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert settings.profile() == "full"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert settings.profile() == "quick"
    monkeypatch.setenv("MINILLM_PROFILE", "FULL")
    assert settings.profile() == "full"
    monkeypatch.setenv("MINILLM_PROFILE", "huge")
    with pytest.raises(ValueError, match="MINILLM_PROFILE must be one of"):
        settings.profile()


def test_pick_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert settings.pick_device() == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert settings.pick_device() == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert settings.pick_device() == "cuda"
    assert settings.pick_device("cuda:1") == "cuda:1"


def test_pick_device_rejects_what_is_missing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="not available"):
        settings.pick_device("cuda")
    with pytest.raises(ValueError, match="Unknown device"):
        settings.pick_device("tpu")
    assert settings.pick_device("cpu") == "cpu"


@pytest.mark.parametrize("value, reuse", [(None, False), ("", False), ("0", False),
                                          ("no", False), ("1", True), (" Yes ", True)])
def test_reuse_is_off_unless_asked_for(monkeypatch, value, reuse):
    if value is None:
        monkeypatch.delenv("MINILLM_REUSE", raising=False)
    else:
        monkeypatch.setenv("MINILLM_REUSE", value)
    assert settings.reuse_artifacts() is reuse


def test_a_reuse_value_that_is_not_a_yes_or_no_is_one_sentence(monkeypatch):
    monkeypatch.setenv("MINILLM_REUSE", "maybe")
    with pytest.raises(ValueError, match=r"^MINILLM_REUSE must be 1 or 0, not 'maybe'\.$"):
        settings.reuse_artifacts()
